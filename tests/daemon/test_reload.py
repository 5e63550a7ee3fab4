"""SIGHUP as `steward … then reload` uses it: every change applies, nothing in flight suffers,
and the uploader and its alarms keep working."""

from __future__ import annotations

import fcntl
import itertools
import json
import os
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.collector import Collector
from tests.support.daemon import Daemon, cli, free_port, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def _post(daemon: Daemon, key: str, **headers: str) -> httpx.Response:
    return httpx.post(daemon.url + "/v1/chat/completions", json=BODY, timeout=60,
                      headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk",
                               **headers})


def _reload(daemon: Daemon, count: int = 1) -> None:
    assert daemon.process is not None
    before = daemon.log().count("configuration, keys and prices reloaded")
    daemon.process.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.log().count("configuration, keys and prices reloaded")
             >= before + count, 10, "the reload")


def _metric(daemon: Daemon, name: str) -> float:
    text = httpx.get(daemon.admin_url + "/metrics", timeout=10).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name)


@pytest.fixture
def collectors():
    first, second = Collector().start(), Collector().start()
    yield first, second
    first.stop()
    second.stop()


def test_upload_set_then_sighup_moves_uploads(fresh_home: tuple[Path, str],
                                              upstream: FakeUpstream,
                                              collectors: tuple[Collector, Collector]) -> None:
    home, key = fresh_home
    first, second = collectors
    cli("upload", "set", first.url, home=home)
    cli("config", "set", "metadata.interval", "0.2s", home=home)
    running = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        assert _post(running, key, **{"X-Majordomo-Case": "before"}).status_code == 200
        wait_for(lambda: first.accepted(), 10, "the first upload")
        cli("upload", "set", second.url, home=home)
        _reload(running)
        assert _post(running, key, **{"X-Majordomo-Case": "after"}).status_code == 200
        got = wait_for(lambda: second.accepted(), 10, "an upload to the new URL")
        assert [r["tags"]["case"] for r in got] == ["after"]
    finally:
        running.stop()


