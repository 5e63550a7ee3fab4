"""Steward as systemd runs it with one and with several workers: only the main process speaks
to systemd, READY=1 when all workers serve, WATCHDOG=1 only while all of them answer,
STOPPING=1 before the drain, and reloads that never cost a request."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from steward.daemon.notify import ServiceStatus
from tests.support.daemon import Daemon, cli, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.streaming import stream_in_background
from tests.support.waiting import wait_for

MESSAGES = [{"role": "user", "content": "hi"}]
WATCHDOG = {"WATCHDOG_USEC": "400000"}  # a ping every 0.2 s


def _post(daemon: Daemon, key: str, **headers: str) -> httpx.Response:
    return httpx.post(daemon.url + "/v1/chat/completions", json={"model": "gpt-4o"},
                      timeout=30, headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk",
                                           "Connection": "close", **headers})


@pytest.fixture(params=[1, 2], ids=["one-worker", "two-workers"])
def service(request: pytest.FixtureRequest, fresh_home: tuple[Path, str],
            upstream: FakeUpstream) -> Iterator[tuple[Daemon, str]]:
    home, key = fresh_home
    daemon = Daemon(home, env={**provider_env(upstream.url), **WATCHDOG},
                    args=("--workers", str(request.param))).start()
    yield daemon, key
    daemon.stop()


def test_only_the_main_process_notifies(service: tuple[Daemon, str]) -> None:
    running, key = service
    assert running.process is not None
    for _ in range(3):
        assert _post(running, key).status_code == 200
    assert running.wait_for_notification("3 requests", 10)
    assert running.wait_for_notification("WATCHDOG=1", 5)
    stream = stream_in_background(running.url, key, 0.3)
    wait_for(lambda: len(stream.chunks) >= 2, 10, "the stream to start")
    running.process.send_signal(signal.SIGTERM)
    # STOPPING=1 arrives while the stream is still being drained, not when the drain ends.
    assert running.wait_for_notification("STOPPING=1", 5)
    assert not stream.complete
    stream.join()
    assert stream.complete
    main = running.process.pid
    assert running.process.wait(30) == 0
    running.stop()
    kinds = {n.split("=")[0] for n in running.notifications}
    assert {"READY", "WATCHDOG", "STATUS", "STOPPING"} <= kinds
    assert set(running.senders) == {main}, (main, set(running.senders))
    assert len(running.senders) == len(running.notifications)


def test_status_sums_every_worker(fresh_home: tuple[Path, str], upstream: FakeUpstream) -> None:
    home, key = fresh_home
    running = Daemon(home, env={**provider_env(upstream.url), **WATCHDOG},
                     args=("--workers", "2")).start()
    try:
        first, second = running.workers()
        # Each worker in turn is the only one accepting, so both serve some of the requests.
        for paused, count in ((first, 3), (second, 4)):
            os.kill(paused, signal.SIGSTOP)
            try:
                for _ in range(count):
                    assert _post(running, key).status_code == 200
            finally:
                os.kill(paused, signal.SIGCONT)
        assert running.wait_for_notification("STATUS=serving (2 workers); 7 requests", 10)
    finally:
        assert running.stop() == 0
    spooled_by = {p.name.split("-")[1] for p in (home / "spool").glob("*.ndjson")}
    assert spooled_by == {str(first), str(second)}


def test_a_hung_worker_stops_the_watchdog(fresh_home: tuple[Path, str],
                                          upstream: FakeUpstream) -> None:
    home, _ = fresh_home
    running = Daemon(home, env={**provider_env(upstream.url), **WATCHDOG},
                     args=("--workers", "2")).start()
    try:
        assert running.wait_for_notification("WATCHDOG=1", 5)
        hung = running.workers()[0]
        os.kill(hung, signal.SIGSTOP)  # its event loop stops answering
        try:
            wait_for(lambda: f"worker {hung} has not answered" in running.log(), 10,
                     "the supervisor to notice")
            running.drain_notifications()  # those sent before it noticed
            seen = len(running.notifications)
            running.wait_for_notification("no such message", 1.0)  # gather for a second
            later = running.notifications[seen:]
            assert any(n.startswith("STATUS=") for n in later)
            assert not any("WATCHDOG=1" in n for n in later), later
        finally:
            os.kill(hung, signal.SIGCONT)
        assert running.wait_for_notification("WATCHDOG=1", 5)
    finally:
        assert running.stop() == 0


def test_a_dead_worker_is_replaced(fresh_home: tuple[Path, str], upstream: FakeUpstream) -> None:
    home, key = fresh_home
    running = Daemon(home, env=provider_env(upstream.url), args=("--workers", "2")).start()
    try:
        victim = running.workers()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: f"worker {victim} exited unexpectedly" in running.log(), 20,
                 "the supervisor to notice")
        wait_for(lambda: len(workers := running.workers()) == 2 and victim not in workers, 20,
                 "a new worker")
        for _ in range(4):
            assert _post(running, key).status_code == 200
    finally:
        assert running.stop() == 0  # it was replaced; the service then stopped cleanly


def test_sighup_with_a_broken_then_a_good_file_under_traffic(
        fresh_home: tuple[Path, str], upstream: FakeUpstream) -> None:
    home, key = fresh_home
    running = Daemon(home, env=provider_env(upstream.url), args=("--workers", "2")).start()
    assert running.process is not None
    failures: list[str] = []
    served = [0]
    done = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=running.url, timeout=30) as client:
            while not done.is_set():
                try:
                    got = client.post("/v1/chat/completions", json={"model": "gpt-4o"},
                                      headers={"X-Majordomo-Key": key,
                                               "Authorization": "Bearer sk"})
                    if got.status_code != 200:
                        failures.append(f"{got.status_code} {got.text}")
                    served[0] += 1
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    worker = threading.Thread(target=traffic)
    worker.start()
    config = home / "steward.toml"
    good = config.read_text()
    try:
        wait_for(lambda: served[0] >= 5, 10, "traffic")
        config.write_text("[server\n")
        running.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in running.log(), 10, "the refusal")
        before = served[0]
        wait_for(lambda: served[0] >= before + 5, 10, "traffic after the refusal")
        assert running.process.poll() is None
        config.write_text(good)
        cli("config", "set", "limits.max_tags", "7", home=home)
        running.process.send_signal(signal.SIGHUP)
        wait_for(lambda: running.log().count("configuration, keys and prices reloaded") == 2,
                 10, "both workers to reload")
        before = served[0]
        wait_for(lambda: served[0] >= before + 5, 10, "traffic after the reload")
    finally:
        done.set()
        worker.join(30)
    assert failures == []
    assert running.process.poll() is None
    assert "[server] changed" not in running.log()  # started with --port and --workers
    assert running.stop() == 0


def test_a_worker_lost_while_draining_fails_the_service(fresh_home: tuple[Path, str],
                                                        upstream: FakeUpstream) -> None:
    """Steward never exits 0 on a failure: Restart=on-failure must see it."""
    home, key = fresh_home
    running = Daemon(home, env=provider_env(upstream.url), args=("--workers", "2")).start()
    assert running.process is not None
    stream = stream_in_background(running.url, key, 0.5)
    wait_for(lambda: len(stream.chunks) >= 2, 10, "the stream to start")
    workers = running.workers()
    running.process.send_signal(signal.SIGTERM)
    assert running.wait_for_notification("STOPPING=1", 5)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    assert running.process.wait(30) == 1
    stream.join()
    assert "exited with status -9 while draining" in running.log()
    running.stop()


def test_ready_waits_for_every_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        receiver.settimeout(0)
        monkeypatch.setitem(os.environ, "NOTIFY_SOCKET", path)

        def said() -> list[str]:
            out = []
            while True:
                try:
                    out.append(receiver.recv(4096).decode())
                except BlockingIOError:
                    return out

        status = ServiceStatus(workers=2, watchdog=1.0, stale_after=1.0)
        status.beat(101, {"requests_served": 2}, now=10.0)
        status.tick(now=10.0)
        assert said() == []  # one of two workers serves: not ready, no status, no ping
        status.beat(102, {"requests_served": 3}, now=10.1)
        status.tick(now=10.2)
        assert said() == ["READY=1", "WATCHDOG=1", "STATUS=serving (2 workers); 5 requests; "
                          "0 bodies queued, 0 on disk; spool backlog 0 bytes"]
        status.beat(102, {"requests_served": 4}, now=11.5)
        status.tick(now=11.6)  # worker 101 silent for 1.6 s
        assert said() == ["STATUS=serving (2 workers); 6 requests; 0 bodies queued, "
                          "0 on disk; spool backlog 0 bytes"]
        status.stop()
        status.stop()
        status.tick(now=11.7)
        assert said() == ["STOPPING=1"]


def test_drain_cut_is_recorded_as_a_cut(fresh_home: tuple[Path, str],
                                        upstream: FakeUpstream) -> None:
    home, key = fresh_home
    running = Daemon(home, env={**provider_env(upstream.url),
                                "STEWARD_SERVER__DRAIN_TIMEOUT": "1s"}).start()
    assert running.process is not None
    stream = stream_in_background(running.url, key, 0.5)
    wait_for(lambda: len(stream.chunks) >= 2, 10, "the stream to start")
    started = time.monotonic()
    running.process.send_signal(signal.SIGTERM)
    stream.join()
    assert running.process.wait(30) == 0
    assert time.monotonic() - started < 10
    assert stream.errors and not stream.complete  # the caller saw a broken stream
    record = running.records()[-1]
    assert record["status"] == 200
    assert record["error"].startswith("cut by Steward's shutdown"), record["error"]
    assert "server.drain_timeout (1s)" in record["error"]
    assert record["response_model"] == "gpt-4o-2024-08-06"  # what was read before the cut
