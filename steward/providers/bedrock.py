"""AWS Bedrock runtime: InvokeModel, Converse and their streams, re-signed with SigV4.

The caller's SDK signs for Steward's host; that signature is dropped and the request signed
again for `https://bedrock-runtime.{region}.amazonaws.com` with stored credentials (or
botocore's default chain), over the exact path bytes and body sent. Streams use AWS's binary
event-stream framing, relayed untouched and read for usage by an incremental parser.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import re
import struct
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from steward.errors import GatewayError, StewardError
from steward.providers import anthropic
from steward.providers.base import (
    JsonMeter,
    Meter,
    Route,
    StreamReader,
    WireFormat,
    loads,
    scoped,
    stream_error,
    unreadable,
)
from steward.providers.usage import Reading, Usage, as_int, dig

if TYPE_CHECKING:
    from steward.config import ProviderConfig

EVENT_STREAM = "application/vnd.amazon.eventstream"
DEFAULT_REGION = "us-east-1"
SERVICE = "bedrock"

_OPS = ("invoke", "invoke-with-response-stream", "converse", "converse-stream", "count-tokens")
# The model id is one path segment upstream (boto3 escapes `/` and `:` in it); ASGI hands the
# path over decoded once, so an ARN's escaped `/` is a `/` here and the operation is the last
# segment.
_INFERENCE = re.compile(r"/model/(?P<model>[^?#]+)/(?P<op>" + "|".join(_OPS) + ")")
_RAW_INFERENCE = re.compile(rb"/model/[^/]+/(?:" + b"|".join(o.encode() for o in _OPS) + rb")")
_STREAMS = ("invoke-with-response-stream", "converse-stream")
# Cross-region inference profiles put a geography before the base model id.
_PROFILE = re.compile(r"^(?:us|eu|apac|jp|au|ca|us-gov|global)\.(.+)$")

# Status -> the error type Bedrock names in x-amzn-ErrorType, so botocore raises its modelled
# exception (ValidationException, ThrottlingException…) carrying Steward's message.
_ERROR_TYPES = {400: "ValidationException", 401: "AccessDeniedException",
                403: "AccessDeniedException", 404: "ResourceNotFoundException",
                408: "ModelTimeoutException", 413: "ValidationException",
                414: "ValidationException", 429: "ThrottlingException",
                431: "ValidationException", 503: "ServiceUnavailableException"}

# Headers SigV4 covers: AWS's own and the body's type; everything else goes along unsigned.
_SIGNED = frozenset({"content-type", "accept"})


# -- the binary event stream -----------------------------------------------------------------

MAX_HEADERS = 128 * 1024  # botocore's limits for one message
MAX_PAYLOAD = 16 * 1024 * 1024
_PRELUDE = struct.Struct(">III")
# Fixed sizes of header values by type (0/1 booleans carry none; 6 and 7 have a u16 length).
_VALUE_SIZES = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


class EventStreamError(ValueError):
    pass


def parse_headers(data: bytes | memoryview) -> dict[str, Any]:
    """An event-stream message's headers; strings decoded, other values kept as bytes."""
    headers: dict[str, Any] = {}
    at, end = 0, len(data)
    while at < end:
        size = data[at]
        name = bytes(data[at + 1:at + 1 + size]).decode("utf-8", "replace")
        at += 1 + size
        if at >= end:
            raise EventStreamError("a header is cut short")
        kind = data[at]
        at += 1
        if kind in (6, 7):
            (length,) = struct.unpack_from(">H", data, at)
            value: Any = bytes(data[at + 2:at + 2 + length])
            at += 2 + length
            if kind == 7:
                value = value.decode("utf-8", "replace")
        elif kind in _VALUE_SIZES:
            value = bytes(data[at:at + _VALUE_SIZES[kind]])
            at += _VALUE_SIZES[kind]
            if kind in (0, 1):
                value = kind == 0
        else:
            raise EventStreamError(f"unknown header value type {kind}")
        if at > end:
            raise EventStreamError("a header is cut short")
        headers[name] = value
    return headers