def test_a_lock_held_elsewhere_is_said_and_shown(fresh_home: tuple[Path, str],
                                                 upstream: FakeUpstream,
                                                 collectors: tuple[Collector, Collector]
                                                 ) -> None:
    home, key = fresh_home
    first, _ = collectors
    cli("upload", "set", first.url, home=home)
    cli("config", "set", "metadata.interval", "0.2s", home=home)
    lock = os.open(home / "spool" / "uploader.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    running = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        wait_for(lambda: f"is held by pid {os.getpid()}" in running.log(), 10, "the log line")
        status = json.loads(cli("spool", "status", "--json", home=home).stdout)
        assert status["uploader_pid"] == os.getpid()
        assert _metric(running, "steward_metadata_uploader_active") == 0
        assert _post(running, key).status_code == 200
        os.close(lock)  # the other uploader exits
        wait_for(lambda: "took over" in running.log(), 10, "the takeover")
        wait_for(lambda: first.accepted(), 10, "the upload")
        assert _metric(running, "steward_metadata_uploader_active") == 1
        status = json.loads(cli("spool", "status", "--json", home=home).stdout)
        assert status["uploader_pid"] == running.process.pid  # type: ignore[union-attr]
        assert running.log().count("is held by pid") == 1  # said once, not every retry
    finally:
        running.stop()


def test_backlog_alarm_and_gauge_while_the_endpoint_is_down(fresh_home: tuple[Path, str],
                                                            upstream: FakeUpstream) -> None:
    home, key = fresh_home
    cli("upload", "set", f"http://127.0.0.1:{free_port()}/ingest", home=home)  # nobody there
    cli("config", "set", "metadata.interval", "0.2s", home=home)
    cli("config", "set", "metadata.max_spool_bytes", "2KiB", home=home)
    running = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        for _ in range(12):
            assert _post(running, key).status_code == 200

        def on_disk() -> int:
            return sum(p.stat().st_size for p in (home / "spool").glob("*.ndjson"))

        assert on_disk() > 2048
        wait_for(lambda: "over metadata.max_spool_bytes" in running.log(), 10, "the alarm")
        wait_for(lambda: _metric(running, "steward_spool_backlog_bytes") == on_disk(), 15,
                 "the gauge to show every byte on disk")
        for _ in range(3):
            assert _post(running, key).status_code == 200
        wait_for(lambda: _metric(running, "steward_spool_backlog_bytes") == on_disk(), 15,
                 "the gauge to follow")
        assert running.log().count("over metadata.max_spool_bytes") == 1  # per state change
    finally:
        running.stop()


def test_a_stream_in_flight_runs_on_across_a_reload(fresh_home: tuple[Path, str],
                                                    upstream: FakeUpstream) -> None:
    home, key = fresh_home
    # Short limits, so a stream outlives drain_timeout + read_timeout after the reload.
    cli("config", "set", "server.drain_timeout", "1s", home=home)
    cli("config", "set", "limits.read_timeout", "1s", home=home)
    running = Daemon(home, env=provider_env(upstream.url)).start()
    arrivals: list[float] = []
    try:
        def stream() -> None:
            with httpx.stream("POST", running.url + "/v1/chat/completions", timeout=60,
                              json={**BODY, "stream": True,
                                    "stream_options": {"include_usage": True}},
                              headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk",
                                       "x-fake-behavior": "pace:1.0"}) as response:
                for _ in response.iter_raw():
                    arrivals.append(time.monotonic())

        cli("config", "set", "limits.read_timeout", "2s", home=home)
        cli("config", "set", "providers.openai.base_url", upstream.url + "/v1/", home=home)
        reader = threading.Thread(target=stream)
        reader.start()
        wait_for(lambda: len(arrivals) >= 2, 10, "the stream to start")
        _reload(running)
        reloaded = time.monotonic()
        reader.join(30)
        gaps = [b - a for a, b in itertools.pairwise(arrivals)]
        assert arrivals[-1] > reloaded  # the stream was still running after the reload
        assert max(gaps) < 1.5, gaps  # paced at 1 s, no stall
        record = running.records()[-1]
        assert record["error"] is None and record["output_tokens"] is not None
        assert _post(running, key).status_code == 200  # the new pool serves
    finally:
        running.stop()


def _slow_request(pool: ThreadPoolExecutor, daemon: Daemon, key: str,
                  upstream: FakeUpstream) -> Future[httpx.Response]:
    """A request that stays in flight for 2 s, once the upstream has it (this daemon's, not
    an earlier test's: the fake upstream is shared)."""
    seen = len(upstream.requests)
    slow = pool.submit(_post, daemon, key, **{"x-fake-behavior": "delay:2"})
    wait_for(lambda: any(r.headers.get("x-fake-behavior") == "delay:2"
                         for r in upstream.requests[seen:]), 10, "the slow request")
    return slow


def test_a_new_per_key_limit_applies_to_keys_already_seen(fresh_home: tuple[Path, str],
                                                          upstream: FakeUpstream) -> None:
    home, key = fresh_home
    cli("config", "set", "limits.max_concurrent_per_key", "1", home=home)
    running = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        with ThreadPoolExecutor(1) as pool:
            slow = _slow_request(pool, running, key, upstream)
            assert _post(running, key).status_code == 429  # the key is now known
            assert slow.result().status_code == 200
        cli("config", "set", "limits.max_concurrent_per_key", "2", home=home)
        _reload(running)
        with ThreadPoolExecutor(1) as pool:
            slow = _slow_request(pool, running, key, upstream)
            assert _post(running, key).status_code == 200
            assert slow.result().status_code == 200
    finally:
        running.stop()


def test_no_server_change_is_claimed_for_command_line_overrides(
        fresh_home: tuple[Path, str], upstream: FakeUpstream) -> None:
    home, _ = fresh_home
    running = Daemon(home, env=provider_env(upstream.url), args=("--host", "127.0.0.1")).start()
    try:
        _reload(running)
        assert "[server] changed" not in running.log()
        cli("config", "set", "server.drain_timeout", "5s", home=home)
        _reload(running)
        assert "[server] changed" in running.log()  # a real change is still named
    finally:
        running.stop()
