"""OpenTelemetry export: one span per proxied request and GenAI metrics, over OTLP/HTTP protobuf.

The request path pays one hand-off: `submit` appends a small tuple to a bounded deque. Everything
else runs in this worker's background tasks: records become metric points (aggregated here,
cumulative, exported every OTEL_METRIC_EXPORT_INTERVAL) and encoded spans, which wait in a
second bounded buffer and go out in batches, retried with backoff. When the collector is down
both buffers drop their oldest entries; drops are counted in /metrics and logged once per
outage. Spans carry counts, timings, ids and tags, never prompt or completion text: the body's
object URL stands in for the content.

Spans are encoded with opentelemetry-proto directly rather than through the OpenTelemetry SDK:
measured, the SDK's span objects and processors cost several times more per request than
building the protobuf message from the finished record (see the commit message).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import socket
import sqlite3
import struct
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import aiohttp
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    AGGREGATION_TEMPORALITY_CUMULATIVE,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags, Status

import steward
from steward.backoff import retry_delay
from steward.config import TelemetryConfig
from steward.db import changed, transaction
from steward.errors import ConfigError
from steward.secrets import provider_keys
from steward.secrets.crypto import Vault

if TYPE_CHECKING:
    from steward.daemon.metrics import Metrics
    from steward.proxy.exchange import Exchange

log = logging.getLogger("steward.telemetry")

HEADERS_SECRET = "telemetry-headers"  # sealed JSON {name: value}, set by `steward telemetry set`
# Longest wait between retries while the collector is down (tests shorten it).
MAX_BACKOFF = float(os.environ.get("STEWARD_TELEMETRY_MAX_BACKOFF", "30"))
SLICE = 64  # records turned into spans between yields to the event loop
MAX_SERIES = 1000  # attribute sets per metric; more go to one overflow series
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                 16777216, 67108864)  # the semantic conventions' advice for token usage
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                    40.96, 81.92)
RETRYABLE = {429, 502, 503, 504}  # OTLP/HTTP: retry these; other failures drop the batch
PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini",
                  "bedrock": "aws.bedrock"}
OPERATIONS = {"chat/completions": "chat", "responses": "chat", "messages": "chat",
              "converse": "chat", "converse-stream": "chat",
              "completions": "text_completion", "embeddings": "embeddings",
              "generateContent": "generate_content",
              "streamGenerateContent": "generate_content", "embedContent": "embeddings",
              "batchEmbedContents": "embeddings"}
# What a record's error says, as a bounded error.type (answers of 400 and up use the status).
_ERROR_TYPES = (("upstream failed mid-response", "upstream_reset"),
                ("upstream silent", "timeout"), ("response exceeded", "timeout"),
                ("stream error", "stream_error"), ("response failed", "stream_error"),
                ("cut by Steward's shutdown", "shutdown"),
                ("client disconnected", "client_disconnected"),
                ("usage_unreadable", None), ("a stream line over", None))
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_STATUS_ERROR = b"\x7a\x02\x18" + bytes((Status.STATUS_CODE_ERROR,))  # status {code}
_REMOTE_PARENT = (SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK
                  | SpanFlags.SPAN_FLAGS_CONTEXT_IS_REMOTE_MASK)


# -- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Where and how to export; None from `resolve` means telemetry is off."""

    traces_url: str | None
    metrics_url: str | None
    headers: tuple[tuple[str, str], ...]
    service_name: str
    sample_ratio: float
    resource: tuple[tuple[str, str], ...] = ()  # OTEL_RESOURCE_ATTRIBUTES
    schedule_delay: float = 5.0  # OTEL_BSP_SCHEDULE_DELAY
    queue_size: int = 2048  # OTEL_BSP_MAX_QUEUE_SIZE
    batch_size: int = 512  # OTEL_BSP_MAX_EXPORT_BATCH_SIZE
    metrics_interval: float = 60.0  # OTEL_METRIC_EXPORT_INTERVAL
    timeout: float = 10.0  # OTEL_EXPORTER_OTLP_TIMEOUT


