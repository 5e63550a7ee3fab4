"""OpenAI's wire format (also spoken by Together, Groq, Fireworks, vLLM, Ollama…).

base_url includes the version prefix, as in the SDK: `https://api.openai.com/v1`. Incoming paths
may carry `/v1` or not (clients configured with a bare host); either way it is replaced by the
base URL's own prefix.
"""

from __future__ import annotations

import json
import re
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

_ID = r"/[^/]+"
INFERENCE = endpoints(
    ("POST", r"/chat/completions", "chat/completions"),
    ("POST", r"/responses", "responses"),
    ("POST", r"/embeddings", "embeddings"),
    ("POST", r"/completions", "completions"),
    ("GET", r"/models", "models"),
    ("GET", r"/models" + _ID, "models/{id}"),  # DELETE (a fine-tuned model) is admin
    ("GET DELETE", r"/responses" + _ID, "responses/{id}"),
    ("POST", r"/responses" + _ID + "/cancel", "responses/{id}/cancel"),
    ("GET", r"/responses" + _ID + "/input_items", "responses/{id}/input_items"),
    ("POST", r"/moderations", "moderations"),
    ("POST", r"/audio/speech", "audio/speech"),
    ("POST", r"/audio/transcriptions", "audio/transcriptions"),
    ("POST", r"/audio/translations", "audio/translations"),
    ("POST", r"/images/generations", "images/generations"),
    ("POST", r"/images/edits", "images/edits"),
    ("POST", r"/images/variations", "images/variations"),
)
# First path segment -> scope; any other path on the host is admin.
_SCOPES = {"files": "files", "uploads": "files", "batches": "batches",
           "fine_tuning": "fine_tuning"}
# Detected without X-Majordomo-Provider: the inference families, the scoped ones, and the
# account APIs a gateway key must be refused (403, not 404) on.
_OWNED = {"chat", "completions", "responses", "embeddings", "models", "moderations", "audio",
          "images", *_SCOPES, "organization", "vector_stores", "assistants", "threads"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                403: "permission_error", 404: "not_found_error", 413: "invalid_request_error",
                429: "rate_limit_error"}


def _strip_version(path: str) -> str:
    return path[3:] if path == "/v1" or path.startswith("/v1/") else path


def _first_segment(rest: str) -> str:
    return rest[1:].split("/", 1)[0]


def read_usage(usage: Any) -> Usage:
    """Chat/completions (prompt_/completion_) and Responses (input_/output_) field names."""
    if not isinstance(usage, dict):
        return Usage()
    responses_api = "input_tokens" in usage
    input_tokens = as_int(usage.get("input_tokens" if responses_api else "prompt_tokens"))
    output = as_int(usage.get("output_tokens" if responses_api else "completion_tokens"))
    in_details = "input_tokens_details" if responses_api else "prompt_tokens_details"
    out_details = "output_tokens_details" if responses_api else "completion_tokens_details"
    cached = as_int(dig(usage, in_details, "cached_tokens"))
    reasoning = as_int(dig(usage, out_details, "reasoning_tokens"))
    if output is None and input_tokens is not None and "total_tokens" in usage:
        output = 0  # embeddings: input only
    known = input_tokens is not None
    return Usage(
        input_tokens=input_tokens,
        output_tokens=output,
        cache_read_tokens=cached if cached is not None else (0 if known else None),
        cache_write_tokens=0 if known else None,
        reasoning_tokens=reasoning if reasoning is not None else (0 if known else None),
    )


def _read_response(obj: dict[str, Any], reading: Reading) -> None:
    reading.usage = read_usage(obj.get("usage"))
    if isinstance(obj.get("model"), str):
        reading.response_model = obj["model"]
    if isinstance(obj.get("service_tier"), str):
        reading.service_tier = obj["service_tier"]
    if isinstance(obj.get("id"), str):
        reading.response_id = obj["id"]
    reasons = _finish_reasons(obj)
    if reasons:
        reading.finish_reasons = reasons


def _finish_reasons(obj: dict[str, Any]) -> tuple[str, ...]:
    """Chat: each choice's finish_reason. Responses: why it is incomplete, else its status."""
    choices = obj.get("choices")
    if isinstance(choices, list):
        return tuple(c["finish_reason"] for c in choices
                     if isinstance(c, dict) and isinstance(c.get("finish_reason"), str))
    if obj.get("object") != "response":
        return ()
    reason = dig(obj, "incomplete_details", "reason")
    status = obj.get("status")
    if isinstance(reason, str):
        return (reason,)
    return (status,) if isinstance(status, str) and status != "in_progress" else ()


