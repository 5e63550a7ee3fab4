"""Metadata upload against a real loopback collector, through the real daemon."""

from __future__ import annotations

import collections
import json
import os
import signal
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.collector import Collector
from tests.support.daemon import Daemon, cli, free_port, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

PROMPT = "prompt-text-that-must-stay-local-5e1f"  # distinctive: found if it leaks anywhere
BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": PROMPT}]}
TOKEN = "mdm_st_collector-token-31337"


def send(daemon: Daemon, key: str, n: int, **tags: str) -> list[str]:
    ids = []
    headers = {"X-Majordomo-Key": key, "Authorization": "Bearer sk-caller",
               **{f"X-Majordomo-{k}": v for k, v in tags.items()}}
    with httpx.Client(timeout=30) as client:
        for _ in range(n):
            got = client.post(daemon.url + "/v1/chat/completions", json=BODY, headers=headers)
            assert got.status_code == 200
            ids.append(got.headers["x-majordomo-request-id"])
    return ids


def uploading_daemon(home: Path, upstream: FakeUpstream, url: str, **extra: str) -> Daemon:
    cli("upload", "set", url, "--token-stdin", home=home, input=TOKEN + "\n")
    env = {**provider_env(upstream.url), "STEWARD_METADATA__INTERVAL": "0.1",
           "STEWARD_METADATA__BATCH_SIZE": "3", **extra}
    return Daemon(home, env=env).start()


@pytest.fixture
def collector():
    started = Collector().start()
    yield started
    started.stop()


def test_batches_are_gzipped_authenticated_and_idempotent(
        fresh_home: tuple[Path, str], upstream: FakeUpstream, collector: Collector) -> None:
    home, key = fresh_home
    daemon = uploading_daemon(home, upstream, collector.url)
    try:
        ids = send(daemon, key, 7)
        wait_for(lambda: len(collector.accepted()) == 7, 10, "all records at the collector")
    finally:
        daemon.stop()
    assert sorted(r["id"] for r in collector.accepted()) == sorted(ids)
    for upload in collector.uploads:
        assert upload.headers["Authorization"] == f"Bearer {TOKEN}"
        assert upload.headers["Content-Type"] == "application/x-ndjson"
        assert upload.headers["Content-Encoding"] == "gzip"
        assert upload.key.startswith("steward-") and 1 <= len(upload.records) <= 3
    assert len({u.key for u in collector.uploads}) == len(collector.uploads)
    # The uploaded records are the spooled ones, byte for byte, and carry no message text.
    assert collector.accepted() == daemon.records()
    # Neither the prompt (which did reach the provider) nor the completion left the host.
    assert PROMPT.encode() in upstream.last().body
    sent = json.dumps([u.records for u in collector.uploads])
    assert PROMPT not in sent and "Hello from the fake" not in sent
    # The uploader saves its cursor just after the collector's answer: poll, don't race it.
    status = wait_for(lambda: (got := json.loads(cli("spool", "status", "--json",
                                                      home=home).stdout))["pending_records"] == 0
                      and got, 10, "the cursor past every accepted record")
    assert status["last_error"] is None
    assert TOKEN.encode() not in (home / "steward.db").read_bytes()


def test_endpoint_down_then_503_then_up(fresh_home: tuple[Path, str],
                                       upstream: FakeUpstream) -> None:
    home, key = fresh_home
    port = free_port()
    daemon = uploading_daemon(home, upstream, f"http://127.0.0.1:{port}/ingest")
    collector = Collector(port=port)
    try:
        ids = send(daemon, key, 5)  # the endpoint is down: connection refused
        wait_for(lambda: json.loads(cli("spool", "status", "--json", home=home).stdout)
                 ["last_error"], 10, "a failed attempt to be recorded")
        collector.plan = [(503, {"Retry-After": "1"}), (503, {"Retry-After": "1"})]
        collector.start()
        ids += send(daemon, key, 4)
        wait_for(lambda: len(collector.accepted()) == 9, 30, "every record after the outage")
    finally:
        daemon.stop()
        collector.stop()
    counts = collections.Counter(r["id"] for r in collector.accepted())
    assert sorted(counts) == sorted(ids) and set(counts.values()) == {1}
    retried = [u for u in collector.uploads if u.status == 503]
    assert len(retried) == 2
    resent = [u for u in collector.uploads if u.key == retried[0].key]
    assert [u.status for u in resent][-1] == 200 and len(resent) >= 3  # 503, 503, then 200
    assert all(u.records == resent[0].records for u in resent)  # same key, same records


