"""Google's Gemini API (generativelanguage): `/{v1beta|v1}/models/{model}:{method}`.

Streams come as SSE with `?alt=sse`, otherwise as one JSON array streamed element by element.
"""

from __future__ import annotations

import json
import re
from typing import Any

from steward.providers.base import Meter, Route, WireFormat, loads, scoped, stream_error
from steward.providers.streams import MAX_SSE_LINE, JsonArrayScanner
from steward.providers.usage import Reading, Usage, as_int, dig

INFERENCE_METHODS = {"generateContent", "streamGenerateContent", "countTokens", "embedContent",
                     "batchEmbedContents"}
_BATCH_METHODS = {"batchGenerateContent", "asyncBatchEmbedContent"}
# Methods that mark a `/v1/models/...:method` path as Gemini's rather than an OpenAI model id
# (those may hold colons: ft:gpt-4o-mini:org::id).
_KNOWN_METHODS = INFERENCE_METHODS | _BATCH_METHODS | {"predict", "predictLongRunning"}
_CALL = re.compile(r"/(v1beta|v1|v1alpha)/models/([^/:]+):([A-Za-z]+)")
_MODELS = re.compile(r"/(v1beta|v1|v1alpha)/models(?:/([^/:]+))?")
_VERSIONED = re.compile(r"(?:/upload)?/(?:v1beta|v1|v1alpha)/([^/:]+)")
# First segment after the version -> scope; anything else on the host is admin.
_SCOPES = {"files": "files", "batches": "batches", "tunedModels": "fine_tuning"}
_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
           414: "INVALID_ARGUMENT", 431: "INVALID_ARGUMENT",
           404: "NOT_FOUND", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
           499: "CANCELLED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def read_usage_metadata(meta: Any) -> Usage:
    """promptTokenCount includes cached tokens; thoughts are billed as output."""
    if not isinstance(meta, dict):
        return Usage()
    prompt = as_int(meta.get("promptTokenCount"))
    candidates = as_int(meta.get("candidatesTokenCount")) or 0
    thoughts = as_int(meta.get("thoughtsTokenCount")) or 0
    if prompt is None:
        return Usage()
    return Usage(
        input_tokens=prompt,
        output_tokens=candidates + thoughts,
        cache_read_tokens=as_int(meta.get("cachedContentTokenCount")) or 0,
        cache_write_tokens=0,
        reasoning_tokens=thoughts,
        tool_use_prompt_tokens=as_int(meta.get("toolUsePromptTokenCount")) or 0,
    )


# Vertex AI's usageMetadata.trafficType: which tier billed the call (priced as such).
_TRAFFIC_TIERS = {"ON_DEMAND": "standard", "ON_DEMAND_PRIORITY": "priority",
                  "ON_DEMAND_FLEX": "flex", "PROVISIONED_THROUGHPUT": "provisioned"}


def _read_element(obj: Any, reading: Reading) -> None:
    if not isinstance(obj, dict):
        return
    if "usageMetadata" in obj:
        reading.usage = read_usage_metadata(obj["usageMetadata"])
        traffic = dig(obj, "usageMetadata", "trafficType")
        if isinstance(traffic, str) and traffic in _TRAFFIC_TIERS:
            reading.service_tier = _TRAFFIC_TIERS[traffic]
    if isinstance(obj.get("modelVersion"), str):
        reading.response_model = obj["modelVersion"]
    if isinstance(obj.get("responseId"), str):
        reading.response_id = obj["responseId"]
    candidates = obj.get("candidates")
    if isinstance(candidates, list):
        reasons = tuple(c["finishReason"] for c in candidates
                        if isinstance(c, dict) and isinstance(c.get("finishReason"), str))
        if reasons:
            reading.finish_reasons = reasons
    if isinstance(dig(obj, "error"), dict):
        reading.error = stream_error(dig(obj, "error", "message"))


class _LastUsage:
    """Every element may carry usageMetadata; the last one holds the final counts.

    Only that last element is decoded, once, at the end.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: bytes | None = None

    def see(self, element: bytes) -> None:
        if b'"usageMetadata"' in element or b'"error"' in element:
            self._last = element

    def finish(self, reading: Reading) -> None:
        if self._last is not None:
            _read_element(loads(self._last), reading)


class _SSEStream(_LastUsage):
    __slots__ = ()

    def on_event(self, event: bytes, data: bytes, reading: Reading) -> None:
        self.see(data)


class _ArrayMeter(_LastUsage):
    __slots__ = ("_scanner",)

    def __init__(self) -> None:
        super().__init__()
        self._scanner = JsonArrayScanner()

    def feed(self, chunk: bytes) -> None:
        for element in self._scanner.feed(chunk):
            self.see(element)

    def finish(self) -> Reading:  # type: ignore[override]
        reading = Reading()
        super().finish(reading)
        return reading


class GeminiFormat(WireFormat):
    name = "gemini"
    credential_headers = (b"x-goog-api-key",)
    credential_param = "key"
    default_base_url = "https://generativelanguage.googleapis.com"
    paths_help = "Gemini: /v1beta/models/{model}:{method}"
    detection_rank = 10  # /v1/models/{model}:{method} would otherwise look like OpenAI's
    price_providers = ("gemini",)

    def owns(self, path: str) -> bool:
        if path.startswith(("/v1beta/", "/v1alpha/", "/upload/")):
            return True
        call = _CALL.fullmatch(path)  # /v1/models and /v1/models/{id} are OpenAI's
        return call is not None and call.group(3) in _KNOWN_METHODS

    def classify(self, method: str, path: str) -> Route:
        call = _CALL.fullmatch(path)
        if call is not None:
            name = call.group(3)
            if name in INFERENCE_METHODS and method == "POST":
                return Route(endpoint=name, upstream_path=path, model=call.group(2))
            return scoped("batches" if name in _BATCH_METHODS else "admin", path)
        models = _MODELS.fullmatch(path)
        if models is not None and method == "GET":
            return Route(endpoint="models/{id}" if models.group(2) else "models",
                         upstream_path=path)
        versioned = _VERSIONED.match(path)
        scope = _SCOPES.get(versioned.group(1), "admin") if versioned else "admin"
        return scoped(scope, path)

    def credential_header(self, api_key: str) -> tuple[str, str]:
        return ("x-goog-api-key", api_key)

    def error_body(self, status: int, message: str) -> bytes:
        return json.dumps({"error": {"code": status, "message": message,
                                     "status": _STATUS.get(status, "INTERNAL")}}).encode()

    def read_json(self, obj: Any, reading: Reading) -> None:
        _read_element(obj, reading)

    def is_stream(self, route: Route, content_type: str) -> bool:
        # Without ?alt=sse a stream is one JSON array sent element by element.
        return route.endpoint == "streamGenerateContent" or super().is_stream(route,
                                                                              content_type)

    def stream_reader(self, route: Route) -> _SSEStream:
        return _SSEStream()

    def meter(self, route: Route, status: int, content_type: str,
              max_line: int = MAX_SSE_LINE) -> Meter:
        if (200 <= status < 300 and route.endpoint == "streamGenerateContent"
                and not content_type.startswith("text/event-stream")):
            return _ArrayMeter()
        return super().meter(route, status, content_type, max_line)


FORMAT = GeminiFormat()
