"""OpenTelemetry export against the real daemon: a loopback OTLP/HTTP collector decodes what
Steward sends with opentelemetry-proto and every span attribute is checked against the request's
metadata record and the fake upstream's documented answers.

The export intervals come from the standard OTEL_BSP_SCHEDULE_DELAY and
OTEL_METRIC_EXPORT_INTERVAL, and STEWARD_TELEMETRY_MAX_BACKOFF shortens the retry backoff, so an
outage and its recovery take a few seconds here instead of the default 30 s of backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import steward
from steward import db
from steward.config import TelemetryConfig, effective_dict, load_config, set_value
from steward.daemon.telemetry import Telemetry, resolve, store_headers
from steward.errors import ConfigError
from steward.home import DB_FILE
from steward.providers import FORMATS
from steward.providers.base import Route
from steward.secrets import master_key
from tests.support.daemon import Daemon, cli, init_home, provider_env
from tests.support.fake_upstream import (
    ANTHROPIC_USAGE,
    CHAT_USAGE,
    GEMINI_USAGE,
    TEXT_PIECES,
    FakeUpstream,
)
from tests.support.otlp import OTLPCollector, attributes
from tests.support.waiting import wait_for

PROMPT = "Tell me the secret plan zebra-4417 in one line"  # must never leave in telemetry
OTLP_TOKEN = "Bearer otlp-token-9931"
FAST = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "STEWARD_TELEMETRY_MAX_BACKOFF": "0.3"}
CREDENTIALS = {"Authorization": "Bearer sk-test-caller", "x-api-key": "sk-ant-caller",
               "x-goog-api-key": "g-caller"}

# Each case: path, JSON body, and what the fake upstream answers (ids, finish reasons, usage).
CASES: dict[str, dict[str, Any]] = {
    "openai": {"path": "/v1/chat/completions", "provider": "openai", "operation": "chat",
               "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]},
               "response_model": "gpt-4o-2024-08-06", "response_id": "chatcmpl-fake",
               "finish": ("stop",), "input": CHAT_USAGE["prompt_tokens"],
               "output": CHAT_USAGE["completion_tokens"], "cache_read": 5, "cache_creation": 0,
               "reasoning": 4},
    "anthropic": {"path": "/v1/messages", "provider": "anthropic", "operation": "chat",
                  "body": {"model": "claude-sonnet-4-5", "max_tokens": 64,
                           "messages": [{"role": "user", "content": PROMPT}]},
                  "response_model": "claude-sonnet-4-5-2024-08-06", "response_id": "msg_fake",
                  "finish": ("end_turn",),
                  "input": ANTHROPIC_USAGE["input_tokens"] + 200 + 300,  # with cache reads/writes
                  "output": ANTHROPIC_USAGE["output_tokens"], "cache_read": 200,
                  "cache_creation": 300, "reasoning": None},
    "gemini": {"path": "/v1beta/models/gemini-2.5-flash:generateContent",
               "provider": "gcp.gemini", "operation": "generate_content",
               "body": {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
               "model": "gemini-2.5-flash", "response_model": "gemini-2.5-flash",
               "response_id": "fake", "finish": ("STOP",),
               "input": GEMINI_USAGE["promptTokenCount"],
               "output": GEMINI_USAGE["candidatesTokenCount"] + GEMINI_USAGE["thoughtsTokenCount"],
               "cache_read": 10, "cache_creation": 0, "reasoning": 15},
}


def request(case: str, stream: bool) -> tuple[str, dict[str, Any]]:
    spec = CASES[case]
    body = dict(spec["body"])
    path = spec["path"]
    if stream and case == "gemini":
        path = path.replace(":generateContent", ":streamGenerateContent") + "?alt=sse"
    elif stream:
        body["stream"] = True
        if case == "openai":
            body["stream_options"] = {"include_usage": True}
    return path, body


def traceparent() -> tuple[str, bytes, bytes]:
    trace, parent = os.urandom(16), os.urandom(8)
    return f"00-{trace.hex()}-{parent.hex()}-01", trace, parent


def send(daemon: Daemon, key: str, path: str, body: dict[str, Any], tag: str,
         extra: dict[str, str] | None = None) -> httpx.Response:
    headers = {"X-Majordomo-Key": key, "X-Majordomo-Test": tag, "X-Majordomo-Team": "search",
               **CREDENTIALS, **(extra or {})}
    response = httpx.post(daemon.url + path, json=body, headers=headers, timeout=30)
    response.read()
    return response


@pytest.fixture(scope="module")
def collector() -> Iterator[OTLPCollector]:
    receiver = OTLPCollector().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def otel(upstream: FakeUpstream, collector: OTLPCollector,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, str]]:
    """A daemon exporting to the loopback collector: the endpoint from the standard variable,
    a token header sealed by `steward telemetry set` (value on standard input, as when piped)."""
    home = tmp_path_factory.mktemp("otel-home")
    key = init_home(home)
    cli("telemetry", "set", "--header", "Authorization", home=home, input=OTLP_TOKEN + "\n")
    env = {**provider_env(upstream.url), **FAST,
           "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url, "OTEL_SERVICE_NAME": "steward-under-test"}
    daemon = Daemon(home, env=env).start()
    yield daemon, key
    daemon.stop()


@pytest.fixture(scope="module")
def exercised(otel: tuple[Daemon, str], collector: OTLPCollector) -> tuple[Daemon, str]:
    """One request per provider, streamed and not, exported: for the tests of the whole export
    (they hold whichever test order pytest picks)."""
    daemon, key = otel
    tags = []
    for case in CASES:
        for stream in (False, True):
            tags.append(uuid.uuid4().hex)
            send(daemon, key, *request(case, stream), tags[-1])
    wait_for(lambda: all(collector.span_tagged("test", t) for t in tags), what="their spans")
    return otel


def _ts(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", list(CASES))
def test_one_span_per_request_with_genai_attributes(
        otel: tuple[Daemon, str], collector: OTLPCollector, upstream: FakeUpstream, case: str,
        stream: bool) -> None:
    daemon, key = otel
    tag = uuid.uuid4().hex
    parent_header, trace_id, parent_id = traceparent()
    path, body = request(case, stream)
    response = send(daemon, key, path, body, tag, {"traceparent": parent_header,
                                                   "tracestate": "vendor=abc"})
    assert response.status_code == 200
    record = daemon.record_tagged("test", tag)
    span = wait_for(lambda: collector.span_tagged("test", tag), what=f"the span of {case}")
    spec = CASES[case]
    got = attributes(span)
    model = spec.get("model", body.get("model"))

    # The caller's trace: parent and state from its headers, which went upstream unchanged.
    assert span.trace_id == trace_id and span.parent_span_id == parent_id
    assert span.trace_state == "vendor=abc"
    assert span.span_id == uuid.UUID(record["id"]).bytes[8:]
    assert any(seen.headers.get("traceparent") == parent_header
               and seen.headers.get("tracestate") == "vendor=abc" for seen in upstream.requests)
    assert span.kind == Span.SPAN_KIND_CLIENT
    assert span.name == f"{spec['operation']} {model}"
    assert abs(span.start_time_unix_nano / 1e9 - _ts(record)) < 0.002
    assert abs((span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
               - record["latency_ms"]) < 0.01
    assert span.status.code == Status.STATUS_CODE_UNSET

    expected = {
        "gen_ai.operation.name": spec["operation"],
        "gen_ai.provider.name": spec["provider"],
        "gen_ai.request.model": model,
        "gen_ai.response.model": spec["response_model"],
        "gen_ai.response.id": spec["response_id"],
        "gen_ai.response.finish_reasons": spec["finish"],
        "gen_ai.request.stream": stream,
        "gen_ai.usage.input_tokens": spec["input"],
        "gen_ai.usage.output_tokens": spec["output"],
        "gen_ai.usage.cache_read.input_tokens": spec["cache_read"],
        "gen_ai.usage.cache_creation.input_tokens": spec["cache_creation"],
        "gen_ai.usage.reasoning.output_tokens": spec["reasoning"],
        "gen_ai.response.time_to_first_chunk": record["ttft_ms"] / 1000 if stream else None,
        "server.address": "127.0.0.1",
        "server.port": upstream.port,
        "http.request.method": "POST",
        "http.response.status_code": 200,
        "steward.request.id": response.headers["X-Majordomo-Request-Id"],
        "steward.gateway_key.id": record["api_key_id"],
        "steward.cost_usd": float(record["cost"]) if record["cost"] is not None else None,
        "steward.pricing.version": record["pricing_version"],
        "steward.body.url": record["body_ref"],
        "steward.tag.test": tag,
        "steward.tag.team": "search",
    }
    assert got == {k: v for k, v in expected.items() if v is not None}
    # The record agrees: the span tells the same truth.
    assert (record["input_tokens"], record["output_tokens"]) == (spec["input"], spec["output"])
    assert record["id"] == got["steward.request.id"] and record["body_ref"].startswith("file://")
    resource = next(r for r, s in collector.spans() if s.span_id == span.span_id)
    assert resource["service.name"] == "steward-under-test"
    assert resource["service.version"] == steward.__version__ and resource["service.instance.id"]
    assert collector.exports[-1].headers["Authorization"] == OTLP_TOKEN  # the sealed header


def test_a_request_without_valid_trace_context_starts_a_trace_named_by_its_request_id(
        otel: tuple[Daemon, str], collector: OTLPCollector) -> None:
    daemon, key = otel
    tag = uuid.uuid4().hex
    response = send(daemon, key, "/v1/chat/completions", CASES["openai"]["body"], tag,
                    {"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"})
    span = wait_for(lambda: collector.span_tagged("test", tag), what="the span")
    request_id = uuid.UUID(response.headers["X-Majordomo-Request-Id"])
    assert span.trace_id == request_id.bytes and span.parent_span_id == b""
    assert attributes(span)["steward.cost_usd"] > 0  # gpt-4o is in the shipped price table


def test_an_unsampled_caller_trace_exports_no_span(otel: tuple[Daemon, str],
                                                   collector: OTLPCollector) -> None:
    daemon, key = otel
    quiet, after = uuid.uuid4().hex, uuid.uuid4().hex
    header, _, _ = traceparent()
    send(daemon, key, "/v1/chat/completions", CASES["openai"]["body"], quiet,
         {"traceparent": header[:-2] + "00"})
    send(daemon, key, "/v1/chat/completions", CASES["openai"]["body"], after)
    wait_for(lambda: collector.span_tagged("test", after), what="the later span")
    assert collector.span_tagged("test", quiet) is None


def test_an_upstream_error_is_an_error_span(otel: tuple[Daemon, str],
                                            collector: OTLPCollector) -> None:
    daemon, key = otel
    tag = uuid.uuid4().hex
    response = send(daemon, key, "/v1/messages", CASES["anthropic"]["body"], tag,
                    {"x-fake-behavior": "status:429"})
    assert response.status_code == 429
    span = wait_for(lambda: collector.span_tagged("test", tag), what="the error span")
    got = attributes(span)
    assert span.status.code == Status.STATUS_CODE_ERROR
    assert got["error.type"] == "429" and got["http.response.status_code"] == 429
    assert "gen_ai.usage.input_tokens" not in got


def _points(metric: Any) -> list[Any]:
    return list(metric.histogram.data_points or metric.sum.data_points)


BOUNDED = {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
           "gen_ai.response.model", "server.address", "error.type", "gen_ai.token.type"}


def test_metrics_sum_every_record(exercised: tuple[Daemon, str], collector: OTLPCollector) -> None:
    """Cumulative token usage, durations and cost agree with the records, by bounded keys."""
    daemon, _ = exercised
    providers = {"openai": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini"}

    def summed() -> dict[tuple[str, str], float] | None:
        metrics = collector.last_metrics()
        if "gen_ai.client.token.usage" not in metrics:
            return None
        sums: dict[tuple[str, str], float] = {}
        for point in _points(metrics["gen_ai.client.token.usage"]):
            labels = attributes(point)
            key = (labels["gen_ai.provider.name"], labels["gen_ai.token.type"])
            sums[key] = sums.get(key, 0) + point.sum
        return sums

    want: dict[tuple[str, str], float] = {}
    for record in daemon.records():
        for kind in ("input", "output"):
            if record[f"{kind}_tokens"] is not None:
                key = (providers[record["provider"]], kind)
                want[key] = want.get(key, 0) + record[f"{kind}_tokens"]
    wait_for(lambda: summed() == want, what=f"token usage sums {want}, got {summed()}")
    metrics = collector.last_metrics()
    durations = _points(metrics["gen_ai.client.operation.duration"])
    assert sum(p.count for p in durations) == len(daemon.records())
    assert metrics["gen_ai.client.operation.duration"].unit == "s"
    assert metrics["gen_ai.client.token.usage"].unit == "{token}"
    cost = sum(p.as_double for p in _points(metrics["steward.gen_ai.client.cost"]))
    assert cost == pytest.approx(sum(float(r["cost"]) for r in daemon.records() if r["cost"]))
    for metric in metrics.values():
        for point in _points(metric):
            assert set(attributes(point)) <= BOUNDED, attributes(point)


def test_no_prompt_completion_or_credential_in_any_exported_byte(
        exercised: tuple[Daemon, str], collector: OTLPCollector) -> None:
    _, key = exercised
    raw = collector.raw()
    assert collector.trace_requests() and collector.metric_requests()
    assert b"gen_ai.usage.input_tokens" in raw and b"steward.tag.test" in raw  # bytes searched
    for secret in (PROMPT, "zebra-4417", "".join(TEXT_PIECES), TEXT_PIECES[0], key,
                   "sk-test-caller", "sk-ant-caller", "g-caller", "otlp-token"):
        assert secret.encode() not in raw, secret


def test_attribute_names_are_the_semantic_conventions(exercised: tuple[Daemon, str],
                                                      collector: OTLPCollector) -> None:
    """Checked against the conventions package: a rename upstream fails here."""
    gen_ai = pytest.importorskip("opentelemetry.semconv._incubating.attributes.gen_ai_attributes")
    gen_ai_metrics = pytest.importorskip("opentelemetry.semconv._incubating.metrics.gen_ai_metrics")
    from opentelemetry.semconv.attributes import (
        error_attributes,
        http_attributes,
        server_attributes,
    )

    names: set[str] = set()
    for _, span in collector.spans():
        names |= set(attributes(span))
    for constant in ("GEN_AI_PROVIDER_NAME", "GEN_AI_OPERATION_NAME", "GEN_AI_REQUEST_MODEL",
                     "GEN_AI_RESPONSE_MODEL", "GEN_AI_RESPONSE_ID",
                     "GEN_AI_RESPONSE_FINISH_REASONS", "GEN_AI_REQUEST_STREAM",
                     "GEN_AI_USAGE_INPUT_TOKENS", "GEN_AI_USAGE_OUTPUT_TOKENS",
                     "GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS",
                     "GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS",
                     "GEN_AI_USAGE_REASONING_OUTPUT_TOKENS",
                     "GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK"):
        assert getattr(gen_ai, constant) in names, constant
    for name in (server_attributes.SERVER_ADDRESS, server_attributes.SERVER_PORT,
                 http_attributes.HTTP_RESPONSE_STATUS_CODE, error_attributes.ERROR_TYPE):
        assert name in names, name
    values = {attributes(s)["gen_ai.provider.name"] for _, s in collector.spans()}
    assert {gen_ai.GenAiProviderNameValues.OPENAI.value,
            gen_ai.GenAiProviderNameValues.ANTHROPIC.value,
            gen_ai.GenAiProviderNameValues.GCP_GEMINI.value} <= values
    operations = {attributes(s)["gen_ai.operation.name"] for _, s in collector.spans()}
    assert {gen_ai.GenAiOperationNameValues.CHAT.value,
            gen_ai.GenAiOperationNameValues.GENERATE_CONTENT.value} <= operations
    metrics = collector.last_metrics()
    assert gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE in metrics
    assert gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION in metrics
    assert gen_ai_metrics.GEN_AI_CLIENT_OPERATION_TIME_TO_FIRST_CHUNK in metrics
    types = {attributes(p)[gen_ai.GEN_AI_TOKEN_TYPE]
             for p in _points(metrics[gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE])}
    assert types == {gen_ai.GenAiTokenTypeValues.INPUT.value,
                     gen_ai.GenAiTokenTypeValues.OUTPUT.value}


def _dropped(daemon: Daemon) -> float:
    text = httpx.get(daemon.admin_url + "/metrics", timeout=10).text
    found = re.search(r"^steward_telemetry_spans_dropped_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_collector_outage_drops_the_oldest_counts_them_and_recovers(
        upstream: FakeUpstream, tmp_path: Path) -> None:
    """Down: requests go on untouched, the queue (4 here) keeps the newest spans, the rest are
    counted and the outage is logged once. Up again: the kept spans and new ones arrive. Then a
    SIGHUP moves export to another collector with the new header."""
    first = OTLPCollector().start()
    home = tmp_path / "home"
    key = init_home(home)
    env = {**provider_env(upstream.url), **FAST, "OTEL_BSP_MAX_QUEUE_SIZE": "4",
           "OTEL_EXPORTER_OTLP_ENDPOINT": first.url}  # until steward.toml names one
    daemon = Daemon(home, env=env).start()
    second = OTLPCollector()
    try:
        body = CASES["openai"]["body"]
        tag = uuid.uuid4().hex
        send(daemon, key, "/v1/chat/completions", body, tag)
        wait_for(lambda: first.span_tagged("test", tag), what="the first span")
        port = first.port
        first.stop()
        during = [uuid.uuid4().hex for _ in range(10)]
        for tag in during:
            started = time.monotonic()
            assert send(daemon, key, "/v1/chat/completions", body, tag).status_code == 200
            assert time.monotonic() - started < 2.0
        wait_for(lambda: _dropped(daemon) == 6, what="six spans counted as dropped")
        back = OTLPCollector(port=port).start()
        try:
            wait_for(lambda: all(back.span_tagged("test", t) for t in during[-4:]),
                     what="the four newest spans kept through the outage")
            assert not any(back.span_tagged("test", t) for t in during[:6])
            after = uuid.uuid4().hex
            send(daemon, key, "/v1/chat/completions", body, after)
            wait_for(lambda: back.span_tagged("test", after), what="a span after recovery")
            log = daemon.log()
            assert log.count("OTLP collector at") == 1, log
            assert "accepts exports again" in log and "6 spans were dropped" in log
            assert _dropped(daemon) == 6
            assert all(r["status"] == 200 for r in daemon.records())

            second.start()  # what `steward telemetry set --endpoint … --header x-probe=42` does
            set_value(home, "telemetry.otlp_endpoint", second.url)
            with contextlib.closing(db.connect(home / DB_FILE)) as conn:
                store_headers(conn, master_key.open_vault(home, conn)[0], {"x-probe": "42"})
            assert daemon.process is not None
            daemon.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "configuration, keys and prices reloaded" in daemon.log(),
                     what="the reload")
            moved = uuid.uuid4().hex
            send(daemon, key, "/v1/chat/completions", body, moved)
            wait_for(lambda: second.span_tagged("test", moved), what="a span at the new endpoint")
            assert second.exports[-1].headers["x-probe"] == "42"
            assert back.span_tagged("test", moved) is None
        finally:
            back.stop()
    finally:
        second.stop()
        first.stop()
        daemon.stop()


def test_refused_and_partly_rejected_batches_are_counted_not_retried() -> None:
    """A 400 (or a wrong token) cannot get better by retrying: the batch is dropped and
    counted; spans a 200 reports as rejected count too. In-process, against a real socket."""
    receiver = OTLPCollector(status=400).start()
    settings = resolve(TelemetryConfig(otlp_endpoint=receiver.url), {})
    assert settings is not None
    exporter = Telemetry(settings)
    upstream = SimpleNamespace(base_url="https://api.openai.com/v1")

    def hand_off(count: int) -> None:
        for _ in range(count):
            record = {"id": str(uuid.uuid4()), "provider": "openai", "endpoint": "chat/completions",
                      "model": "gpt-4o", "status": 200, "latency_ms": 5.0, "tags": {}}
            exporter.submit(SimpleNamespace(headers=[], started_at=time.time(), reading=None,
                                            upstream=upstream), record)  # type: ignore[arg-type]

    async def run() -> None:
        exporter.start()
        try:
            hand_off(3)
            await exporter.collect()
            assert await exporter.export_spans()  # refused for good: not kept for a retry
            assert (exporter.dropped, len(exporter.spans)) == (3, 0)
            receiver.status, receiver.rejected_spans = 200, 1
            hand_off(2)
            await exporter.collect()
            assert await exporter.export_spans()
            assert (exporter.dropped, exporter.exported) == (4, 1)
        finally:
            await exporter.stop()

    try:
        asyncio.run(run())
    finally:
        receiver.stop()
    assert [e.path for e in receiver.exports].count("/v1/traces") == 2


def test_sample_ratio_decides_new_traces_and_the_caller_decides_its_own() -> None:
    def spans(ratio: float, parent: bytes | None) -> int:
        settings = resolve(TelemetryConfig(otlp_endpoint="http://127.0.0.1:9",
                                           sample_ratio=ratio), {})
        assert settings is not None
        exporter = Telemetry(settings)
        record = {"id": "", "endpoint": "chat/completions", "status": 200, "tags": {}}
        return sum(exporter.encode_span(({**record, "id": str(uuid.uuid4())}, 0.0, None, None,
                                         parent, None), (None, None)) is not None
                   for _ in range(400))

    sampled = traceparent()[0].encode()
    assert spans(0.0, None) == 0 and spans(1.0, None) == 400
    assert 120 < spans(0.5, None) < 280  # binomial(400, 0.5): outside is ~1e-16
    assert spans(0.0, sampled) == 400 and spans(1.0, sampled[:-2] + b"00") == 0


def test_settings_from_config_and_standard_variables() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
           "OTEL_EXPORTER_OTLP_HEADERS": "x-team=search,authorization=Bearer%20env",
           "OTEL_SERVICE_NAME": "gateway", "OTEL_BSP_SCHEDULE_DELAY": "250"}
    settings = resolve(TelemetryConfig(), env)
    assert settings is not None
    assert settings.traces_url == "http://collector:4318/v1/traces"
    assert settings.metrics_url == "http://collector:4318/v1/metrics"
    assert dict(settings.headers) == {"authorization": "Bearer env", "x-team": "search"}
    assert settings.service_name == "gateway" and settings.schedule_delay == 0.25
    # [telemetry] wins over the variables; sealed headers win over both.
    own = resolve(TelemetryConfig(otlp_endpoint="https://otel.example:4318",
                                  otlp_headers="x-team=infra", service_name="edge",
                                  sample_ratio=0.5), env, {"Authorization": "Bearer sealed"})
    assert own is not None and own.traces_url == "https://otel.example:4318/v1/traces"
    assert dict(own.headers) == {"Authorization": "Bearer sealed", "x-team": "infra"}
    assert (own.service_name, own.sample_ratio) == ("edge", 0.5)
    assert resolve(TelemetryConfig(), {}) is None  # no endpoint: off
    assert resolve(TelemetryConfig(), {**env, "OTEL_SDK_DISABLED": "true"}) is None
    with pytest.raises(ConfigError, match="http/protobuf"):
        resolve(TelemetryConfig(), {**env, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


def test_header_values_are_sealed_and_never_shown(otel: tuple[Daemon, str]) -> None:
    """The fixture's `telemetry set --header Authorization` read the value from standard input;
    it is stored encrypted: neither the file nor `telemetry show` holds it."""
    home = otel[0].home
    shown = cli("telemetry", "show", "--json", env={"OTEL_EXPORTER_OTLP_ENDPOINT":
                                                    "http://127.0.0.1:4318"}, home=home).stdout
    for text in (shown, (home / "steward.toml").read_text()):
        assert "otlp-token" not in text
    assert '"Authorization": "******** (encrypted)"' in shown
    plain = load_config(home, {"STEWARD_TELEMETRY__OTLP_HEADERS": "x-api-token=abc"})
    assert effective_dict(plain)["telemetry"]["otlp_headers"] == "********"  # `config show`


def test_meters_read_response_ids_and_finish_reasons_from_compact_streams() -> None:
    """OpenAI sends compact JSON (no spaces): the finish reason must still be found."""
    meter = FORMATS["openai"].meter(Route("chat/completions", "/chat/completions"), 200,
                                    "text/event-stream")
    meter.feed(b'data: {"id":"chatcmpl-9","model":"gpt-4o","choices":[{"index":0,"delta":'
               b'{"content":"x"},"finish_reason":null}]}\n\n'
               b'data: {"id":"chatcmpl-9","choices":[{"index":0,"delta":{},'
               b'"finish_reason":"length"}]}\n\ndata: [DONE]\n\n')
    reading = meter.finish()
    assert (reading.response_id, reading.finish_reasons) == ("chatcmpl-9", ("length",))