def test_a_rejected_batch_is_kept_aside_and_later_ones_flow(
        fresh_home: tuple[Path, str], upstream: FakeUpstream, collector: Collector) -> None:
    home, key = fresh_home
    collector.plan = [(400, {})]
    daemon = uploading_daemon(home, upstream, collector.url)
    try:
        ids = send(daemon, key, 3)
        wait_for(lambda: collector.uploads, 10, "the first upload")
        ids += send(daemon, key, 4)
        # The first batch holds what was spooled when it was taken (all three, or fewer on a
        # slow machine); everything else must flow.
        first = [r["id"] for r in collector.uploads[0].records]
        wait_for(lambda: len(collector.accepted()) == len(ids) - len(first), 10,
                 "later batches")
    finally:
        daemon.stop()
    assert first and collector.uploads[0].status == 400
    assert sorted(r["id"] for r in collector.accepted()) == sorted(set(ids) - set(first))
    rejected = list((home / "spool" / "rejected").glob("*.ndjson"))
    assert len(rejected) == 1
    assert sorted(json.loads(line)["id"] for line in rejected[0].read_bytes().splitlines()
                  ) == sorted(first)
    reason = json.loads(next((home / "spool" / "rejected").glob("*.reason.json")).read_text())
    assert reason["status"] == 400
    status = json.loads(cli("spool", "status", "--json", home=home).stdout)
    assert status["rejected_batches"] == 1
    assert "rejected" in daemon.log() and "400" in daemon.log()


def test_kill_9_loses_nothing_and_duplicates_nothing(
        fresh_home: tuple[Path, str], upstream: FakeUpstream, collector: Collector) -> None:
    home, key = fresh_home
    daemon = uploading_daemon(home, upstream, collector.url)
    succeeded: list[str] = []
    stop = threading.Event()

    def load() -> None:
        headers = {"X-Majordomo-Key": key, "Authorization": "Bearer sk-caller"}
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                try:
                    got = client.post(daemon.url + "/v1/chat/completions", json=BODY,
                                      headers=headers)
                except httpx.HTTPError:
                    return  # the daemon died under us: this request did not succeed
                if got.status_code == 200:
                    succeeded.append(got.headers["x-majordomo-request-id"])

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    wait_for(lambda: len(succeeded) >= 150 and collector.accepted(), 30, "traffic and uploads")
    assert daemon.process is not None
    os.kill(daemon.process.pid, signal.SIGKILL)
    stop.set()
    for worker in workers:
        worker.join(30)
    daemon.process.wait(10)
    daemon.process = None
    restarted = Daemon(home, env=daemon.env).start()
    try:
        wait_for(lambda: {r["id"] for r in collector.accepted()} >= set(succeeded), 30,
                 "every answered request at the collector")
    finally:
        restarted.stop()
    counts = collections.Counter(r["id"] for r in collector.accepted())
    assert all(counts[i] == 1 for i in succeeded)
    assert max(counts.values()) == 1


