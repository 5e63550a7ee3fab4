"""The spool when the disk refuses writes: records wait in memory, in order, and none is torn."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
from pathlib import Path

import pytest

from steward.records import spool as spool_module
from steward.records.spool import Spool, read_records


class FlakyDisk:
    """os.write that fails (or writes only part) while broken, like a full or failing disk."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, error: int = errno.ENOSPC):
        self.broken = False
        self.partial = False
        self.error = error
        real = os.write

        def write(fd: int, data: bytes) -> int:
            if self.broken:
                if self.partial:
                    return real(fd, bytes(data)[:len(data) // 2])
                raise OSError(self.error, os.strerror(self.error))
            return real(fd, data)

        monkeypatch.setattr(spool_module.os, "write", write)


def lines_are_whole(directory: Path) -> list[dict]:
    """Every byte of every segment is a complete JSON line."""
    out = []
    for path in sorted(directory.glob("*.ndjson")):
        data = path.read_bytes()
        assert data == b"" or data.endswith(b"\n"), f"torn tail in {path.name}"
        out += [json.loads(line) for line in data.splitlines()]
    return out


@pytest.mark.parametrize(("error", "partial"), [(errno.ENOSPC, False), (errno.ENOSPC, True),
                                                 (errno.EIO, False), (errno.EROFS, False)])
def test_refused_writes_wait_in_memory_then_land_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        error: int, partial: bool) -> None:
    disk = FlakyDisk(monkeypatch, error)
    spool = Spool(tmp_path, fsync_interval=None)
    assert spool.write({"id": 0})
    disk.broken, disk.partial = True, partial
    with caplog.at_level(logging.ERROR, "steward.spool"):
        assert not any([spool.write({"id": i}) for i in range(1, 50)])
    assert "cannot write to the metadata spool" in caplog.text
    status = spool.status()
    assert status["held_records"] == 49 and status["write_errors"] >= 1
    assert status["failing_since"] is not None and status["lost_records"] == 0
    assert [r["id"] for r in lines_are_whole(tmp_path)] == [0]  # nothing torn, nothing lost
    assert not spool.retry()  # still broken
    disk.broken = False
    assert spool.write({"id": 50}) is False  # queued behind the held ones, never ahead
    assert spool.retry()
    assert spool.status()["held_records"] == 0 and spool.status()["failing_since"] is None
    assert [r["id"] for r in lines_are_whole(tmp_path)] == list(range(51))
    spool.close()


def test_the_background_task_recovers_without_traffic(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    disk = FlakyDisk(monkeypatch)
    monkeypatch.setattr(spool_module, "RETRY_SECONDS", 0.01)
    monkeypatch.setattr(spool_module, "RETRY_BATCH_BYTES", 64)  # several batches
    spool = Spool(tmp_path, fsync_interval=None)
    disk.broken = True
    for i in range(20):
        spool.write({"id": i})
    disk.broken = False

    async def wait_for_retry() -> None:
        task = asyncio.create_task(spool.run_retry())
        while spool.status()["held_records"]:
            await asyncio.sleep(0.01)
        task.cancel()

    asyncio.run(asyncio.wait_for(wait_for_retry(), 10))
    assert [r["id"] for r in read_records(tmp_path)] == list(range(20))
    spool.close()


def test_past_the_memory_budget_records_are_counted_lost_and_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    disk = FlakyDisk(monkeypatch)
    spool = Spool(tmp_path, fsync_interval=None, max_held_bytes=100)
    disk.broken = True
    for i in range(10):
        spool.write({"id": f"record-{i}"})
    assert spool.status()["lost_records"] > 0
    assert "LOST metadata record record-9" in caplog.text


def test_records_still_held_at_shutdown_go_to_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    disk = FlakyDisk(monkeypatch)
    spool = Spool(tmp_path, fsync_interval=None)
    disk.broken = True
    spool.write({"id": "kept-in-the-log", "input_tokens": 7})
    spool.close()
    assert "LOST 1 metadata records at shutdown" in caplog.text
    assert '{"id":"kept-in-the-log","input_tokens":7}' in caplog.text
