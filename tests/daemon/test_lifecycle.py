"""The daemon as systemd runs it: readiness, watchdog, status, drain, reload, metrics."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.daemon import Daemon, cli, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.streaming import stream_in_background
from tests.support.waiting import wait_for

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
def daemon(fresh_home: tuple[Path, str], upstream: FakeUpstream):
    home, key = fresh_home
    env = {**provider_env(upstream.url), "WATCHDOG_USEC": "400000"}  # watchdog every 0.2 s
    started = Daemon(home, env=env).start()
    yield started, key
    started.stop()


def test_ready_watchdog_status_and_stopping(daemon: tuple[Daemon, str]) -> None:
    running, key = daemon
    assert any("READY=1" in n for n in running.notifications)
    assert running.wait_for_notification("WATCHDOG=1", 5)
    httpx.post(running.url + "/v1/chat/completions", json={"model": "gpt-4o"},
               headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk"})
    assert running.wait_for_notification("1 requests", 5)
    status = [n for n in running.notifications if n.startswith("STATUS=")][-1]
    assert "bodies queued" in status and "spool backlog" in status
    assert running.stop() == 0
    assert any("STOPPING=1" in n for n in running.notifications)


def test_sigterm_during_a_long_stream_finishes_it(daemon: tuple[Daemon, str]) -> None:
    running, key = daemon
    stream = stream_in_background(running.url, key, 0.4)
    wait_for(lambda: len(stream.chunks) >= 2, 10, "the stream to start")
    assert running.process is not None
    running.process.send_signal(signal.SIGTERM)
    stream.join()
    assert stream.complete  # the stream completed after SIGTERM
    assert running.process.wait(30) == 0
    record = running.records()[-1]
    assert record["stream"] and record["input_tokens"] == 25 and record["error"] is None
    body = Path(record["body_ref"].removeprefix("file://"))
    assert body.exists()  # flushed before exit
    with pytest.raises(httpx.ConnectError):
        httpx.get(running.url + "/v1/models")  # no longer accepting


def test_second_sigterm_exits_at_once(daemon: tuple[Daemon, str],
                                      upstream: FakeUpstream) -> None:
    running, key = daemon
    def in_flight() -> None:
        with contextlib.suppress(httpx.HTTPError):  # cut off by the immediate exit
            httpx.post(running.url + "/v1/chat/completions", timeout=60,
                       json={"model": "gpt-4o", "stream": True},
                       headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk",
                                "x-fake-behavior": "delay:20"})

    stalled = threading.Thread(target=in_flight)
    stalled.start()
    wait_for(lambda: any(r.headers.get("x-fake-behavior") == "delay:20"
                         for r in upstream.requests), 10, "the request to reach the upstream")
    assert running.process is not None
    started = time.monotonic()
    running.process.send_signal(signal.SIGTERM)
    # A second signal sent before the first is handled would merge with it in the kernel.
    wait_for(lambda: "draining in-flight" in running.log(), 5, "the first SIGTERM")
    running.process.send_signal(signal.SIGTERM)
    assert running.process.wait(10) == 1
    assert time.monotonic() - started < 5
    stalled.join(30)


def test_sighup_reloads_keys_prices_and_providers(fresh_home: tuple[Path, str],
                                                 upstream: FakeUpstream) -> None:
    home, first_key = fresh_home
    # The 2 s poll would pick keys and prices up by itself: here only the SIGHUP can.
    running = Daemon(home, env={**provider_env(upstream.url),
                                "STEWARD_KEY_REFRESH_SECONDS": "3600"}).start()
    try:
        added = json.loads(cli("keys", "add", "after-hup", "--json", home=home).stdout)
        cli("pricing", "set", "gpt-4o-2024-08-06", "--input", "1", "--output", "1", home=home)
        cli("config", "set", "providers.other.base_url", upstream.url + "/other/v1",
            home=home)
        headers = {"X-Majordomo-Key": added["key"], "Authorization": "Bearer sk",
                   "X-Majordomo-Provider": "other"}
        before = httpx.post(running.url + "/v1/chat/completions", json={"model": "gpt-4o"},
                            headers={**headers, "X-Majordomo-Provider": "openai"})
        assert before.status_code == 401  # the key is not known until the reload
        unknown = httpx.post(running.url + "/v1/chat/completions", json={"model": "gpt-4o"},
                             headers={**headers, "X-Majordomo-Key": first_key})
        assert unknown.status_code == 400  # nor is the provider
        assert running.process is not None
        running.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reloaded" in running.log(), 10, "the reload")
        got = httpx.post(running.url + "/v1/chat/completions", json={"model": "gpt-4o"},
                         headers=headers)
        assert got.status_code == 200 and upstream.last().path == "/other/v1/chat/completions"
        record = running.records()[-1]
        assert record["cost"] == "0.000037" and record["pricing_status"] == "override"
    finally:
        running.stop()


def test_bad_config_on_sighup_keeps_the_running_one(daemon: tuple[Daemon, str]) -> None:
    running, key = daemon
    (running.home / "steward.toml").write_text("[server\n")
    assert running.process is not None
    running.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in running.log(), 10, "the refusal")
    got = httpx.post(running.url + "/v1/chat/completions", json={"model": "gpt-4o"},
                     headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk"})
    assert got.status_code == 200


def test_admin_endpoints(daemon: tuple[Daemon, str]) -> None:
    running, key = daemon
    headers = {"X-Majordomo-Key": key, "Authorization": "Bearer sk"}
    for _ in range(3):
        httpx.post(running.url + "/v1/chat/completions", json={"model": "gpt-4o"},
                   headers=headers)
    httpx.post(running.url + "/v1/messages", json={"model": "claude-x"},
               headers={"X-Majordomo-Key": key})  # 401: no anthropic key
    assert httpx.get(running.admin_url + "/healthz").json() == {"status": "alive"}
    ready = httpx.get(running.admin_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert ready.json()["degraded"] == []
    text = httpx.get(running.admin_url + "/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("steward_requests_total", (("endpoint", "chat/completions"),
                                               ("provider", "openai"), ("status", "200")))] == 3
    assert samples[("steward_requests_total", (("endpoint", "messages"),
                                               ("provider", "anthropic"), ("status", "401")))] == 1
    assert samples[("steward_tokens_total", (("kind", "input"), ("model", "gpt-4o-2024-08-06"),
                                             ("provider", "openai")))] == 75
    assert samples[("steward_cost_usd_total", (("model", "gpt-4o-2024-08-06"),
                                               ("provider", "openai")))] == pytest.approx(
        3 * 0.00017625)
    assert samples[("steward_request_duration_seconds_count", (("provider", "openai"),))] == 3
    assert ("steward_body_queue_depth", ()) in samples
    assert ("steward_spool_backlog_bytes", ()) in samples
    # The admin routes are not on the public port, and proxy traffic is not on the admin port.
    assert httpx.get(running.url + "/metrics", headers={"X-Majordomo-Key": key}
                     ).status_code == 404


def test_logs_are_json_with_one_access_line_and_no_secret(daemon: tuple[Daemon, str]) -> None:
    running, key = daemon
    httpx.post(running.url + "/v1/chat/completions", json={"model": "gpt-4o"},
               headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk-logged?"})
    wait_for(lambda: "steward.access" in running.log(), 5, "the access line")
    lines = [json.loads(line) for line in running.log().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "steward.access"]
    assert len(access) == 1
    assert {"id", "api_key_id", "provider", "model", "status", "input_tokens", "cost",
            "latency_ms"} <= set(access[0])
    assert key not in running.log() and "sk-logged?" not in running.log()


def test_start_up_fails_fast_in_one_line(fresh_home: tuple[Path, str], tmp_path: Path) -> None:
    home, _ = fresh_home
    (home / "steward.toml").write_text("[limits]\nmax_body_bytes = 'lots'\n")
    bad = cli("run", home=home, check=False)
    assert bad.returncode == 2 and "limits.max_body_bytes" in bad.stderr
    unreadable = tmp_path / "nowhere"
    missing = cli("run", home=unreadable, check=False)
    assert missing.returncode == 1 and "steward init" in missing.stderr
    for result in (bad, missing):
        assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
