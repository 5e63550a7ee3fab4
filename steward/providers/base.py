"""The one interface every wire format implements, and the meters that read usage from responses.

A wire format knows its paths, its credential headers, its error shape and where its responses
carry usage. Adding a provider format is one new module in this package defining `FORMAT`.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import parse_qsl, urlencode

from steward.providers.encoding import decompressor, inflate
from steward.providers.streams import MAX_SSE_LINE, SSEParser
from steward.providers.usage import Reading, dig

if TYPE_CHECKING:
    from steward.config import ProviderConfig

# Non-streamed bodies larger than this are relayed but not parsed for usage; nor is a
# compressed body past this size decompressed.
MAX_METERED_BODY = 64 * 1024 * 1024


def unreadable(why: str) -> str:
    """The record's error when usage could not be read: not "the provider reported none"."""
    return f"usage_unreadable: {why}"


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


class UpstreamAuth(Protocol):
    """How a format that signs or mints its credentials (SigV4, OAuth tokens) authenticates
    upstream: one per provider and credential scope, built when credentials are loaded."""

    def apply(self, method: str, url: str, headers: list[tuple[str, str]],
              body: bytes | bytearray) -> list[tuple[str, str]]:
        """The headers to send upstream for this exact request. CPU only, no I/O (runs on the
        event loop). Raises GatewayError (502/503, message naming the provider and what to do)
        when no usable credential is at hand, e.g. no token minted yet."""
        ...

    async def refresh(self) -> None:
        """Background only: mint or renew what `apply` needs (tokens) before it expires;
        blocking work (google-auth's refresh) goes to a thread. No-op for static keys."""
        ...


def rewrite_query(query: bytes, names: Collection[str], replacement: str | None
                  ) -> tuple[list[str], bytes]:
    """The values of the named query parameters (credentials, such as Gemini's `key`), and the
    query with each replaced by `replacement` or, for None, removed. A query without any of
    them comes back byte for byte. Names are matched as the upstream decodes them, so a
    percent-escaped `k%65y=` is the same parameter as `key=`."""
    if b"%" not in query and not any(f"{name}=".encode() in query for name in names):
        return [], query
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    found = [v for k, v in pairs if k in names]
    if not found:
        return [], query
    kept = [(k, replacement if k in names else v) for k, v in pairs
            if replacement is not None or k not in names]
    return found, urlencode(kept).encode()


def loads(data: bytes) -> Any:
    """JSON from an upstream, or None for anything else (nested too deep included)."""
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