class EventStreamParser:
    """Whole messages out of `application/vnd.amazon.eventstream` bytes fed in any pieces:
    `[total u32][headers u32][prelude crc32][headers][payload][message crc32]`, big-endian,
    both checksums verified. Raises EventStreamError on a corrupt frame."""

    __slots__ = ("_buf", "_start")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._start = 0

    @property
    def pending(self) -> int:
        """Bytes of a message begun but not complete (a stream cut mid-message)."""
        return len(self._buf) - self._start

    def feed(self, chunk: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
        buf = self._buf
        buf += chunk
        while len(buf) - self._start >= 12:
            start = self._start
            total, headers_len, prelude_crc = _PRELUDE.unpack_from(buf, start)
            if zlib.crc32(memoryview(buf)[start:start + 8]) != prelude_crc:
                raise EventStreamError("prelude checksum mismatch")
            if headers_len > MAX_HEADERS or total - headers_len - 16 > MAX_PAYLOAD \
                    or total < headers_len + 16:
                raise EventStreamError(f"implausible message size ({total} bytes)")
            if len(buf) - start < total:
                break
            view = memoryview(buf)[start:start + total]
            (message_crc,) = struct.unpack_from(">I", view, total - 4)
            if zlib.crc32(view[:total - 4]) != message_crc:
                view.release()
                raise EventStreamError("message checksum mismatch")
            headers = parse_headers(view[12:12 + headers_len])
            payload = bytes(view[12 + headers_len:total - 4])
            view.release()
            self._start = start + total
            yield headers, payload
        if self._start > 65536 or self._start == len(buf):  # reclaim what was read
            del buf[:self._start]
            self._start = 0


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers (the fake Bedrock in the tests)."""
    raw = b"".join(struct.pack(">B", len(n.encode())) + n.encode() + b"\x07"
                   + struct.pack(">H", len(v.encode())) + v.encode() for n, v in headers.items())
    total = 16 + len(raw) + len(payload)
    prelude = struct.pack(">II", total, len(raw))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    body = prelude + raw + payload
    return body + struct.pack(">I", zlib.crc32(body))


# -- usage -----------------------------------------------------------------------------------


def converse_usage(usage: Any) -> Usage:
    """Converse's `usage`. Its inputTokens EXCLUDES cache reads and writes (unlike OpenAI's);
    ours counts every input token, so they are added, never subtracted."""
    if not isinstance(usage, dict):
        return Usage()
    uncached = as_int(usage.get("inputTokens"))
    read = as_int(usage.get("cacheReadInputTokens")) or 0
    write = as_int(usage.get("cacheWriteInputTokens")) or 0
    write_1h = sum(as_int(d.get("inputTokens")) or 0 for d in usage.get("cacheDetails") or ()
                   if isinstance(d, dict) and d.get("ttl") == "1h")
    return Usage(input_tokens=None if uncached is None else uncached + read + write,
                 output_tokens=as_int(usage.get("outputTokens")),
                 cache_read_tokens=read if uncached is not None else None,
                 cache_write_tokens=write if uncached is not None else None,
                 cache_write_5m_tokens=write - write_1h if uncached is not None else None,
                 cache_write_1h_tokens=write_1h if uncached is not None else None)


def _service_tier(obj: Any, reading: Reading) -> None:
    tier = dig(obj, "serviceTier", "type")
    if isinstance(tier, str):
        reading.service_tier = tier


_METRICS = {"inputTokenCount": "input_tokens", "outputTokenCount": "output_tokens",
            "cacheReadInputTokenCount": "cache_read_input_tokens",
            "cacheWriteInputTokenCount": "cache_creation_input_tokens"}


def _invocation_metrics(metrics: Any, raw: dict[str, int]) -> None:
    """Bedrock's own count at the end of an InvokeModel stream (any model family), in
    Anthropic's terms; inputTokenCount excludes the cache, as Anthropic's input_tokens does.
    Its cache counts are kept: dropping them bills cached input as fresh (or as nothing)."""
    if isinstance(metrics, dict):
        for name, ours in _METRICS.items():
            value = as_int(metrics.get(name))
            if value is not None:
                raw[ours] = value


class _ConverseStream:
    """ConverseStream events: usage is in the last one, `metadata`, after `messageStop`."""

    __slots__ = ()

    def on_message(self, headers: dict[str, Any], payload: bytes, reading: Reading) -> None:
        if headers.get(":event-type") == "metadata":
            obj = loads(payload)
            reading.usage = converse_usage(dig(obj, "usage"))
            _service_tier(obj, reading)
            reading.complete = True

    def finish(self, reading: Reading) -> None:
        pass


# base64 of what InvokeModel stream chunks begin with when they carry no usage (content
# deltas: most of a stream), compact and spaced: such chunks are not decoded.
_NO_USAGE = tuple(b'"bytes":"' + base64.b64encode(p)[:len(p) // 3 * 4]
                  for p in (b'{"type":"content_block_', b'{"type": "content_block_'))


class _InvokeStream:
    """InvokeModelWithResponseStream: `chunk` events whose payload `{"bytes": base64}` holds
    the model's own stream event (Anthropic's message events for Claude); the last one adds
    `amazon-bedrock-invocationMetrics`."""

    __slots__ = ("_anthropic", "_raw")

    def __init__(self) -> None:
        self._raw: dict[str, int] = {}
        self._anthropic = anthropic.FORMAT.stream_reader(Route("invoke", ""))

    def on_message(self, headers: dict[str, Any], payload: bytes, reading: Reading) -> None:
        if headers.get(":event-type") != "chunk" or any(p in payload for p in _NO_USAGE):
            return
        encoded = dig(loads(payload), "bytes")
        if not isinstance(encoded, str):
            return
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return
        event = loads(data)
        if not isinstance(event, dict):
            return
        kind = event.get("type")
        if isinstance(kind, str):
            self._anthropic.on_event(kind.encode(), data, reading)
        metrics = event.get("amazon-bedrock-invocationMetrics")
        if metrics is not None:
            _invocation_metrics(metrics, self._raw)
            reading.complete = True

    def finish(self, reading: Reading) -> None:
        self._anthropic.finish(reading)
        if self._raw:  # Bedrock's count, over the model's own where both are present
            raw = dict(self._anthropic._raw)  # the TTL split of cache writes, if Claude gave it
            raw.update(self._raw)
            reading.usage = anthropic.to_usage(raw)


class EventStreamMeter:
    """Reads usage from an event stream as it passes; the caller's bytes are not touched."""

    __slots__ = ("_broken", "_parser", "_reader", "_reading")

    def __init__(self, reader: _ConverseStream | _InvokeStream):
        self._parser = EventStreamParser()
        self._reader = reader
        self._reading = Reading()
        self._broken: str | None = None

    def feed(self, chunk: bytes) -> None:
        if self._broken is not None:
            return
        reading = self._reading
        try:
            for headers, payload in self._parser.feed(chunk):
                kind = headers.get(":message-type")
                if kind == "event":
                    self._reader.on_message(headers, payload, reading)
                elif kind == "exception":
                    name = headers.get(":exception-type", "exception")
                    message = dig(loads(payload), "message")
                    reading.error = stream_error(f"{name}: {message}" if isinstance(message, str)
                                                 else name)
                elif kind == "error":
                    reading.error = stream_error(f"{headers.get(':error-code')}: "
                                                 f"{headers.get(':error-message')}")
        except EventStreamError as exc:
            self._broken = str(exc)

    def finish(self) -> Reading:
        reading = self._reading
        self._reader.finish(reading)
        if self._broken is not None and reading.error is None:
            reading.error = unreadable(f"the event stream is corrupt ({self._broken})")
        return reading


