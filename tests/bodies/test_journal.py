"""The capture journal and the body writer process: frames read back exactly, a torn frame
skipped only once its writer is gone, and no body lost when either process is killed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from steward.bodies.journal import HEAD, CaptureJournal, JournalReader, encode
from steward.bodies.writer import Capture
from tests.support.bodies import count_bodies, stored_document
from tests.support.daemon import Daemon, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

CHAT = "/v1/chat/completions"


def capture(n: int, size: int = 10) -> Capture:
    c = Capture(f"k/2026/11/28/{n}.json.gz", {"id": str(n)}, [(b"content-type", b"x")],
                b"q" * size, b"a=1")
    c.finish({k: None for k in ("id", "ts", "api_key_id", "provider", "endpoint", "model",
                                "response_model", "method", "path", "stream", "status")},
             200, [(b"content-type", b"application/json")], None)
    c.add(b"first chunk, ")
    c.add(b"second")
    return c


def test_frames_read_back_as_written_and_a_live_writers_torn_tail_waits(tmp_path: Path
                                                                          ) -> None:
    journal = CaptureJournal(tmp_path, str, fsync_interval=None, queue_bytes=1 << 20)
    for n in range(3):
        assert journal.write_bytes(b"".join(encode(capture(n))), n)
    assert journal.path is not None
    with journal.path.open("ab") as fh:  # a frame half written: its writer (us) is alive
        fh.write(b"".join(encode(capture(3)))[:HEAD.size + 5])
    reader = JournalReader(tmp_path, os.getpid())
    reader.scan()
    frames = reader.read(1 << 20)
    assert [f.capture.key for f in frames] == [f"k/2026/11/28/{n}.json.gz" for n in range(3)]
    got = frames[1].capture
    assert (got.request_body, got.query, got.response_status) == (b"q" * 10, b"a=1", 200)
    assert b"".join(got.response_pieces()) == b"first chunk, second"
    assert reader.read(1 << 20) == []  # the torn frame is not read while its writer lives
    journal.close()
    assert not list(tmp_path.glob("*.open")) and len(list(tmp_path.glob("*.capture"))) == 1


def test_a_dead_writers_torn_frame_is_skipped(tmp_path: Path) -> None:
    frames = b"".join(b"".join(encode(capture(n))) for n in range(2))
    torn = b"".join(encode(capture(2)))[:-3]
    dead = 2**22 + 17  # no such process
    (tmp_path / f"20261128T000000-{dead}-00001abcdef.open").write_bytes(frames + torn)
    reader = JournalReader(tmp_path, os.getpid())  # adopts a dead writer's segment
    reader.scan()
    assert [f.capture.key[-10:] for f in reader.read(1 << 20)] == ["/0.json.gz", "/1.json.gz"]
    segment = next(iter(reader.segments.values()))
    assert segment.finished and segment.read == len(frames) + len(torn)


def test_a_live_writers_segment_belongs_to_its_own_body_process(tmp_path: Path) -> None:
    now = time.strftime("%Y%m%dT%H%M%S", time.gmtime())  # after our parent started
    (tmp_path / f"{now}-{os.getppid()}-00001abcdef.open").write_bytes(
        b"".join(encode(capture(0))))
    reader = JournalReader(tmp_path, os.getpid())
    reader.scan()
    assert reader.read(1 << 20) == []  # our parent is alive and not ours to serve


# -- the real daemon ---------------------------------------------------------------------------


def body_process(daemon: Daemon) -> int:
    """The daemon's body writer process (its child, spawned from whichever thread)."""
    assert daemon.process is not None
    parent = daemon.process.pid

    def find() -> int | None:
        for entry in Path("/proc").iterdir():
            try:
                status = (entry / "status").read_text()
                comm = (entry / "comm").read_bytes().strip()
            except (OSError, NotADirectoryError):
                continue
            if comm == b"steward-bodies" and f"\nPPid:\t{parent}\n" in status:
                return int(entry.name)
        return None
    return wait_for(find, 30, "the body writer process")


def ask(daemon: Daemon, key: str, n: int) -> str:
    got = httpx.post(daemon.url + CHAT, headers={"X-Majordomo-Key": key,
                                                 "Authorization": "Bearer sk"},
                     json={"model": "gpt-4o", "messages": [{"role": "user",
                                                            "content": f"prompt {n}"}]},
                     timeout=30)
    assert got.status_code == 200
    return got.headers["x-majordomo-request-id"]


def journaled(home: Path) -> int:
    return sum(p.stat().st_size for p in (home / "capture").glob("*.*")
               if p.suffix in (".open", ".capture"))


@pytest.fixture
def home_key(tmp_path: Path) -> tuple[Path, str]:
    home = tmp_path / "home"
    return home, init_home(home)


def test_a_killed_body_process_is_replaced_and_loses_nothing(home_key: tuple[Path, str],
                                                             upstream: FakeUpstream) -> None:
    home, key = home_key
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        first = body_process(daemon)
        os.kill(first, signal.SIGSTOP)  # it stops reading: frames wait in the journal
        for n in range(5):
            ask(daemon, key, n)
        assert journaled(home) > 0 and count_bodies(home / "bodies") == 0
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: body_process(daemon) != first, 30, "a new body writer process")
        wait_for(lambda: count_bodies(home / "bodies") == 5, 30, "the journaled bodies")
        assert f"body writer process (pid {first}) exited" in daemon.log()
        ref = daemon.records()[-1]["body_ref"]
        assert "prompt 4" in str(stored_document(ref))
    finally:
        assert daemon.stop() == 0
    assert journaled(home) == 0  # every frame durable, every segment let go


def test_bodies_journaled_by_a_killed_daemon_are_stored_after_the_next_start(
        home_key: tuple[Path, str], upstream: FakeUpstream) -> None:
    home, key = home_key
    env = provider_env(upstream.url)
    daemon = Daemon(home, env=env).start()
    bodies = body_process(daemon)
    os.kill(bodies, signal.SIGSTOP)
    ids = [ask(daemon, key, n) for n in range(4)]
    assert daemon.process is not None
    daemon.process.kill()  # SIGKILL: no drain, no last word
    daemon.process.wait()
    os.kill(bodies, signal.SIGKILL)
    assert journaled(home) > 0 and count_bodies(home / "bodies") == 0
    again = Daemon(home, env=env).start()
    try:
        wait_for(lambda: count_bodies(home / "bodies") == 4, 30, "the orphaned bodies")
        refs = {r["id"]: r["body_ref"] for r in again.records()}
        assert all(stored_document(refs[i]) for i in ids)
        wait_for(lambda: journaled(home) == 0, 30, "the dead worker's segment to go")
    finally:
        assert again.stop() == 0
