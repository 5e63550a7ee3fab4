"""The local bodies store over time: retention deletes whole days, a low disk stops bodies
but not requests, `bodies get` reads one request back, `bodies du` says what it occupies."""

from __future__ import annotations

import datetime
import json
import threading
import time
from pathlib import Path

import httpx

from steward.bodies.stores import LocalStore
from tests.support.daemon import Daemon, cli, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.filesystems import tmpfs
from tests.support.waiting import wait_for

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello retention"}]}
DAY = 86400.0


def _old_day(root: Path, key: str, days_ago: int, files: int = 2) -> Path:
    when = datetime.datetime.now(datetime.UTC).date() - datetime.timedelta(days=days_ago)
    directory = root / key / f"{when:%Y/%m/%d}"
    directory.mkdir(parents=True)
    for n in range(files):
        (directory / f"old-{n}.json.gz").write_bytes(b"x" * 100)
    return directory


def _post(daemon: Daemon, key: str) -> httpx.Response:
    return httpx.post(daemon.url + "/v1/chat/completions", json=BODY, timeout=30,
                      headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk-secret-1"})


def test_start_up_sweep_deletes_days_past_retention(fresh_home: tuple[Path, str],
                                                    upstream: FakeUpstream) -> None:
    home, _ = fresh_home
    root = home / "bodies"
    gone = [_old_day(root, "key_a", 40), _old_day(root, "key_b", 31)]
    kept = [_old_day(root, "key_a", 29), _old_day(root, "key_b", 0)]
    running = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        wait_for(lambda: "bodies.retention: deleted 4 bodies in 2 day" in running.log(), 10,
                 "the sweep")
        assert not any(d.exists() for d in gone) and all(d.exists() for d in kept)
        assert not (root / "key_b" / gone[1].parent.parent.name / gone[1].parent.name).exists()
    finally:
        running.stop()


def test_sweep_with_an_injected_clock_under_traffic(fresh_home: tuple[Path, str],
                                                    upstream: FakeUpstream) -> None:
    home, key = fresh_home
    root = home / "bodies"
    days = {n: _old_day(root, "key_c", n) for n in (3, 2, 1)}
    running = Daemon(home, env={**provider_env(upstream.url),
                                "STEWARD_BODIES__RETENTION": "off"}).start()
    failures: list[int] = []
    done = threading.Event()

    def traffic() -> None:
        while not done.is_set():
            got = _post(running, key)
            if got.status_code != 200:
                failures.append(got.status_code)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        store = LocalStore(root)
        wait_for(lambda: list(root.glob("*/*/*/*/*.json.gz")) != [], 10, "bodies of today")
        assert store.sweep(DAY, time.time()) == (2, 4)  # D-3 and D-2 are past one day
        assert not days[3].exists() and not days[2].exists() and days[1].exists()
        assert store.sweep(DAY, time.time() + DAY) == (1, 2)  # tomorrow, D-1 is too
        assert not days[1].exists()
    finally:
        done.set()
        sender.join(30)
    running.stop()
    assert failures == []
    records = running.records()
    assert records and all(Path(r["body_ref"].removeprefix("file://")).exists()
                           for r in records)  # today's bodies, written under the sweep
    assert "bodies.retention" not in running.log()  # "off": the daemon never swept


def test_bodies_get_and_du(fresh_home: tuple[Path, str], upstream: FakeUpstream) -> None:
    home, key = fresh_home
    running = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        got = _post(running, key)
        request_id = got.headers["x-majordomo-request-id"]
        record = wait_for(lambda: [r for r in running.records() if r["id"] == request_id], 10,
                          "the record")[0]
        wait_for(lambda: Path(record["body_ref"].removeprefix("file://")).exists(), 10,
                 "the body")
    finally:
        running.stop()
    shown = json.loads(cli("bodies", "get", request_id, home=home).stdout)
    assert shown["request"]["body"] == BODY  # pretty-printed as JSON, not a string
    assert shown["response"]["status"] == 200 and shown["id"] == request_id
    assert ["authorization", "[REDACTED]"] in shown["request"]["headers"]
    raw = cli("bodies", "get", request_id, "--raw", home=home).stdout
    assert json.loads(raw)["request"]["body_encoding"] == "json"
    assert "sk-secret-1" not in raw and "sk-secret-1" not in json.dumps(shown)
    # Without its record (rotated away), the local store is searched by the id's day.
    for segment in (home / "spool").glob("*.ndjson"):
        segment.unlink()
    again = json.loads(cli("bodies", "get", request_id, home=home).stdout)
    assert again["id"] == request_id
    missing = cli("bodies", "get", "0190a8e0-0000-7000-8000-000000000000", home=home,
                  check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "no body found" in missing.stderr
    usage = json.loads(cli("bodies", "du", "--json", home=home).stdout)
    assert len(usage) == 1 and usage[0]["files"] == 1
    assert usage[0]["day"] == datetime.datetime.now(datetime.UTC).date().isoformat()
    assert usage[0]["disk_bytes"] >= usage[0]["bytes"] > 0


def test_low_disk_stops_bodies_not_requests(tmp_path: Path, upstream: FakeUpstream) -> None:
    home = tmp_path / "home"
    key = init_home(home)
    cli("config", "set", "bodies.min_free", "4MiB", home=home)
    with tmpfs(home / "bodies", "16m") as bodies:
        running = Daemon(home, env=provider_env(upstream.url)).start()
        try:
            assert _post(running, key).status_code == 200
            filler = bodies / "filler"
            filler.write_bytes(b"\0" * (13 * 2**20))  # 3 MiB left, under the 4 MiB floor
            wait_for(lambda: "under bodies.min_free" in running.log(), 10, "the guard")
            stored = set(bodies.glob("*/*/*/*/*.json.gz"))
            for _ in range(5):
                assert _post(running, key).status_code == 200
            low = running.records()[-5:]
            assert all(r["body_ref"] is None and r["body_error"].startswith("not stored: ")
                       and "bodies.min_free (4.0 MiB)" in r["body_error"] for r in low)
            assert set(bodies.glob("*/*/*/*/*.json.gz")) == stored  # nothing new written
            ready = httpx.get(running.admin_url + "/readyz").json()
            assert ready["ready"] is True and "body storage" in ready["degraded"]
            assert ready["bodies"]["refusing"].startswith("not stored")
            metrics = httpx.get(running.admin_url + "/metrics").text
            assert "steward_bodies_refused_low_space 5.0" in metrics
            filler.unlink()
            wait_for(lambda: "back above bodies.min_free" in running.log(), 10, "the recovery")
            assert _post(running, key).status_code == 200
            last = running.records()[-1]
            assert last["body_error"] is None
            wait_for(lambda: Path(last["body_ref"].removeprefix("file://")).exists(), 10,
                     "bodies written again")
            assert running.log().count("under bodies.min_free") == 1  # per state change
        finally:
            running.stop()


def test_doctor_warns_about_a_full_disk(tmp_path: Path) -> None:
    with tmpfs(tmp_path / "home", "16m") as home:
        init_home(home)
        ok = json.loads(cli("doctor", "--json", home=home, check=False).stdout)
        space = next(c for c in ok["checks"] if c["name"] == "disk space for the home")
        assert space["ok"] is True
        (home / "filler").write_bytes(b"\0" * (14 * 2**20))
        full = json.loads(cli("doctor", "--json", home=home, check=False).stdout)
        space = next(c for c in full["checks"] if c["name"] == "disk space for the home")
        assert space["ok"] is False and "% full" in space["detail"]