def parse_pairs(text: str, where: str) -> list[tuple[str, str]]:
    """`name=value,…` as in OTEL_EXPORTER_OTLP_HEADERS (values percent-decoded)."""
    pairs = []
    for item in filter(str.strip, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"{where}: {item.strip()!r} is not name=value")
        pairs.append((unquote(name.strip()), unquote(value.strip())))
    return pairs


def _signal_url(base: str, specific: str | None, path: str, where: str) -> str | None:
    url = specific or (base.rstrip("/") + path if base else None)
    if url is not None and not urlsplit(url).scheme.startswith("http"):
        raise ConfigError(f"{where}: {url!r} is not an http(s) URL (Steward exports OTLP over "
                          "HTTP/protobuf)")
    return url


def _env_number(env: Mapping[str, str], name: str, default: float, scale: float = 1.0
                ) -> float:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text) * scale
    except ValueError:
        raise ConfigError(f"{name}: {text!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}: must be greater than 0")
    return value


def resolve(config: TelemetryConfig, env: Mapping[str, str],
            sealed_headers: Mapping[str, str] | None = None) -> Settings | None:
    """[telemetry] first; the standard OTEL_* variables fill in what it leaves at its default.

    Headers merge in rising precedence: OTEL_EXPORTER_OTLP_HEADERS, telemetry.otlp_headers,
    then the sealed ones."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    base = config.otlp_endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    own = bool(config.otlp_endpoint)
    traces = _signal_url(base, None if own else env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
                         "/v1/traces", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    metrics = _signal_url(base, None if own else env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"),
                          "/v1/metrics", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    if traces is None and metrics is None:
        return None
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf").strip()
    if protocol != "http/protobuf":
        raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: Steward exports OTLP over "
                          "http/protobuf only; point it at the collector's HTTP port (4318)")
    headers: dict[str, tuple[str, str]] = {}
    for source in (parse_pairs(env.get("OTEL_EXPORTER_OTLP_HEADERS", ""),
                               "OTEL_EXPORTER_OTLP_HEADERS"),
                   parse_pairs(config.otlp_headers, "telemetry.otlp_headers"),
                   list((sealed_headers or {}).items())):
        headers.update({name.lower(): (name, value) for name, value in source})
    service = config.service_name
    if service == "steward" and env.get("OTEL_SERVICE_NAME", "").strip():
        service = env["OTEL_SERVICE_NAME"].strip()
    return Settings(
        traces_url=traces, metrics_url=metrics, headers=tuple(sorted(headers.values())),
        service_name=service, sample_ratio=config.sample_ratio,
        resource=tuple(parse_pairs(env.get("OTEL_RESOURCE_ATTRIBUTES", ""),
                                   "OTEL_RESOURCE_ATTRIBUTES")),
        schedule_delay=_env_number(env, "OTEL_BSP_SCHEDULE_DELAY", 5.0, 0.001),
        queue_size=int(_env_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)),
        batch_size=int(_env_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)),
        metrics_interval=_env_number(env, "OTEL_METRIC_EXPORT_INTERVAL", 60.0, 0.001),
        timeout=_env_number(env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10.0, 0.001))


def sealed_headers(conn: sqlite3.Connection, vault: Vault) -> dict[str, str]:
    stored = provider_keys.get_secret(conn, vault, HEADERS_SECRET)
    return dict(json.loads(stored)) if stored else {}


def store_headers(conn: sqlite3.Connection, vault: Vault, headers: Mapping[str, str]) -> None:
    if headers:
        provider_keys.set_secret(conn, vault, HEADERS_SECRET, "telemetry-headers",
                                 json.dumps(dict(headers)))
    else:
        with transaction(conn):
            conn.execute("DELETE FROM sealed_secrets WHERE name = ?", (HEADERS_SECRET,))
            changed(conn, "secrets")


def settings_for(config: TelemetryConfig, conn: sqlite3.Connection, vault: Vault,
                 env: Mapping[str, str] | None = None) -> Settings | None:
    return resolve(config, os.environ if env is None else env, sealed_headers(conn, vault))


# -- protobuf helpers -----------------------------------------------------------------------


def _value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, tuple | list):
        return AnyValue(array_value=ArrayValue(values=[_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def _attributes(pairs: Iterable[tuple[str, Any]]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_value(v)) for k, v in pairs if v is not None]


# -- spans, encoded by hand -------------------------------------------------------------------
# A span is ~25 attributes, most of them the same from one request to the next (provider,
# models, server, status, key, tags). Writing the protobuf wire format directly lets those be
# encoded once per distinct set and reused; building upb messages costs ~1.5 µs per attribute.
# tests/test_telemetry.py decodes every span with the opentelemetry-proto classes.

_PACK_DOUBLE = struct.Struct("<d").pack
_PACK_FIXED64 = struct.Struct("<Q").pack
_PACK_FIXED32 = struct.Struct("<I").pack
MEMO_SIZE = 4096  # shared span parts and token counts kept (see encode_span)
_TOKEN_ATTRIBUTES = (("gen_ai.usage.input_tokens", "input_tokens"),
                     ("gen_ai.usage.output_tokens", "output_tokens"),
                     ("gen_ai.usage.cache_read.input_tokens", "cache_read_tokens"),
                     ("gen_ai.usage.cache_creation.input_tokens", "cache_write_tokens"),
                     ("gen_ai.usage.reasoning.output_tokens", "reasoning_tokens"))


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (numbers up to 15)."""
    return bytes((number << 3 | 2,)) + _varint(len(payload)) + payload