class WireFormat:
    """Everything Steward knows of one wire format; nothing outside the format's module names
    a format. A subclass sets the class attributes and implements the methods that raise."""

    name: ClassVar[str]
    # Request headers (lower-case) that carry the caller's provider credential; the first is
    # the one a stored key is injected in.
    credential_headers: ClassVar[tuple[bytes, ...]]
    # A query parameter that may carry the credential instead (Gemini's `?key=`), or None.
    credential_param: ClassVar[str | None] = None
    # Where the built-in provider of this name sends requests (overridable in steward.toml).
    default_base_url: ClassVar[str]
    # The paths it answers, for the message a caller gets for an unknown path.
    paths_help: ClassVar[str]
    # Path detection tries formats in ascending rank: a format whose paths are a subset of
    # another's shapes (Gemini's /v1/models/{m}:{method} within OpenAI's /v1/models/{id})
    # ranks lower so it is asked first.
    detection_rank: ClassVar[int] = 100
    # The format assumed when nothing says which one: the error shape for an unknown path or a
    # refused key, and the format of a configured upstream that names none. One format, the
    # most widely spoken, sets this.
    is_default: ClassVar[bool] = False
    # The `litellm_provider` values in LiteLLM's price table whose models this format serves.
    price_providers: ClassVar[tuple[str, ...]] = ()
    # The prefix of its names in that table (`vertex_ai/claude-…`) when not the format's name.
    price_prefix: ClassVar[str | None] = None
    # Formats that authenticate with `upstream_auth` (signing, minted tokens) name the caller's
    # own signing headers here (lower-case), meant for Steward's host: they are dropped, and
    # the caller's credentials never go upstream (allow_caller_credentials does not apply).
    # Empty: the format sends a stored key in its credential header.
    caller_auth_headers: ClassVar[frozenset[bytes]] = frozenset()
    # What `steward providers set` asks at a terminal for such a credential: (label, hidden,
    # optional) per line, joined with newlines for `credential_from_text`.
    credential_prompts: ClassVar[tuple[tuple[str, bool, bool], ...]] = ()

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

    def upstream_base_url(self, provider: ProviderConfig) -> str:
        """Where a configured provider's requests go (Bedrock fills its region in)."""
        return provider.base_url

    def accepts_encoded_slash(self, raw_path: bytes) -> bool:
        """Whether `%2F` in this raw path is the format's own (an ARN inside Bedrock's one
        model segment); anywhere else it could route differently upstream and is refused."""
        return False

    def credential_from_text(self, text: str) -> tuple[str, str]:
        """For a format with `upstream_auth`: the operator's credential as given to `steward
        providers set` (stdin, prompts, a file) -> (the string to seal, what `providers list`
        may show of it). Raises ValueError saying what is wrong, never echoing the secret."""
        raise ValueError(f"{self.name} takes a single API key")

    def check_credentials(self, provider: ProviderConfig, stored: str | None) -> str:
        """For `steward doctor`, a format with `upstream_auth`: prove the credential works with
        one cheap signed call to the provider (blocking; not on the request path). Returns what
        was proved; raises StewardError saying what is wrong."""
        raise NotImplementedError

    def doctor(self, name: str, provider: ProviderConfig, stored: str | None) -> str | None:
        """`steward doctor`'s check of a provider with a stored key (no `upstream_auth`) and
        its provider-wide key (blocking, may call the provider): what worked, or None for the
        generic check that its host answers. Raises StewardError saying what failed."""
        return None

    def upstream_base(self, base_url: str, route: Route, query: bytes) -> str:
        """The base URL this request goes to: the configured one. A format whose host depends
        on the request (Vertex's location) picks it here; one whose upstream would answer a
        request unhelpfully (Azure without api-version) refuses it here with GatewayError."""
        return base_url

    def upstream_auth(self, provider: ProviderConfig, stored: str | None) -> UpstreamAuth | None:
        """For a format with `caller_auth_headers`: the authenticator for one stored credential
        (the sealed string `steward providers set` stored), or for the provider's default
        chain when `stored` is None (`providers.NAME.credentials = "default"`). Raises
        ValueError with a message for the operator when `stored` is unusable."""
        return None

    def error_body(self, status: int, message: str) -> bytes:
        """A JSON error in this provider's own shape, so the caller's SDK raises its usual
        exception with Steward's message."""
        raise NotImplementedError

    def error_headers(self, status: int) -> dict[str, str]:
        """Headers that go with `error_body` (Bedrock names the error type in one)."""
        return {}

    def price_models(self, response_model: str | None, model: str | None) -> Iterator[str]:
        """The model names to price a record by, best first: by default the one the provider
        says answered, then the one requested."""
        yield from (m for m in (response_model, model) if m)

    def is_stream(self, route: Route, content_type: str) -> bool:
        """Whether a response is a stream (recorded as `stream`, timed to the first chunk)."""
        return content_type.startswith("text/event-stream")

    def read_json(self, obj: Any, reading: Reading) -> None:
        """Fill usage and model from a complete, successful JSON response."""
        raise NotImplementedError

    def stream_reader(self, route: Route) -> StreamReader:
        raise NotImplementedError

    def meter(self, route: Route, status: int, content_type: str,
              max_line: int = MAX_SSE_LINE) -> Meter:
        if 200 <= status < 300 and content_type.startswith("text/event-stream"):
            return SSEMeter(self.stream_reader(route), max_line)
        return JsonMeter(self, status, content_type)


