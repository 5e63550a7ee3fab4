"""Anthropic's Messages API. base_url has no version prefix: `https://api.anthropic.com`."""

from __future__ import annotations

import json
from typing import Any

from steward.providers.base import (
    Route,
    WireFormat,
    endpoints,
    find_endpoint,
    loads,
    scoped,
    stream_error,
)
from steward.providers.usage import Reading, Usage, as_int, dig

INFERENCE = endpoints(
    ("POST", r"/v1/messages", "messages"),
    ("POST", r"/v1/messages/count_tokens", "messages/count_tokens"),
    ("GET", r"/v1/models", "models"),
    ("GET", r"/v1/models/[^/]+", "models/{id}"),
)
# Path prefixes of the scoped families; any other path on the host is admin.
_SCOPES = (("/v1/messages/batches", "batches"), ("/v1/files", "files"))

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}


_COUNTS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
           "cache_creation_input_tokens")
_TTLS = ("ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens")


def collect(raw: dict[str, int], usage: Any) -> None:
    """Keep the counts a usage object carries; later events replace earlier ones.

    Streams send usage twice: message_start, then cumulative counts in message_delta.
    """
    if not isinstance(usage, dict):
        return
    for name in _COUNTS:
        value = as_int(usage.get(name))
        if value is not None:
            raw[name] = value
    for ttl in _TTLS:
        value = as_int(dig(usage, "cache_creation", ttl))
        if value is not None:
            raw[ttl] = value


def to_usage(raw: dict[str, int]) -> Usage:
    """Anthropic's input_tokens excludes cache reads and writes; ours includes them."""
    uncached = raw.get("input_tokens")
    if uncached is None:
        return Usage(output_tokens=raw.get("output_tokens"))
    read = raw.get("cache_read_input_tokens", 0)
    write = raw.get("cache_creation_input_tokens", 0)
    write_1h = raw.get("ephemeral_1h_input_tokens", 0)
    write_5m = raw.get("ephemeral_5m_input_tokens", write - write_1h)
    return Usage(
        input_tokens=uncached + read + write,
        output_tokens=raw.get("output_tokens"),
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_5m_tokens=write_5m,
        cache_write_1h_tokens=write_1h,
        reasoning_tokens=None,  # thinking is billed as output and not reported apart
    )


def _read_message(message: dict[str, Any], raw: dict[str, int], reading: Reading) -> None:
    collect(raw, message.get("usage"))
    if isinstance(message.get("model"), str):
        reading.response_model = message["model"]
    tier = dig(message, "usage", "service_tier")
    if isinstance(tier, str):
        reading.service_tier = tier
    if isinstance(message.get("id"), str):
        reading.response_id = message["id"]
    if isinstance(message.get("stop_reason"), str):
        reading.finish_reasons = (message["stop_reason"],)


class _MessagesStream:
    __slots__ = ("_raw",)

    def __init__(self) -> None:
        self._raw: dict[str, int] = {}

    def on_event(self, event: bytes, data: bytes, reading: Reading) -> None:
        if event == b"message_start":
            message = dig(loads(data), "message")
            if isinstance(message, dict):
                _read_message(message, self._raw, reading)
        elif event == b"message_delta":
            delta = loads(data)
            collect(self._raw, dig(delta, "usage"))
            reason = dig(delta, "delta", "stop_reason")
            if isinstance(reason, str):
                reading.finish_reasons = (reason,)
        elif event == b"message_stop":
            reading.complete = True
        elif event == b"error":
            reading.error = stream_error(dig(loads(data), "error", "message"))

    def finish(self, reading: Reading) -> None:
        reading.usage = to_usage(self._raw)


class AnthropicFormat(WireFormat):
    name = "anthropic"
    credential_headers = (b"x-api-key", b"authorization")
    default_base_url = "https://api.anthropic.com"
    paths_help = "Anthropic: /v1/messages"
    detection_rank = 20
    price_providers = ("anthropic",)

    def owns(self, path: str) -> bool:
        # /v1/models and /v1/files are OpenAI's unless X-Majordomo-Provider says anthropic.
        return path == "/v1/messages" or path.startswith("/v1/messages/")

    def classify(self, method: str, path: str) -> Route:
        endpoint = find_endpoint(INFERENCE, method, path)
        if endpoint is not None:
            return Route(endpoint=endpoint.label, upstream_path=path)
        for prefix, scope in _SCOPES:
            if path == prefix or path.startswith(prefix + "/"):
                return scoped(scope, path)
        return scoped("admin", path)

    def credential_header(self, api_key: str) -> tuple[str, str]:
        return ("x-api-key", api_key)

    def error_body(self, status: int, message: str) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()

    def read_json(self, obj: Any, reading: Reading) -> None:
        raw: dict[str, int] = {}
        _read_message(obj, raw, reading)
        reading.usage = to_usage(raw)

    def stream_reader(self, route: Route) -> _MessagesStream:
        return _MessagesStream()


FORMAT = AnthropicFormat()
