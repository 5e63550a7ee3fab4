"""A full or read-only disk under the real daemon: requests succeed, the fault is loud, nothing
already spooled is lost or torn, and Steward catches up by itself when the disk comes back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.support.daemon import Daemon, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.filesystems import fill, remount, tmpfs
from tests.support.waiting import wait_for

CHAT = "/v1/chat/completions"


def ask(daemon: Daemon, key: str, case: str, stream: bool = False) -> None:
    """One chat call as a caller sees it: a complete, correct answer."""
    headers = {"X-Majordomo-Key": key, "Authorization": "Bearer sk", "X-Majordomo-Case": case}
    body: dict[str, Any] = {"model": "gpt-4o", "stream": stream,
                            "stream_options": {"include_usage": True}}
    got = httpx.post(daemon.url + CHAT, json=body, headers=headers, timeout=30)
    assert got.status_code == 200, got.text
    if stream:
        assert got.text.rstrip().endswith("data: [DONE]")
    else:
        assert got.json()["usage"]["prompt_tokens"] == 25


def readyz(daemon: Daemon) -> dict[str, Any]:
    got = httpx.get(daemon.admin_url + "/readyz", timeout=10)
    assert got.status_code == 200  # degraded storage is reported, not a reason to shed traffic
    return got.json()


def metric(daemon: Daemon, name: str) -> float:
    text = httpx.get(daemon.admin_url + "/metrics", timeout=10).text
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def spooled_cases(daemon: Daemon) -> list[str]:
    """Every spool line is whole JSON (a torn line would fail here)."""
    return [r["tags"]["case"] for r in daemon.records()
            if r["tags"].get("case") and (daemon.home / "spool").exists()]


def stored_bodies(home: Path) -> int:
    return sum(1 for _ in (home / "bodies").rglob("*.json.gz"))


def all_whole(home: Path) -> bool:
    for segment in (home / "spool").glob("*.ndjson"):
        data = segment.read_bytes()
        assert not data or data.endswith(b"\n"), f"torn line in {segment.name}"
    return True


def test_a_full_disk_costs_no_request_and_no_record(tmp_path: Path,
                                                    upstream: FakeUpstream) -> None:
    with tmpfs(tmp_path / "home", "24m") as home:
        key = init_home(home)
        # No free-space floor: a disk that fills between two checks of bodies.min_free
        # (tested on its own) must still cost nothing.
        daemon = Daemon(home, env={**provider_env(upstream.url),
                                   "STEWARD_BODIES__MIN_FREE": "0"},
                        log_file=tmp_path / "daemon.log").start()  # the log is not on it
        try:
            ask(daemon, key, "before")
            wait_for(lambda: stored_bodies(home) == 1, 10, "the first body")
            filler = fill(home)

            for i in range(10):
                ask(daemon, key, f"full-{i}", stream=i % 2 == 1)
            detail = wait_for(lambda: (d := readyz(daemon))["bodies"]["held"] == 10 and d,
                              30, "bodies held in memory")
            assert set(detail["degraded"]) >= {"metadata spool", "body storage"}
            # The segment's last page had room for a few more lines; the rest wait in memory.
            held = detail["spool"]["held_records"]
            assert held >= 5 and "No space left" in detail["spool"]["last_error"]
            assert metric(daemon, "steward_spool_held_records") == held
            assert metric(daemon, "steward_bodies_held_in_memory") == 10
            assert "cannot write to the metadata spool" in daemon.log()
            assert "cannot write bodies to" in daemon.log()
            written = spooled_cases(daemon)  # every line whole, in order, the first one kept
            assert all_whole(home) and len(written) + held == 11
            assert written == ["before", *(f"full-{i}" for i in range(len(written) - 1))]

            filler.unlink()  # space returns: no restart, no operator action
            wanted = ["before", *(f"full-{i}" for i in range(10))]
            wait_for(lambda: spooled_cases(daemon) == wanted, 15, "the held records")
            wait_for(lambda: stored_bodies(home) == 11, 30, "the held bodies")
            wait_for(lambda: readyz(daemon)["degraded"] == [], 15, "readiness to clear")
            assert all_whole(home)
            assert metric(daemon, "steward_spool_records_lost") == 0
            assert metric(daemon, "steward_bodies_lost") == 0
            ask(daemon, key, "after")
            wait_for(lambda: spooled_cases(daemon)[-1:] == ["after"], 10, "a new record")
        finally:
            daemon.stop()


def test_read_only_spool_and_body_directories(tmp_path: Path, upstream: FakeUpstream) -> None:
    home = tmp_path / "home"
    key = init_home(home)
    mounts = [home / "spool", home / "pending-bodies", home / "bodies"]
    with tmpfs(mounts[0], "8m", read_only=True), tmpfs(mounts[1], "8m", read_only=True), \
            tmpfs(mounts[2], "8m", read_only=True):
        daemon = Daemon(home, env=provider_env(upstream.url),
                        log_file=tmp_path / "daemon.log").start()
        try:
            for i in range(5):
                ask(daemon, key, f"ro-{i}", stream=i == 2)
            detail = wait_for(lambda: (d := readyz(daemon))["bodies"]["held"] == 5 and d,
                              30, "bodies held in memory")
            assert detail["spool"]["held_records"] == 5
            assert "Read-only file system" in detail["spool"]["last_error"]
            assert not list(mounts[0].iterdir())

            for mount in mounts:
                remount(mount, read_only=False)
            wanted = [f"ro-{i}" for i in range(5)]
            wait_for(lambda: spooled_cases(daemon) == wanted, 15, "the held records")
            wait_for(lambda: stored_bodies(home) == 5, 30, "the held bodies")
            wait_for(lambda: readyz(daemon)["degraded"] == [], 15, "readiness to clear")
        finally:
            assert daemon.stop() == 0
    assert "LOST" not in daemon.log()
