"""Behaviour that needs a daemon of its own: key changes seen live, upstream failures,
client disconnects."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.daemon import Daemon, cli, free_port, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def chat(daemon: Daemon, key: str, **headers: str) -> httpx.Response:
    return httpx.post(daemon.url + "/v1/chat/completions", json=BODY, timeout=30,
                      headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk-caller",
                               **headers})


@pytest.fixture
def daemon(fresh_home: tuple[Path, str], upstream: FakeUpstream):
    home, key = fresh_home
    env = {**provider_env(upstream.url), "STEWARD_LIMITS__READ_TIMEOUT": "1",
           "STEWARD_LIMITS__STREAM_IDLE_TIMEOUT": "1"}
    started = Daemon(home, env=env).start()
    yield started, key
    started.stop()


def test_keys_added_and_revoked_are_seen_without_restart(daemon: tuple[Daemon, str]) -> None:
    running, first = daemon
    added = cli("keys", "add", "ci-bot", "--tag", "team=infra", "--json", home=running.home)
    new_key = json.loads(added.stdout)["key"]
    started = time.monotonic()
    wait_for(lambda: chat(running, new_key).status_code == 200, 5, "the new key to be accepted")
    record = [r for r in running.records() if r["status"] == 200][-1]
    assert record["tags"] == {"team": "infra"}
    cli("keys", "revoke", "ci-bot", home=running.home)
    wait_for(lambda: chat(running, new_key).status_code == 401, 5, "the revoked key to fail")
    assert time.monotonic() - started < 10
    assert chat(running, first).status_code == 200


def test_expired_key_is_refused(daemon: tuple[Daemon, str]) -> None:
    running, _ = daemon
    added = cli("keys", "add", "short", "--expires-in", "1s", "--json", home=running.home)
    key = json.loads(added.stdout)["key"]
    deadline = json.loads(added.stdout)["expires_at"]
    wait_for(lambda: time.time() > deadline, 5, "the key to expire")
    wait_for(lambda: chat(running, key).status_code == 401, 5, "the expired key to fail")
    listed = json.loads(cli("keys", "list", "--json", home=running.home).stdout)
    assert {k["name"]: k["status"] for k in listed}["short"] == "expired"


def test_last_used_is_recorded(daemon: tuple[Daemon, str]) -> None:
    running, key = daemon
    assert chat(running, key).status_code == 200

    def last_used() -> float | None:
        listed = json.loads(cli("keys", "list", "--json", home=running.home).stdout)
        return listed[0]["last_used_at"]

    assert wait_for(last_used, 10, "last_used_at to be stored")


def test_upstream_timeout_is_504(daemon: tuple[Daemon, str]) -> None:
    running, key = daemon
    got = chat(running, key, **{"x-fake-behavior": "delay:3"})
    assert got.status_code == 504
    assert "sent no response within" in got.json()["error"]["message"]
    assert running.records()[-1]["status"] == 504


def test_stalled_stream_is_cut_and_recorded(daemon: tuple[Daemon, str]) -> None:
    """Headers already sent: the caller sees the stream end abnormally, the record says why."""
    running, key = daemon
    client = openai.OpenAI(base_url=running.url + "/v1", api_key="sk", max_retries=0,
                           default_headers={"X-Majordomo-Key": key, "x-fake-behavior": "stall"})
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="gpt-4o", messages=BODY["messages"],
                                            stream=True))
    record = running.records()[-1]
    assert "limits.stream_idle_timeout" in record["error"]
    assert record["status"] == 200 and record["stream"] is True


def test_upstream_unreachable_is_502(fresh_home: tuple[Path, str]) -> None:
    home, key = fresh_home
    dead = f"http://127.0.0.1:{free_port()}"
    running = Daemon(home, env=provider_env(dead)).start()
    try:
        got = httpx.post(running.url + "/v1/messages", json={"model": "claude"},
                         headers={"X-Majordomo-Key": key, "x-api-key": "sk-ant-caller"})
        assert got.status_code == 502
        body = got.json()
        assert body["type"] == "error" and "cannot reach anthropic" in body["error"]["message"]
    finally:
        running.stop()


def test_client_disconnect_mid_stream_closes_upstream(daemon: tuple[Daemon, str],
                                                      upstream: FakeUpstream) -> None:
    running, key = daemon
    upstream.stream_closed.clear()
    before = upstream.closed_streams
    headers = {"X-Majordomo-Key": key, "X-Majordomo-Case": "disconnect",
               "x-fake-behavior": "stall", "Authorization": "Bearer sk-caller"}
    with httpx.stream("POST", running.url + "/v1/chat/completions", headers=headers,
                      json={**BODY, "stream": True}, timeout=30) as response:
        first = next(response.iter_raw())
        assert first.startswith(b"data: ")
    # Closing our side must make Steward close its upstream connection promptly.
    assert upstream.stream_closed.wait(5)
    assert upstream.closed_streams == before + 1
    record = wait_for(lambda: [r for r in running.records()
                               if r["tags"].get("case") == "disconnect"], 5, "the record")[0]
    assert record["error"] == "client disconnected"
    assert record["status"] == 200  # what the upstream said; the error says what happened
    assert record["response_model"] == "gpt-4o-2024-08-06"  # what it saw before the cut


def test_two_workers_serve_and_each_spools(fresh_home: tuple[Path, str],
                                           upstream: FakeUpstream) -> None:
    home, key = fresh_home
    running = Daemon(home, env=provider_env(upstream.url), args=("--workers", "2")).start()
    try:
        workers = running.workers()
        with httpx.Client(base_url=running.url, timeout=30) as client:
            for index in range(40):
                # Each worker in turn is paused, so the other one accepts: both serve.
                paused = workers[index // 20]
                os.kill(paused, signal.SIGSTOP)
                try:
                    got = client.post("/v1/chat/completions", json=BODY,
                                      headers={"X-Majordomo-Key": key, "Connection": "close",
                                               "Authorization": "Bearer sk-caller"})
                finally:
                    os.kill(paused, signal.SIGCONT)
                assert got.status_code == 200
        # Whichever worker answers a scrape, it counts both workers' requests.
        for _ in range(6):
            text = httpx.get(running.admin_url + "/metrics", timeout=10,
                             headers={"Connection": "close"}).text
            served = sum(float(line.split()[-1]) for line in text.splitlines()
                         if line.startswith("steward_requests_total{"))
            assert served == 40, text[:2000]
    finally:
        assert running.stop() == 0
    records = running.records()
    assert len(records) == 40 and all(r["input_tokens"] == 25 for r in records)
    spooled_by = {p.name.split("-")[1] for p in (home / "spool").glob("*.ndjson")}
    assert spooled_by == {str(pid) for pid in workers}  # each worker its own segment