def test_majordomo_format(fresh_home: tuple[Path, str], upstream: FakeUpstream,
                          collector: Collector) -> None:
    home, key = fresh_home
    cli("config", "set", "metadata.format", "majordomo", home=home)
    daemon = uploading_daemon(home, upstream, collector.base_url)  # + the ingest path
    try:
        ids = send(daemon, key, 2, Team="ml")
        anthropic_id = httpx.post(daemon.url + "/v1/messages", json={"model": "claude-x"},
                                  headers={"X-Majordomo-Key": key, "x-api-key": "k"}
                                  ).headers["x-majordomo-request-id"]
        wait_for(lambda: len(collector.accepted()) == 3, 10, "the records")
    finally:
        daemon.stop()
    upload = collector.uploads[0]
    assert upload.headers["Content-Type"] == "application/json"
    assert upload.headers["Authorization"] == f"Bearer {TOKEN}"
    by_id = {r["id"]: r for r in collector.accepted()}
    first = by_id[ids[0]]
    assert {k: first.get(k) for k in ("provider", "model", "request_path", "request_method",
                                      "input_tokens", "output_tokens", "cached_tokens",
                                      "cache_creation_tokens", "status_code", "raw_metadata",
                                      "error_message")} == {
        "provider": "openai", "model": "gpt-4o-2024-08-06",
        "request_path": "/v1/chat/completions", "request_method": "POST",
        "input_tokens": 25, "output_tokens": 12, "cached_tokens": 5,
        "cache_creation_tokens": 0, "status_code": 200, "raw_metadata": {"team": "ml"},
        "error_message": None}
    assert first["majordomo_api_key_id"] == json.loads(cli("keys", "list", "--json", home=home
                                                           ).stdout)[0]["uuid"]
    assert first["requested_at"].endswith("Z") and first["responded_at"] >= first[
        "requested_at"]
    assert by_id[anthropic_id]["input_tokens"] == 540  # input + cache read + cache creation


def test_spool_flush_uploads_when_no_gateway_runs(fresh_home: tuple[Path, str],
                                                  upstream: FakeUpstream,
                                                  collector: Collector) -> None:
    home, key = fresh_home
    daemon = Daemon(home, env=provider_env(upstream.url)).start()  # no upload configured yet
    try:
        ids = send(daemon, key, 4)
    finally:
        daemon.stop()
    assert json.loads(cli("spool", "status", "--json", home=home).stdout)[
        "pending_records"] == 4
    cli("upload", "set", collector.url, "--token-stdin", home=home, input=TOKEN + "\n")
    cli("spool", "flush", home=home)
    assert sorted(r["id"] for r in collector.accepted()) == sorted(ids)
    assert json.loads(cli("spool", "status", "--json", home=home).stdout)[
        "pending_records"] == 0


def test_usage_totals_match_the_records(fresh_home: tuple[Path, str],
                                        upstream: FakeUpstream) -> None:
    home, key = fresh_home
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        send(daemon, key, 3, Team="a")
        send(daemon, key, 2, Team="b")
        httpx.post(daemon.url + "/v1/messages", json={"model": "claude-x"},
                   headers={"X-Majordomo-Key": key, "x-api-key": "k", "X-Majordomo-Team": "a"})
    finally:
        daemon.stop()
    records = daemon.records()

    def usage(by: str) -> dict:
        return json.loads(cli("usage", "--since", "1h", "--by", by, "--json", home=home).stdout)

    for by in ("model", "provider", "key", "tag:team"):
        report = usage(by)
        assert report["total"]["requests"] == 6
        assert report["total"]["input_tokens"] == sum(r["input_tokens"] for r in records)
        assert sum(g["output_tokens"] for g in report["groups"]) == 5 * 12 + 15
        assert sum(g["requests"] for g in report["groups"]) == 6
    assert {g["group"]: g["requests"] for g in usage("tag:team")["groups"]} == {"a": 4, "b": 2}
    assert {g["group"]: g["input_tokens"] for g in usage("provider")["groups"]} == {
        "openai": 125, "anthropic": 540}
    assert [g["group"] for g in usage("key")["groups"]] == ["default"]
    assert usage("model")["total"]["p95_latency_ms"] > 0
    table = cli("usage", "--by", "provider", home=home).stdout
    assert "anthropic" in table and "total" in table
    bad = cli("usage", "--since", "yesterday-ish", home=home, check=False)
    assert bad.returncode == 1 and "--since" in bad.stderr
