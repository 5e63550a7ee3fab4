"""The body document: one request and its response as a gzipped JSON object, credentials
redacted. Pure: it is built from a Capture (bodies/writer.py holds it and does the I/O) and read
back from its bytes; nothing here touches the disk or the bucket.
"""

from __future__ import annotations

import base64
import codecs
import itertools
import json
import zlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from steward.errors import StewardError
from steward.providers import CREDENTIAL_HEADERS, CREDENTIAL_PARAMS
from steward.providers.base import rewrite_query
from steward.providers.encoding import decompressor, inflate

if TYPE_CHECKING:
    from steward.bodies.writer import Capture

SCHEMA_VERSION = 1
REDACTED = "[REDACTED]"
# What a body document repeats from the metadata record.
BODY_META = ("id", "ts", "api_key_id", "provider", "endpoint", "model", "response_model",
             "method", "path", "stream", "status")
# Headers never stored: every format's credential headers (CREDENTIAL_HEADERS, kept up to date
# as formats register), the gateway key, and the usual secrets of any HTTP exchange.
SECRET_HEADERS = {"proxy-authorization", "cookie", "set-cookie", "x-majordomo-key"}
# A compressed response is stored decompressed up to this size (what a Capture holds in memory,
# writer.SPILL_AT), else as it came: a bomb's build (which may run beside a large one) never
# inflates more.
MAX_DECODED_BODY = 8 * 1024 * 1024


def redact_headers(headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
    out = []
    for name, value in headers:
        text = name.decode("latin-1").lower()
        secret = text in SECRET_HEADERS or name.lower() in CREDENTIAL_HEADERS
        out.append([text, REDACTED if secret else value.decode("latin-1")])
    return out


def redact_query(query: bytes) -> str:
    """The query with every format's credential parameter (Gemini's `key`) redacted."""
    return rewrite_query(query, CREDENTIAL_PARAMS, REDACTED)[1].decode("latin-1")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: Python reads them, others don't


def encode_body(data: bytes | bytearray, content_type: str, streamed: bool
                ) -> tuple[bytes | bytearray, str]:
    """The body as JSON text for the document, and how it is encoded there.

    A JSON body goes in as the very bytes that passed (checked once, never re-serialised); a
    stream as the exact text the caller got; other text as a string; anything else base64."""
    if not data:
        return b"null", "empty"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return json.dumps(base64.b64encode(data).decode()).encode(), "base64"
    if "json" in content_type and not streamed:
        try:
            json.loads(text, parse_constant=_reject_constant)
            return data, "json"
        except (ValueError, RecursionError):  # too deep for Python is kept as text
            pass
    return json.dumps(text, ensure_ascii=False).encode(), "sse" if streamed else "text"


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), "")


def _decoded(data: bytes, encoding: str) -> bytes | bytearray | None:
    """The readable body: a gzip/deflate response decompressed, a piece at a time and only up
    to MAX_DECODED_BODY (a bomb is never inflated whole); None if it cannot be."""
    if encoding not in ("gzip", "deflate"):
        return data
    out = bytearray()
    try:
        for piece in inflate(decompressor(encoding), data):
            out += piece
            if len(out) > MAX_DECODED_BODY:
                return None
    except zlib.error:
        return None
    return out


def _with_body(fields: dict[str, Any], data: bytes | bytearray | None, content_type: str,
               streamed: bool, raw: bytes = b"") -> list[bytes | bytearray]:
    """fields as a JSON object with "body" and "body_encoding" added, as pieces to write.
    data None: the raw bytes could not be decoded, and are stored as they came, in base64."""
    if data is None:
        body, encoding = json.dumps(base64.b64encode(raw).decode()).encode(), "base64"
    else:
        body, encoding = encode_body(data, content_type, streamed)
    head = json.dumps({**fields, "body_encoding": encoding}, ensure_ascii=False).encode()
    return [head[:-1], b', "body": ', body, b"}"]


def _spilled_body(capture: Capture, encoding: str, streamed: bool
                  ) -> tuple[str, Iterator[bytes]]:
    """A spilled response's body_encoding and its JSON text, a piece at a time from the file:
    as it came in base64 if compressed or not UTF-8, else as escaped text (a large JSON body
    too, which is not parsed whole to check it)."""
    kind = "base64"
    if encoding not in ("gzip", "deflate"):
        check = codecs.getincrementaldecoder("utf-8")()
        try:
            for piece in capture.response_pieces():
                check.decode(piece)
            check.decode(b"", final=True)
            kind = "sse" if streamed else "text"
        except UnicodeDecodeError:
            pass

    def text() -> Iterator[bytes]:
        yield b'"'
        if kind == "base64":
            rest = b""
            for piece in capture.response_pieces():
                data = rest + piece
                cut = len(data) - len(data) % 3
                yield base64.b64encode(data[:cut])
                rest = data[cut:]
            yield base64.b64encode(rest)
        else:
            decoder = codecs.getincrementaldecoder("utf-8")()
            for piece in capture.response_pieces():
                yield json.dumps(decoder.decode(piece), ensure_ascii=False)[1:-1].encode()
        yield b'"'
    return kind, text()


def build_document(capture: Capture) -> bytes:
    """The gzipped JSON object (CPU-heavy for big bodies: runs in a worker thread).

    Written piece by piece into the compressor, so a large body is never copied into one big
    document string first; a spilled one is read back from its file a piece at a time."""
    response_type = _header(capture.response_headers, b"content-type")
    encoding = _header(capture.response_headers, b"content-encoding").strip().lower()
    streamed = (response_type.startswith("text/event-stream")
                or capture.meta.get("stream", False))
    meta = json.dumps({"schema": SCHEMA_VERSION, **capture.meta}, ensure_ascii=False).encode()
    request = _with_body(
        {"method": capture.meta.get("method"), "path": capture.meta.get("path"),
         "query": redact_query(capture.query),
         "headers": redact_headers(capture.request_headers)},
        capture.request_body, _header(capture.request_headers, b"content-type"), False)
    fields = {"status": capture.response_status,
              "headers": redact_headers(capture.response_headers)}
    response: Iterable[bytes | bytearray]
    if capture.spill is None:
        response_body = b"".join(capture.response_chunks)
        response = _with_body(fields, _decoded(response_body, encoding), response_type,
                              streamed, raw=response_body)
    else:
        kind, body = _spilled_body(capture, encoding, streamed)
        head = json.dumps({**fields, "body_encoding": kind}, ensure_ascii=False).encode()
        response = itertools.chain((head[:-1], b', "body": '), body, (b"}",))
    gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: a gzip container
    pieces = [gz.compress(piece) for piece in itertools.chain(
        (meta[:-1], b', "request": '), request, (b', "response": ',), response, (b"}",))]
    pieces.append(gz.flush())
    return b"".join(pieces)


def open_document(data: bytes, request_id: str) -> bytes:
    """A stored document's JSON text (it is kept gzipped)."""
    try:
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    except zlib.error as exc:
        raise StewardError(f"the stored body of {request_id} is not gzip: {exc}") from None