def _any_value(value: Any) -> bytes:
    """An AnyValue message: string 1, bool 2, int64 3, double 4, array 5."""
    kind = value.__class__
    if kind is str:
        return _field(1, value.encode())
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int:
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if kind is float:
        return b"\x21" + _PACK_DOUBLE(value)
    return _field(5, b"".join(_field(1, _any_value(v)) for v in value))  # ArrayValue


def _attribute(key: str, value: Any) -> bytes:
    """Span field 9: a KeyValue {key 1, value 2}."""
    return _field(9, _field(1, key.encode()) + _field(2, _any_value(value)))


def parse_traceparent(value: bytes | None) -> tuple[bytes, bytes, bool] | None:
    """W3C traceparent -> (trace id, parent span id, sampled), or None when absent or invalid."""
    found = _TRACEPARENT.fullmatch(value.strip()) if value is not None else None
    if found is None or found[1] == b"ff" or (found[1] == b"00" and found[5]):
        return None  # version ff is invalid; version 00 has exactly four fields
    trace, parent = bytes.fromhex(found[2].decode()), bytes.fromhex(found[3].decode())
    if not any(trace) or not any(parent):
        return None
    return trace, parent, bool(int(found[4], 16) & 1)


def error_type(record: Mapping[str, Any]) -> str | None:
    status = record.get("status")
    if isinstance(status, int) and status >= 400:
        return str(status)
    error = record.get("error")
    if not error:
        return None
    for prefix, kind in _ERROR_TYPES:
        if error.startswith(prefix):
            return kind
    return "_OTHER"


def operation(record: Mapping[str, Any]) -> str:
    endpoint = record.get("endpoint") or "other"
    return OPERATIONS.get(endpoint, endpoint)


def provider_name(record: Mapping[str, Any]) -> str:
    provider = record.get("provider") or "unknown"
    return PROVIDER_NAMES.get(provider, provider)


def _cost(record: Mapping[str, Any]) -> float | None:
    try:
        return float(Decimal(record["cost"])) if record.get("cost") is not None else None
    except (InvalidOperation, ValueError):
        return None


# -- metrics --------------------------------------------------------------------------------


class _Histogram:
    __slots__ = ("bounds", "counts", "max", "min", "sum")

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def add(self, value: float) -> None:
        index = 0
        for bound in self.bounds:
            if value <= bound:
                break
            index += 1
        self.counts[index] += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)


_OVERFLOW = (("otel.metric.overflow", True),)


