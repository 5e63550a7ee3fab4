"""The one interface every wire format implements, and the meters that read usage from responses.

A wire format knows its paths, its credential headers, its error shape and where its responses
carry usage. Adding a provider format is one new module in this package defining `FORMAT`.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from ..streams import SSEParser
from ..usage import Reading, dig

# Non-streamed bodies larger than this are relayed but not parsed for usage.
MAX_METERED_BODY = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: the endpoint's name and the path appended to the base URL."""

    endpoint: str  # from the format's fixed set of labels (metrics cardinality stays bounded)
    upstream_path: str
    model: str | None = None  # when the path names it (Gemini)
    scope: str | None = None  # what a gateway key needs beyond inference; None: inference


# Labels and scopes for what is not inference (see gateway_keys.SCOPES). `admin` is everything
# else on the provider's host, so its label is `other`: the path stays in the record only.
OTHER = "other"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An inference endpoint: the methods it answers, its whole path, its metric label."""

    methods: frozenset[str]
    path: re.Pattern[str]
    label: str


def endpoints(*rows: tuple[str, str, str]) -> tuple[Endpoint, ...]:
    """("GET DELETE", path regex, label) rows, most frequent first: the first match wins."""
    return tuple(Endpoint(frozenset(m.split()), re.compile(p), label) for m, p, label in rows)


def find_endpoint(table: tuple[Endpoint, ...], method: str, path: str) -> Endpoint | None:
    for endpoint in table:
        if method in endpoint.methods and endpoint.path.fullmatch(path):
            return endpoint
    return None


def scoped(scope: str, upstream_path: str) -> Route:
    """A route outside inference, labelled by its scope (admin: `other`)."""
    return Route(endpoint=OTHER if scope == "admin" else scope, upstream_path=upstream_path,
                 scope=scope)


class Meter(Protocol):
    """Fed the decoded response body chunk by chunk; tells what it saw at the end."""

    def feed(self, chunk: bytes) -> None: ...
    def finish(self) -> Reading: ...


class StreamReader(Protocol):
    """Per-format reading of SSE events; decodes only the events that carry usage."""

    def on_event(self, event: bytes, data: bytes, reading: Reading) -> None: ...
    def finish(self, reading: Reading) -> None: ...


def loads(data: bytes) -> Any:
    """JSON from an upstream, or None for anything else (nested too deep included)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


class WireFormat:
    name: ClassVar[str]
    # Request headers (lower-case) that carry the caller's provider credential.
    credential_headers: ClassVar[tuple[bytes, ...]]

    def route(self, method: str, path: str) -> Route | None:
        """The route for a path this format claims when no provider is named, else None."""
        return self.classify(method, path) if self.owns(path) else None

    def owns(self, path: str) -> bool:
        """Whether the path is this format's (path detection, before any provider header)."""
        raise NotImplementedError

    def classify(self, method: str, path: str) -> Route:
        """Any request on this format's host: an inference endpoint (scope None, its own
        label), else the scope a key needs for it (files, batches, fine_tuning, admin)."""
        raise NotImplementedError

    def credential_header(self, api_key: str) -> tuple[str, str]:
        """The header that carries a stored provider key injected by Steward."""
        raise NotImplementedError

    def error_body(self, status: int, message: str) -> bytes:
        raise NotImplementedError

    def read_json(self, obj: Any, reading: Reading) -> None:
        """Fill usage and model from a complete, successful JSON response."""
        raise NotImplementedError

    def stream_reader(self, route: Route) -> StreamReader:
        raise NotImplementedError

    def meter(self, route: Route, status: int, content_type: str) -> Meter:
        if 200 <= status < 300 and content_type.startswith("text/event-stream"):
            return SSEMeter(self.stream_reader(route))
        return JsonMeter(self, status)


def error_message(obj: Any) -> str | None:
    """The message in any of the three providers' error shapes."""
    message = dig(obj, "error", "message")
    if isinstance(message, str):
        return message
    if isinstance(dig(obj, "error"), str):
        return obj["error"]
    return None


def stream_error(message: Any) -> str:
    """The record's error for an error event inside a stream that began with 2xx."""
    return f"stream error: {message}" if isinstance(message, str) else "stream error"


def describe_error(status: int, obj: Any) -> str:
    message = error_message(obj)
    text = f"upstream returned {status}"
    return f"{text}: {message[:300]}" if message else text


class JsonMeter:
    """A whole (non-streamed) body, parsed once at the end."""

    __slots__ = ("_chunks", "_fmt", "_size", "_status")

    def __init__(self, fmt: WireFormat, status: int):
        self._fmt, self._status = fmt, status
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= MAX_METERED_BODY:
            self._chunks.append(chunk)
        else:
            self._chunks.clear()

    def finish(self) -> Reading:
        reading = Reading()
        obj = loads(b"".join(self._chunks)) if self._chunks else None
        if 200 <= self._status < 300:
            if isinstance(obj, dict):
                self._fmt.read_json(obj, reading)
        else:
            reading.error = describe_error(self._status, obj)
        return reading


class SSEMeter:
    __slots__ = ("_parser", "_reader", "_reading")

    def __init__(self, reader: StreamReader):
        self._parser = SSEParser()
        self._reader = reader
        self._reading = Reading()

    def feed(self, chunk: bytes) -> None:
        for event, data in self._parser.feed(chunk):
            self._reader.on_event(event, data, self._reading)

    def finish(self) -> Reading:
        self._reader.finish(self._reading)
        return self._reading


class DecodingMeter:
    """Reads a gzip- or deflate-encoded body for accounting; the caller still gets the raw bytes."""

    __slots__ = ("_decoder", "_inner")

    def __init__(self, inner: Meter, encoding: str):
        self._inner = inner
        # 32+15: gzip or zlib header auto-detected; raw deflate needs -15.
        self._decoder: Any = zlib.decompressobj(32 + 15 if encoding == "gzip" else 15)

    def feed(self, chunk: bytes) -> None:
        if self._decoder is None:
            return
        try:
            self._inner.feed(self._decoder.decompress(chunk))
        except zlib.error:
            self._decoder = None  # undecodable: usage stays unknown, the caller is unaffected

    def finish(self) -> Reading:
        reading = self._inner.finish()
        if self._decoder is None and reading.error is None:
            reading.error = "response body could not be decompressed for accounting"
        return reading