# -- credentials -----------------------------------------------------------------------------


def parse_credentials(text: str) -> dict[str, str]:
    """AWS access keys from what an operator pastes: a JSON object (ours, or the AWS CLI's
    `AccessKeyId`/`SecretAccessKey`/`SessionToken`), or lines: key id, secret, [token]."""
    text = text.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            raise ValueError("not valid JSON") from None
        if not isinstance(obj, dict):
            raise ValueError("expected a JSON object")
        pick = {k.lower().replace("_", ""): v for k, v in obj.items()}
        found = {"access_key_id": pick.get("accesskeyid"),
                 "secret_access_key": pick.get("secretaccesskey"),
                 "session_token": pick.get("sessiontoken")}
    else:
        lines = [line.strip() for line in text.splitlines()]
        lines += [""] * (3 - len(lines))
        found = dict(zip(("access_key_id", "secret_access_key", "session_token"), lines[:3],
                         strict=True))
    out = {k: v for k, v in found.items() if isinstance(v, str) and v}
    if "access_key_id" not in out or "secret_access_key" not in out:
        raise ValueError("an access key id and a secret access key are required")
    if any(c.isspace() for v in out.values() for c in v):
        raise ValueError("AWS credentials contain no spaces")
    return out


_SIGNER: Any = None