class Aggregates:
    """Cumulative GenAI metrics since this exporter started, with a cap on attribute sets."""

    def __init__(self) -> None:
        self.start_ns = time.time_ns()
        self.tokens: dict[tuple[tuple[str, Any], ...], _Histogram] = {}
        self.duration: dict[tuple[tuple[str, Any], ...], _Histogram] = {}
        self.first_chunk: dict[tuple[tuple[str, Any], ...], _Histogram] = {}
        self.cost: dict[tuple[tuple[str, Any], ...], float] = {}

    @staticmethod
    def _series(table: dict[Any, Any], key: tuple[tuple[str, Any], ...], make: Any) -> Any:
        found = table.get(key)
        if found is None:
            if len(table) >= MAX_SERIES:
                key = _OVERFLOW
                found = table.get(key)
            if found is None:
                found = table[key] = make()
        return found

    def add(self, record: Mapping[str, Any], server: str | None) -> None:
        base = (("gen_ai.operation.name", operation(record)),
                ("gen_ai.provider.name", provider_name(record)),
                ("gen_ai.request.model", record.get("model")),
                ("gen_ai.response.model", record.get("response_model")),
                ("server.address", server))
        base = tuple(p for p in base if p[1] is not None)
        failed = error_type(record)
        key = base + ((("error.type", failed),) if failed else ())
        if record.get("latency_ms") is not None:
            self._series(self.duration, key, lambda: _Histogram(DURATION_BUCKETS)).add(
                record["latency_ms"] / 1000)
        if record.get("ttft_ms") is not None:
            self._series(self.first_chunk, key, lambda: _Histogram(DURATION_BUCKETS)).add(
                record["ttft_ms"] / 1000)
        for kind, field in (("input", "input_tokens"), ("output", "output_tokens")):
            if record.get(field) is not None:
                self._series(self.tokens, (*base, ("gen_ai.token.type", kind)),
                             lambda: _Histogram(TOKEN_BUCKETS)).add(record[field])
        cost = _cost(record)
        if cost is not None:
            series = base if base in self.cost or len(self.cost) < MAX_SERIES else _OVERFLOW
            self.cost[series] = self.cost.get(series, 0.0) + cost

    def encode(self) -> list[Metric]:
        now = time.time_ns()
        metrics = []
        for name, unit, description, table in (
                ("gen_ai.client.token.usage", "{token}", "Tokens used, by gen_ai.token.type",
                 self.tokens),
                ("gen_ai.client.operation.duration", "s", "Duration of GenAI operations",
                 self.duration),
                ("gen_ai.client.operation.time_to_first_chunk", "s",
                 "Time to the first response chunk of streamed operations", self.first_chunk)):
            if not table:
                continue
            points = [HistogramDataPoint(
                attributes=_attributes(key), start_time_unix_nano=self.start_ns,
                time_unix_nano=now, count=sum(h.counts), sum=h.sum, bucket_counts=h.counts,
                explicit_bounds=h.bounds, min=h.min, max=h.max) for key, h in table.items()]
            metrics.append(Metric(name=name, unit=unit, description=description,
                                  histogram=Histogram(
                                      data_points=points,
                                      aggregation_temporality=AGGREGATION_TEMPORALITY_CUMULATIVE)))
        if self.cost:
            points = [NumberDataPoint(attributes=_attributes(key),
                                      start_time_unix_nano=self.start_ns, time_unix_nano=now,
                                      as_double=value) for key, value in self.cost.items()]
            metrics.append(Metric(name="steward.gen_ai.client.cost", unit="USD",
                                  description="Cost of GenAI operations in US dollars, from "
                                  "Steward's price table",
                                  sum=Sum(data_points=points, is_monotonic=True,
                                          aggregation_temporality=(
                                              AGGREGATION_TEMPORALITY_CUMULATIVE))))
        return metrics


# -- the exporter ---------------------------------------------------------------------------


