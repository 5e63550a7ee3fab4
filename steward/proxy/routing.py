"""From a request's path (or X-Majordomo-Provider header) to a configured upstream and route.

Upstream hosts come only from configuration: the request chooses among configured providers and
contributes a path appended to that provider's base URL, never a host.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from steward import providers
from steward.config import ProviderConfig
from steward.errors import GatewayError
from steward.providers import Route, WireFormat


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    fmt: WireFormat
    base_url: str
    allow_caller_credentials: bool = True


class Router:
    def __init__(self, configured: Mapping[str, ProviderConfig]):
        self.upstreams = {}
        for name, p in configured.items():
            fmt = providers.find(p.format)
            if fmt is None:  # config validation names the choices; this is a programming error
                raise ValueError(f"providers.{name}: unknown format {p.format!r}")
            self.upstreams[name] = Upstream(name, fmt, fmt.upstream_base_url(p).rstrip("/"),
                                            p.allow_caller_credentials)
        # Path detection: a format's paths lead to the upstream named after it, if configured.
        self._detect = [f for f in providers.detection_order() if f.name in self.upstreams]

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
                                   f"{providers.paths_help()}; or name a provider with the "
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
        return detected[0].fmt if detected else providers.default_format()