def _signer_class() -> Any:
    """botocore's SigV4, with the payload hash computed once over the body as sent. Imported
    when a Bedrock credential is loaded: every CLI command loads the formats, few sign."""
    global _SIGNER
    if _SIGNER is None:
        from botocore.auth import SigV4Auth

        class Signer(SigV4Auth):  # type: ignore[misc]
            def payload(self, request: Any) -> str:
                return str(request.context["payload_hash"])

        _SIGNER = Signer
    return _SIGNER


class SigV4:
    """Signs each request for Bedrock in the configured region. Stored keys are static; the
    default chain (instance role, web identity, environment) is resolved and renewed by
    `refresh` in a thread, never on the request path."""

    def __init__(self, provider: str, region: str, stored: dict[str, str] | None):
        self.provider = provider
        self.region = region
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        self._request, self._signer = AWSRequest, _signer_class()
        self._chain: Any = None  # botocore's refreshable credentials
        self._frozen: Any = None  # botocore's ReadOnlyCredentials
        if stored is not None:
            self._frozen = Credentials(stored["access_key_id"], stored["secret_access_key"],
                                       stored.get("session_token")).get_frozen_credentials()

    @property
    def access_key_id(self) -> str | None:
        return self._frozen.access_key if self._frozen is not None else None

    async def refresh(self) -> None:
        if self._chain is None and self._frozen is not None:
            return  # stored keys: nothing to renew
        self._frozen = await asyncio.to_thread(self._resolve)

    def _resolve(self) -> Any:
        import botocore.session  # the chain only: stored keys never need it

        if self._chain is None:
            self._chain = botocore.session.Session().get_credentials()
            if self._chain is None:
                raise ValueError("botocore's default credential chain found no AWS "
                                 "credentials (environment, profile, instance role)")
        return self._chain.get_frozen_credentials()  # renewed by botocore near expiry

    def apply(self, method: str, url: str, headers: list[tuple[str, str]],
              body: bytes | bytearray) -> list[tuple[str, str]]:
        credentials = self._frozen
        if credentials is None:
            raise GatewayError(503, f"{self.provider}: AWS credentials from the default chain "
                               "are not available yet (see the gateway log); retry shortly",
                               headers={"Retry-After": "5"})
        signed = {n: v for n, v in headers if n in _SIGNED or n.startswith("x-amzn-bedrock-")}
        request = self._request(method=method, url=url, headers=signed, data=b"")
        request.context["payload_hash"] = hashlib.sha256(body).hexdigest()
        self._signer(credentials, SERVICE, self.region).add_auth(request)
        return [*((n, v) for n, v in headers if n not in signed), *request.headers.items()]


# -- the format ------------------------------------------------------------------------------


