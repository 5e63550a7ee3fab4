"""What OpenTelemetry export costs per request, measured without a network.

- hand-off: `Telemetry.submit`, the only part on the request path;
- background: metric aggregation plus one span encoded (opentelemetry-proto), amortised;
- sdk (when opentelemetry-sdk is importable): the same span through the SDK's tracer and its
  OTLP encoder, for the choice between the two.

Run: .venv/bin/python bench/telemetry_cost.py
"""

from __future__ import annotations

import sys
import time
import timeit
import uuid
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steward.daemon.telemetry import Settings, Telemetry, _field
from steward.providers.usage import Reading

N = 2048  # one full queue (OTEL_BSP_MAX_QUEUE_SIZE's default)
REPEAT = 5  # best of
CPU = time.process_time  # CPU time, not wall time: the machine may be busy with other work
RECORD = {"id": "", "ts": "2026-11-28T12:00:00.000Z", "api_key_id": "key_abc",
          "provider": "openai", "format": "openai", "endpoint": "chat/completions",
          "method": "POST", "path": "/v1/chat/completions", "model": "gpt-4o",
          "response_model": "gpt-4o-2024-08-06", "stream": True, "status": 200,
          "input_tokens": 25, "output_tokens": 12, "cache_read_tokens": 5,
          "cache_write_tokens": 0, "reasoning_tokens": 4, "latency_ms": 812.5, "ttft_ms": 120.1,
          "tags": {"team": "search", "feature": "autocomplete"}, "error": None,
          "body_ref": "s3://bucket/steward/2026/11/28/key_abc/x.json.gz", "cost": "0.000183",
          "pricing_version": "2026-11-20"}
HEADERS = [(b"host", b"127.0.0.1:7680"), (b"content-type", b"application/json"),
           (b"authorization", b"Bearer sk-xxx"), (b"x-majordomo-key", b"mdm_sk_xxx"),
           (b"x-majordomo-team", b"search"), (b"user-agent", b"OpenAI/Python 3.57.0"),
           (b"accept", b"application/json"), (b"content-length", b"120"),
           (b"traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
           (b"tracestate", b"vendor=abc")]


def main() -> None:
    settings = Settings(traces_url="http://127.0.0.1:1/v1/traces",
                        metrics_url="http://127.0.0.1:1/v1/metrics", headers=(),
                        service_name="steward", sample_ratio=1.0, queue_size=N + 10)
    telemetry = Telemetry(settings)
    upstream = SimpleNamespace(base_url="https://api.openai.com/v1")
    reading = Reading(response_id="chatcmpl-1", finish_reasons=("stop",))
    records = [{**RECORD, "id": str(uuid.uuid4())} for _ in range(N)]
    exchanges = [SimpleNamespace(headers=HEADERS, started_at=1.8e9, reading=reading,
                                 upstream=upstream) for _ in range(N)]
    pairs = iter(zip(exchanges, records, strict=True))

    def hand_off() -> None:
        ex, record = next(pairs)
        telemetry.submit(ex, record)  # type: ignore[arg-type]

    took = timeit.timeit(hand_off, number=N, timer=CPU)  # into an empty queue, as in steady state
    print(f"hand-off (request path): {took / N * 1e6:.2f} µs per request")

    items = list(telemetry.queue)
    server = ("api.openai.com", 443)

    def background() -> None:
        for item in items:
            telemetry.aggregates.add(item[0], server[0])
            telemetry.encode_span(item, server)

    took = min(timeit.repeat(background, number=1, repeat=REPEAT, timer=CPU))
    print(f"background (metrics + span encoded): {took / N * 1e6:.2f} µs per request")
    span = telemetry.encode_span(items[0], server)
    assert span is not None
    framed = _field(2, span)  # as collect() buffers it
    frame = timeit.timeit(lambda: telemetry._frame([framed] * 512), number=20, timer=CPU) / 20
    print(f"batch framing: {frame / 512 * 1e6:.2f} µs per span")
    sdk(items, server)


def sdk(items: list[tuple[object, ...]], server: tuple[str, int]) -> None:
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
    except ImportError:
        print("sdk: opentelemetry-sdk not installed, not compared")
        return

    kept: list[object] = []

    class Keep(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            kept.extend(spans)
            return None

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("steward")

    def build() -> None:
        for item in items:
            record = item[0]
            attributes = {k: v for k, v in (
                ("gen_ai.operation.name", "chat"), ("gen_ai.provider.name", "openai"),
                ("gen_ai.request.model", record["model"]),
                ("gen_ai.response.model", record["response_model"]),
                ("gen_ai.response.id", "chatcmpl-1"), ("gen_ai.response.finish_reasons",
                                                        ("stop",)),
                ("gen_ai.request.stream", True),
                ("gen_ai.usage.input_tokens", record["input_tokens"]),
                ("gen_ai.usage.output_tokens", record["output_tokens"]),
                ("gen_ai.usage.cache_read.input_tokens", 5),
                ("gen_ai.usage.cache_creation.input_tokens", 0),
                ("gen_ai.usage.reasoning.output_tokens", 4),
                ("gen_ai.response.time_to_first_chunk", 0.12),
                ("server.address", server[0]), ("server.port", server[1]),
                ("http.request.method", "POST"), ("http.response.status_code", 200),
                ("steward.request.id", record["id"]), ("steward.gateway_key.id", "key_abc"),
                ("steward.cost_usd", 0.000183), ("steward.pricing.version", "2026-11-20"),
                ("steward.body.url", record["body_ref"]), ("steward.tag.team", "search"),
                ("steward.tag.feature", "autocomplete"))}
            span = tracer.start_span("chat gpt-4o", kind=trace.SpanKind.CLIENT,
                                     start_time=1_800_000_000_000_000_000,
                                     attributes=attributes)
            span.end(end_time=1_800_000_000_812_000_000)

    n = len(items)
    took = min(timeit.repeat(build, number=1, repeat=REPEAT, timer=CPU))
    print(f"sdk: span objects through a processor: {took / n * 1e6:.2f} µs per request")
    del kept[n:]
    took = min(timeit.repeat(lambda: encode_spans(kept).SerializeToString(), number=1,
                             repeat=REPEAT, timer=CPU))
    print(f"sdk: OTLP encoding of those spans: {took / n * 1e6:.2f} µs per request")


if __name__ == "__main__":
    main()