# A chunk whose choice has finished; every other chunk says "finish_reason": null.
_FINISHED = re.compile(rb'"finish_reason"\s*:\s*"([^"\\]{1,64})"')


class _ChatStream:
    """Chat completions: usage is in the last chunk, only with stream_options.include_usage."""

    __slots__ = ("_first", "_last_usage")

    def __init__(self) -> None:
        self._first = True
        self._last_usage: bytes | None = None

    def on_event(self, event: bytes, data: bytes, reading: Reading) -> None:
        if data == b"[DONE]":
            reading.complete = True
        if self._first and data != b"[DONE]":
            self._first = False
            obj = loads(data)
            if isinstance(obj, dict):
                _read_response(obj, reading)
                if obj.get("usage"):
                    self._last_usage = data
        else:
            if b'"usage"' in data:
                self._last_usage = data  # decoded once, at the end
            if b'"finish_reason":"' in data or b'"finish_reason": "' in data:
                reading.finish_reasons += tuple(r.decode("utf-8", "replace")
                                                for r in _FINISHED.findall(data))
        if b'"error"' in data and data.startswith(b'{"error"'):
            obj = loads(data)
            reading.error = stream_error(dig(obj, "error", "message"))

    def finish(self, reading: Reading) -> None:
        if self._last_usage is None:
            return
        obj = loads(self._last_usage)
        if isinstance(obj, dict) and obj.get("usage"):
            model, reasons = reading.response_model, reading.finish_reasons
            _read_response(obj, reading)
            reading.response_model = reading.response_model or model
            reading.finish_reasons = reasons or reading.finish_reasons


_FINAL_EVENTS = {b"response.completed", b"response.incomplete", b"response.failed"}


class _ResponsesStream:
    """Responses API: usage arrives in the final response.* event's `response` object."""

    __slots__ = ()

    def on_event(self, event: bytes, data: bytes, reading: Reading) -> None:
        if event in _FINAL_EVENTS or event == b"error":
            reading.complete = event in _FINAL_EVENTS
            obj = loads(data)
            if event == b"error":
                reading.error = stream_error(obj.get("message") if isinstance(obj, dict) else None)
                return
            response = obj.get("response") if isinstance(obj, dict) else None
            if isinstance(response, dict):
                _read_response(response, reading)
                if event == b"response.failed":
                    message = dig(response, "error", "message")
                    reading.error = f"response failed: {message}" if message else "response failed"
        elif event == b"response.created" and reading.response_model is None:
            obj = loads(data)
            model = dig(obj, "response", "model")
            if isinstance(model, str):
                reading.response_model = model

    def finish(self, reading: Reading) -> None:
        pass


class OpenAIFormat(WireFormat):
    name = "openai"
    credential_headers = (b"authorization",)
    default_base_url = "https://api.openai.com/v1"
    paths_help = ("OpenAI: /v1/chat/completions, /v1/completions, /v1/responses, "
                  "/v1/embeddings, /v1/models, /v1/moderations, /v1/audio/*, /v1/images/*")
    detection_rank = 30  # claims the most general shapes, so it is asked last
    is_default = True  # the API most SDKs and tools speak
    price_providers = ("openai", "text-completion-openai")

    def owns(self, path: str) -> bool:
        return _first_segment(_strip_version(path)) in _OWNED

    def classify(self, method: str, path: str) -> Route:
        rest = _strip_version(path)
        endpoint = find_endpoint(INFERENCE, method, rest)
        if endpoint is not None:
            return Route(endpoint=endpoint.label, upstream_path=rest)
        return scoped(_SCOPES.get(_first_segment(rest), "admin"), rest)

    def credential_header(self, api_key: str) -> tuple[str, str]:
        return ("authorization", f"Bearer {api_key}")

    def error_body(self, status: int, message: str) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        return json.dumps({"error": {"message": message, "type": kind, "param": None,
                                     "code": f"steward_{status}"}}).encode()

    def read_json(self, obj: Any, reading: Reading) -> None:
        _read_response(obj, reading)

    def stream_reader(self, route: Route) -> _ChatStream | _ResponsesStream:
        return _ResponsesStream() if route.endpoint.startswith("responses") else _ChatStream()


FORMAT = OpenAIFormat()