def error_message(obj: Any) -> str | None:
    """The message in any of the three providers' error shapes."""
    message = dig(obj, "error", "message")
    if isinstance(message, str):
        return message
    if isinstance(dig(obj, "message"), str):  # AWS's shape
        return obj["message"]
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

    __slots__ = ("_chunks", "_fmt", "_json", "_size", "_status")

    def __init__(self, fmt: WireFormat, status: int, content_type: str = ""):
        self._fmt, self._status = fmt, status
        # A body that does not say it is JSON (audio, a file, JSON Lines) has no usage to miss.
        media = content_type.split(";")[0].strip().lower()
        self._json = not media or media == "application/json" or media.endswith("+json")
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
            elif self._size > MAX_METERED_BODY:
                reading.error = unreadable(f"body over {MAX_METERED_BODY >> 20} MiB "
                                           "(the metered size)")
            elif obj is None and self._size and self._json:
                reading.error = unreadable("the response body does not parse as JSON")
        else:
            reading.error = describe_error(self._status, obj)
        return reading


class SSEMeter:
    __slots__ = ("_events", "_max_line", "_not_json", "_parser", "_reader", "_reading")

    def __init__(self, reader: StreamReader, max_line: int = MAX_SSE_LINE):
        self._parser = SSEParser(max_line)
        self._max_line = max_line
        self._reader = reader
        self._reading = Reading()
        self._events = self._not_json = 0

    def feed(self, chunk: bytes) -> None:
        for event, data in self._parser.feed(chunk):
            self._events += 1
            if data[:1] not in (b"{", b"[") and data != b"[DONE]":  # a glance, not a parse
                self._not_json += 1
            self._reader.on_event(event, data, self._reading)

    def finish(self) -> Reading:
        reading = self._reading
        self._reader.finish(reading)
        usage = reading.usage
        if reading.error is None and self._parser.skipped:
            why = (f"a stream line over {self._max_line} bytes was skipped for accounting "
                   "(limits.max_sse_line_bytes)")
            read = usage.input_tokens is not None or usage.output_tokens is not None
            reading.error = why if read else unreadable(why)
        elif (reading.error is None and self._not_json and usage.input_tokens is None
              and usage.output_tokens is None):
            reading.error = unreadable(f"{self._not_json} of {self._events} stream events "
                                       "are not JSON")
        return reading


class DecodingMeter:
    """Reads a gzip- or deflate-encoded body for accounting; the caller still gets the raw bytes.

    Decompressed a piece at a time and at most MAX_METERED_BODY in all, so a small bomb cannot
    make Steward hold (or parse) what it inflates to."""

    __slots__ = ("_decoder", "_encoding", "_inner", "_size", "_why")

    def __init__(self, inner: Meter, encoding: str):
        self._inner = inner
        self._encoding = encoding
        self._decoder: Any = decompressor(encoding)
        self._size = 0
        self._why: str | None = None  # why metering stopped

    def feed(self, chunk: bytes) -> None:
        decoder = self._decoder
        if decoder is None:
            return
        try:
            for data in inflate(decoder, chunk):
                self._size += len(data)
                if self._size > MAX_METERED_BODY:
                    self._stop(f"decompressed size over {MAX_METERED_BODY >> 20} MiB "
                               "(the metered size)")
                    return
                if data:
                    self._inner.feed(data)
        except zlib.error:
            # undecodable: usage stays unknown, the caller is unaffected
            self._stop(f"the body could not be decompressed (invalid {self._encoding})")

    def _stop(self, why: str) -> None:
        self._decoder, self._why = None, why
        if isinstance(self._inner, JsonMeter):
            self._inner = JsonMeter(self._inner._fmt, self._inner._status)  # drop what it held

    def finish(self) -> Reading:
        reading = self._inner.finish()
        if self._why is not None and reading.error is None:
            reading.error = unreadable(self._why)
        return reading