class Telemetry:
    """One per worker process: the hand-off queue, the span buffer and the export tasks."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None):
        self.settings = settings
        self.metrics = metrics
        self.queue: deque[tuple[Any, ...]] = deque(maxlen=settings.queue_size)
        self.capacity = settings.queue_size
        self.spans: deque[bytes] = deque(maxlen=settings.queue_size)  # encoded, not yet sent
        self.aggregates = Aggregates()
        self.dropped = 0  # hand-offs pushed out of the full queue (counted on the hot path)
        self.exported = 0
        self._dropped_reported = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._servers: dict[str, tuple[str | None, int | None]] = {}
        self._memo: dict[tuple[Any, ...], bytes] = {}  # encoded span parts that repeat
        self._counts: dict[tuple[str, int], bytes] = {}
        self._attempt = 0
        self._retry_at = 0.0
        self._outage: tuple[float, int] | None = None  # (since, drops when it began)
        steward_version = steward.__version__.split(" ")[0]  # "unknown (…)" from a bare tree
        given = dict(settings.resource)
        # Each worker is its own instance: cumulative series from two workers never mix.
        resource = {"service.version": steward_version, "service.instance.id": str(uuid.uuid4()),
                    "host.name": socket.gethostname(), **given,
                    "service.name": settings.service_name if settings.service_name != "steward"
                    else given.get("service.name", "steward")}
        self._resource = _field(1, Resource(attributes=_attributes(resource.items()))
                                .SerializeToString())
        self._scope = InstrumentationScope(name="steward", version=steward_version)
        self._scope_field = _field(1, self._scope.SerializeToString())
        self._headers = {**dict(settings.headers), "Content-Type": "application/x-protobuf"}

    # -- the hot path ---------------------------------------------------------------------

    def submit(self, ex: Exchange, record: dict[str, Any]) -> None:
        """The request path's only cost: find the caller's trace context, append one tuple."""
        parent = state = None
        for name, value in ex.headers:
            if name == b"traceparent":
                parent = value
            elif name == b"tracestate":
                state = value
        if len(self.queue) == self.capacity:
            self.dropped += 1  # the append pushes the oldest out
        self.queue.append((record, ex.started_at, ex.reading, ex.upstream, parent, state))

    # -- background -----------------------------------------------------------------------

    def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout))
        self._tasks = [asyncio.create_task(self._collect_loop())]
        if self.settings.traces_url:
            self._tasks.append(asyncio.create_task(self._span_loop()))
        if self.settings.metrics_url:
            self._tasks.append(asyncio.create_task(self._metrics_loop()))

    async def stop(self, flush_timeout: float = 2.0) -> None:
        """Stop the loops, then one last bounded try to send what is pending."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_timeout):
                await self.collect()
                if self.settings.traces_url:
                    while self.spans and await self.export_spans():
                        pass
                if self.settings.metrics_url:
                    await self.export_metrics()
        if self._session is not None:
            await self._session.close()
        self._report()

    async def _collect_loop(self) -> None:
        every = min(self.settings.schedule_delay, 1.0)
        while True:
            await asyncio.sleep(every)
            try:
                await self.collect()
            except Exception:  # a bug here must not end telemetry for the process
                log.exception("telemetry: turning records into spans failed")

    async def _span_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(self.settings.schedule_delay,
                                    self._retry_at - loop.time()))
            while self.spans and loop.time() >= self._retry_at:
                if not await self.export_spans():
                    break
                if len(self.spans) < self.settings.batch_size:
                    break  # a partial batch waits for the next tick

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.metrics_interval)
            await self.export_metrics()

    async def collect(self) -> None:
        """Hand-offs -> metric points and encoded spans, a slice at a time between yields."""
        queue = self.queue
        while queue:
            for _ in range(min(SLICE, len(queue))):
                item = queue.popleft()
                server = self._server(item[3])
                self.aggregates.add(item[0], server[0])
                if self.settings.traces_url:
                    encoded = self.encode_span(item, server)
                    if encoded is not None:
                        if len(self.spans) == self.spans.maxlen:
                            self.dropped += 1
                        self.spans.append(_field(2, encoded))  # framed as ScopeSpans.spans
            await asyncio.sleep(0)
        self._report()

    def _server(self, upstream: Any) -> tuple[str | None, int | None]:
        base = getattr(upstream, "base_url", None)
        if base is None:
            return None, None
        found = self._servers.get(base)
        if found is None:
            parts = urlsplit(base)
            found = self._servers[base] = (parts.hostname, parts.port or (
                443 if parts.scheme == "https" else 80))
        return found

    def encode_span(self, item: tuple[Any, ...],
                    server: tuple[str | None, int | None]) -> bytes | None:
        """One finished request as a serialised Span, or None when not sampled."""
        record, started_at, reading, _, parent, state = item
        request_id = uuid.UUID(record["id"]).bytes
        span_id = request_id[8:]  # random bits of the UUIDv7: stable across retries
        context = parse_traceparent(parent)
        if context is not None:
            trace_id, parent_id, sampled = context
            if not sampled:
                return None
        else:
            trace_id, parent_id = request_id, b""  # the trace id is the request id
            ratio = self.settings.sample_ratio
            if ratio < 1.0 and int.from_bytes(request_id[9:], "big") >= ratio * (1 << 56):
                return None
        op = operation(record)
        model = record.get("model")
        failed = error_type(record)
        start = int(started_at * 1e9)
        end = start + int((record.get("latency_ms") or 0) * 1e6)
        parts = [_field(1, trace_id), _field(2, span_id)]
        if parent_id:
            if state and state.isascii():  # W3C: printable ASCII; a proto string must be UTF-8
                parts.append(_field(3, state[:512]))  # trace_state
            parts.append(_field(4, parent_id))
        parts += [b"\x39" + _PACK_FIXED64(start), b"\x41" + _PACK_FIXED64(max(end, start))]
        # What most requests of one key to one model share: encoded once, then looked up.
        shared = (op, record.get("provider"), model, record.get("response_model"),
                  reading.finish_reasons if reading else (), bool(record.get("stream")),
                  server, record.get("method"), record.get("status"), failed,
                  record.get("api_key_id"), record.get("pricing_version"),
                  tuple(record["tags"].items()))
        memo = self._memo
        encoded = memo.get(shared)
        if encoded is None:
            if len(memo) >= MEMO_SIZE:
                memo.clear()
            encoded = memo[shared] = self._shared_part(record, shared)
        parts.append(encoded)
        parts.append(b"\x85\x01" + _PACK_FIXED32(1 | (  # flags, field 16 (fixed32)
            _REMOTE_PARENT if parent_id else SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK)))
        counts = self._counts  # token counts repeat too
        for key, field in _TOKEN_ATTRIBUTES:
            value = record.get(field)
            if value is not None:
                found = counts.get((key, value))
                if found is None:
                    if len(counts) >= MEMO_SIZE:
                        counts.clear()
                    found = counts[(key, value)] = _attribute(key, value)
                parts.append(found)
        ttft = record.get("ttft_ms")
        for key, value in (
                ("gen_ai.response.time_to_first_chunk", ttft / 1000 if ttft is not None
                 else None),
                ("gen_ai.response.id", reading.response_id if reading else None),
                ("steward.request.id", record["id"]),
                ("steward.cost_usd", _cost(record)),
                ("steward.body.url", record.get("body_ref"))):
            if value is not None:
                parts.append(_attribute(key, value))
        return b"".join(parts)

    @staticmethod
    def _shared_part(record: Mapping[str, Any], shared: tuple[Any, ...]) -> bytes:
        """Name, kind, status and the attributes requests alike have in common."""
        (op, _, model, response_model, reasons, stream, server, method, status, failed, key_id,
         version, tags) = shared
        parts = [_field(5, (f"{op} {model}" if model else op).encode()),
                 b"\x30\x03"]  # kind: SPAN_KIND_CLIENT
        for key, value in (
                ("gen_ai.operation.name", op),
                ("gen_ai.provider.name", provider_name(record)),
                ("gen_ai.request.model", model),
                ("gen_ai.response.model", response_model),
                ("gen_ai.response.finish_reasons", reasons or None),
                ("gen_ai.request.stream", stream),
                ("server.address", server[0]),
                ("server.port", server[1]),
                ("http.request.method", method),
                ("http.response.status_code", status),
                ("error.type", failed),
                ("steward.gateway_key.id", key_id),
                ("steward.pricing.version", version),
                *((f"steward.tag.{name}", value) for name, value in tags)):
            if value is not None:
                parts.append(_attribute(key, value))
        if failed:
            parts.append(_STATUS_ERROR)
        return b"".join(parts)

    def _frame(self, spans: list[bytes]) -> bytes:
        """ExportTraceServiceRequest{ResourceSpans{resource, ScopeSpans{scope, spans…}}}, from
        spans each already framed as a ScopeSpans.spans field."""
        scope_spans = _field(2, self._scope_field + b"".join(spans))
        return _field(1, self._resource + scope_spans)

    async def export_spans(self) -> bool:
        """Send one batch from the span buffer; False when it must wait (backoff)."""
        assert self.settings.traces_url is not None
        batch = [self.spans.popleft() for _ in range(min(self.settings.batch_size,
                                                         len(self.spans)))]
        outcome = await self._post(self.settings.traces_url, self._frame(batch),
                                   ExportTraceServiceResponse, "traces")
        if outcome is None:  # retry later: back into the buffer, as far as it has room
            room = self.spans.maxlen - len(self.spans)  # type: ignore[operator]
            kept = batch[-room:] if room else []
            self.dropped += len(batch) - len(kept)
            self.spans.extendleft(reversed(kept))
            self._report()
            return False
        if outcome is False:  # refused for good (a 400, a wrong token): retrying cannot help
            rejected = len(batch)
        else:
            rejected = outcome.partial_success.rejected_spans if outcome is not True else 0
        self.exported += len(batch) - rejected
        self.dropped += rejected
        if self.metrics is not None:
            self.metrics.telemetry_exported.inc(len(batch) - rejected)
        self._report()
        return True

    async def export_metrics(self) -> None:
        assert self.settings.metrics_url is not None
        metrics = self.aggregates.encode()
        if not metrics:
            return
        scoped = ResourceMetrics(scope_metrics=[ScopeMetrics(scope=self._scope, metrics=metrics)])
        body = _field(1, self._resource + scoped.SerializeToString())  # ExportMetricsService…
        await self._post(self.settings.metrics_url, body, ExportMetricsServiceResponse,
                         "metrics")

    async def _post(self, url: str, body: bytes, response_type: Any, signal: str) -> Any:
        """The decoded response (or True) on success, False when refused for good (the batch
        is dropped), None when worth retrying."""
        assert self._session is not None
        loop = asyncio.get_running_loop()
        retry_after = None
        try:
            async with self._session.post(url, data=body, headers=self._headers) as response:
                content = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            status, content, why = None, b"", f"{exc.__class__.__name__}: {exc}"
        if status is not None and 200 <= status < 300:
            self._recovered()
            self._attempt = 0
            try:
                return response_type.FromString(content) if content else True
            except Exception:  # an odd body still means accepted
                return True
        if status is not None:
            why = f"HTTP {status}"
        if self.metrics is not None:
            self.metrics.telemetry_failures.labels(signal).inc()
        retry = status is None or status in RETRYABLE
        self._failing(url, why, retry)
        if retry:
            self._attempt += 1
            self._retry_at = loop.time() + retry_delay(retry_after, self._attempt,
                                                       MAX_BACKOFF, base=0.5)
            return None
        return False

    def _failing(self, url: str, why: str, retry: bool) -> None:
        """Logged once per outage (and once more when it ends), however many retries."""
        if self._outage is None:
            self._outage = (time.monotonic(), self.dropped)
            then = (f"spans wait in a queue of {self.settings.queue_size}, the oldest dropped "
                    "when it is full; retrying with backoff" if retry else
                    "it refuses them for good, so they are dropped (check the endpoint and "
                    "headers: `steward telemetry show`)")
            log.warning("telemetry: the OTLP collector at %s is failing (%s): %s; drops are "
                        "counted in steward_telemetry_spans_dropped_total", url, why, then)

    def _recovered(self) -> None:
        if self._outage is not None:
            since, dropped = self._outage
            self._outage = None
            log.info("telemetry: the OTLP collector accepts exports again after %.1fs; %d "
                        "spans were dropped meanwhile", time.monotonic() - since,
                        self.dropped - dropped)

    def _report(self) -> None:
        """Drops so far into /metrics (the hot path only counts them in an int)."""
        if self.metrics is not None and self.dropped > self._dropped_reported:
            self.metrics.telemetry_dropped.inc(self.dropped - self._dropped_reported)
            self._dropped_reported = self.dropped
