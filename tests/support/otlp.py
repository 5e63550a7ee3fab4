"""A loopback OpenTelemetry collector: OTLP/HTTP with protobuf bodies, decoded with the
opentelemetry-proto classes a real collector's wire format is defined by. Every export is kept
raw as well, so a test can search the bytes that left Steward."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.support.loopback import LoopbackServer


def plain(value: AnyValue) -> Any:
    """An attribute's value as Python: str, bool, int, float or a tuple of them."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(plain(v) for v in value.array_value.values)
    return getattr(value, kind) if kind else None


def attributes(item: Any) -> dict[str, Any]:
    return {kv.key: plain(kv.value) for kv in item.attributes}


@dataclass
class Export:
    path: str
    headers: dict[str, str]
    raw: bytes


@dataclass
class OTLPCollector:
    port: int = 0
    exports: list[Export] = field(default_factory=list)
    status: int = 200  # what every export is answered with
    rejected_spans: int = 0  # a partial success: this many spans of each export refused
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: LoopbackServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OTLPCollector:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/traces", self.handle)
        app.router.add_post("/v1/metrics", self.handle)
        self._server = LoopbackServer(app, self.port, "otlp-collector")
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        assert request.headers.get("Content-Type") == "application/x-protobuf"
        with self._lock:
            self.exports.append(Export(request.path, dict(request.headers), raw))
        answer = (ExportTraceServiceResponse() if request.path == "/v1/traces"
                  else ExportMetricsServiceResponse())
        if self.rejected_spans and request.path == "/v1/traces":
            answer.partial_success.rejected_spans = self.rejected_spans
            answer.partial_success.error_message = "too many attributes"
        return web.Response(body=answer.SerializeToString(), status=self.status,
                            content_type="application/x-protobuf")

    def _of(self, path: str) -> list[Export]:
        with self._lock:
            return [e for e in self.exports if e.path == path]

    def trace_requests(self) -> list[ExportTraceServiceRequest]:
        return [ExportTraceServiceRequest.FromString(e.raw) for e in self._of("/v1/traces")]

    def metric_requests(self) -> list[ExportMetricsServiceRequest]:
        return [ExportMetricsServiceRequest.FromString(e.raw) for e in self._of("/v1/metrics")]

    def spans(self) -> list[tuple[dict[str, Any], Span]]:
        """(resource attributes, span) for every span received."""
        return [(attributes(rs.resource), span) for request in self.trace_requests()
                for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]

    def span_tagged(self, name: str, value: str) -> Span | None:
        found = [s for _, s in self.spans() if attributes(s).get(f"steward.tag.{name}") == value]
        assert len(found) <= 1, f"{len(found)} spans tagged {name}={value}"
        return found[0] if found else None

    def last_metrics(self) -> dict[str, Any]:
        """The newest export's metrics by name (they are cumulative: the last one is the sum)."""
        requests = self.metric_requests()
        if not requests:
            return {}
        return {metric.name: metric for rm in requests[-1].resource_metrics
                for sm in rm.scope_metrics for metric in sm.metrics}

    def raw(self) -> bytes:
        with self._lock:
            return b"".join(e.raw for e in self.exports)
