"""From a request's path (or X-Majordomo-Provider header) to a configured upstream and route.

Upstream hosts come only from configuration: the request chooses among configured providers and
contributes a path appended to that provider's base URL, never a host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from steward.config import ProviderConfig
from steward.errors import GatewayError
from steward.providers import FORMATS, Route, WireFormat

# Gemini's `/v1/models/{model}:{method}` must win over OpenAI's `/v1/models/{id}`.
_DETECTION_ORDER = ("gemini", "anthropic", "openai")
SUPPORTED_PATHS = (
    "OpenAI: /v1/chat/completions, /v1/completions, /v1/responses, /v1/embeddings, /v1/models, "
    "/v1/moderations, /v1/audio/*, /v1/images/*; Anthropic: /v1/messages; "
    "Gemini: /v1beta/models/{model}:{method}"
)


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    fmt: WireFormat
    base_url: str
    allow_caller_credentials: bool = True


class Router:
    def __init__(self, providers: Mapping[str, ProviderConfig]):
        self.upstreams = {
            name: Upstream(name, FORMATS[p.format], p.base_url.rstrip("/"),
                           p.allow_caller_credentials)
            for name, p in providers.items()
        }
        self._detect = [FORMATS[name] for name in _DETECTION_ORDER if name in FORMATS]
        self._detect += [f for f in FORMATS.values() if f.name not in _DETECTION_ORDER]

    def detect(self, method: str, path: str) -> tuple[Upstream, Route] | None:
        for fmt in self._detect:
            route = fmt.route(method, path)
            if route is not None:
                return self.upstreams[fmt.name], route
        return None

    def resolve(self, method: str, path: str, provider: str | None) -> tuple[Upstream, Route]:
        detected = self.detect(method, path)
        if provider is None:
            if detected is None:
                raise GatewayError(404, f"Steward does not know the path {path!r}. Supported: "
                                   f"{SUPPORTED_PATHS}; or name a provider with the "
                                   "X-Majordomo-Provider header.")
            return detected
        upstream = self.upstreams.get(provider.strip().lower())
        if upstream is None:
            raise GatewayError(400, f"X-Majordomo-Provider: unknown provider {provider!r}; "
                               f"valid: {', '.join(sorted(self.upstreams))}")
        return upstream, upstream.fmt.classify(method, path)

    def error_format(self, method: str, path: str) -> WireFormat:
        """The shape to answer in before (or without) a successful resolve."""
        detected = self.detect(method, path)
        return detected[0].fmt if detected else FORMATS["openai"]