class BedrockFormat(WireFormat):
    name = "bedrock"
    # A gateway key sent as the SDK's bearer token (AnthropicBedrock's api_key,
    # AWS_BEARER_TOKEN_BEDROCK) authenticates the caller; it never goes upstream.
    credential_headers = (b"authorization",)
    caller_auth_headers: ClassVar[frozenset[bytes]] = frozenset({
        b"authorization", b"x-amz-date", b"date", b"x-amz-security-token",
        b"x-amz-content-sha256"})
    default_base_url = "https://bedrock-runtime.{region}.amazonaws.com"
    paths_help = "Bedrock: /model/{modelId}/converse[-stream], /invoke[-with-response-stream]"
    detection_rank = 15
    credential_prompts = (("AWS access key id", False, False),
                          ("AWS secret access key", True, False),
                          ("AWS session token (empty for none)", True, True))
    price_providers = ("bedrock", "bedrock_converse")

    def owns(self, path: str) -> bool:
        return path.startswith("/model/")

    def classify(self, method: str, path: str) -> Route:
        call = _INFERENCE.fullmatch(path) if method == "POST" else None
        if call is not None:
            return Route(endpoint=call.group("op"), upstream_path=path,
                         model=call.group("model"))
        return scoped("admin", path)

    def accepts_encoded_slash(self, raw_path: bytes) -> bool:
        # `%2F` inside the one model segment is how SDKs send an ARN.
        return _RAW_INFERENCE.fullmatch(raw_path) is not None

    def upstream_base_url(self, provider: ProviderConfig) -> str:
        return provider.base_url.replace("{region}", provider.region or DEFAULT_REGION)

    def credential_header(self, api_key: str) -> tuple[str, str]:
        raise GatewayError(500, "bedrock requests are signed, not sent with a key")

    def credential_from_text(self, text: str) -> tuple[str, str]:
        found = parse_credentials(text)
        return json.dumps(found, separators=(",", ":")), found["access_key_id"][-4:]

    def upstream_auth(self, provider: ProviderConfig, stored: str | None) -> SigV4:
        region = provider.region or DEFAULT_REGION
        if stored is None:
            return SigV4(self.name, region, None)
        return SigV4(self.name, region, parse_credentials(stored))

    def check_credentials(self, provider: ProviderConfig, stored: str | None) -> str:
        """ListAsyncInvokes, signed: free, and AWS checks the signature before permissions, so
        AccessDenied still proves the keys (an invoke-only role may not list)."""
        import httpx  # doctor only

        auth = self.upstream_auth(provider, stored)
        asyncio.run(auth.refresh())  # the default chain resolved, as the daemon does at load
        url = self.upstream_base_url(provider).rstrip("/") + "/async-invoke?maxResults=1"
        headers = auth.apply("GET", url, [("accept", "application/json")], b"")
        response = httpx.get(url, headers=dict(headers), timeout=10)
        kind = response.headers.get("x-amzn-ErrorType", "").split(":")[0]
        if response.is_success:
            return f"{url.split('/async-invoke')[0]} accepted a signed call"
        if kind == "AccessDeniedException":
            return (f"{url.split('/async-invoke')[0]} verified the signature (the credentials "
                    "may not list async invocations, which serving does not need)")
        message = (loads(response.content) or {}).get("message") if response.content else None
        raise StewardError(f"Bedrock refused a signed call ({response.status_code} {kind}): "
                           f"{message or response.reason_phrase}")

    def error_body(self, status: int, message: str) -> bytes:
        return json.dumps({"message": message}).encode()

    def error_headers(self, status: int) -> dict[str, str]:
        kind = _ERROR_TYPES.get(status, "InternalServerException" if status >= 500
                                else "ValidationException")
        return {"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/"
                                    "com.amazon.bedrock/"}

    def is_stream(self, route: Route, content_type: str) -> bool:
        return content_type.startswith(EVENT_STREAM)

    def price_models(self, response_model: str | None, model: str | None) -> Iterator[str]:
        """The id the caller asked for (a profile's own price, then its base model's; an
        ARN's trailing id), before the model the body names (InvokeModel's Claude name)."""
        if model:
            model = model.rsplit("/", 1)[-1] if model.startswith("arn:") else model
            yield model
            profile = _PROFILE.match(model)
            if profile:
                yield profile.group(1)
        if response_model:
            yield response_model

    def read_json(self, obj: Any, reading: Reading) -> None:
        if isinstance(obj.get("usage"), dict) and "inputTokens" in obj["usage"]:
            reading.usage = converse_usage(obj["usage"])  # Converse (and Nova's InvokeModel)
            _service_tier(obj, reading)
            stop = obj.get("stopReason")
            if isinstance(stop, str):
                reading.finish_reasons = (stop,)
        elif obj.get("type") == "message" or "usage" in obj:
            anthropic.FORMAT.read_json(obj, reading)  # Claude's InvokeModel body

    def stream_reader(self, route: Route) -> StreamReader:
        raise NotImplementedError("Bedrock streams are event streams, not SSE")

    def meter(self, route: Route, status: int, content_type: str,
              max_line: int = 0) -> Meter:
        if 200 <= status < 300 and content_type.startswith(EVENT_STREAM):
            reader = _ConverseStream() if route.endpoint == "converse-stream" \
                else _InvokeStream()
            return EventStreamMeter(reader)
        return JsonMeter(self, status, content_type)


FORMAT = BedrockFormat()
