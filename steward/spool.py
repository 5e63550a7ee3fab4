"""The local metadata spool: append-only NDJSON segments, one write() per record.

Each process writes its own segment files (several Hypercorn workers never share one), so a
record is one whole line even without locks.
"""

from __future__ import annotations

import asyncio
import calendar
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("steward.spool")

SEGMENT_SUFFIX = ".ndjson"


class Spool:
    def __init__(self, directory: Path, fsync_interval: float | None,
                 max_segment_bytes: int = 64 * 1024**2, max_segment_age: float = 3600.0):
        self.directory = directory
        self.fsync_interval = fsync_interval
        self.max_segment_bytes = max_segment_bytes
        self.max_segment_age = max_segment_age
        self.errors = 0
        self.records = 0
        self._fd = -1
        self._opened_at = 0.0
        self._size = 0
        self._dirty = False
        self.path: Path | None = None

    def _open_segment(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.path = self.directory / f"{stamp}-{os.getpid()}-{secrets.token_hex(3)}{SEGMENT_SUFFIX}"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _OPEN_HERE.add(self.path.name)
        self._opened_at = time.monotonic()
        self._size = 0

    def _rotate_if_due(self) -> None:
        if self._fd >= 0 and (self._size >= self.max_segment_bytes
                              or time.monotonic() - self._opened_at >= self.max_segment_age):
            self._close_segment()
        if self._fd < 0:
            self._open_segment()

    def _close_segment(self) -> None:
        fd, self._fd = self._fd, -1
        if self.path is not None:
            _OPEN_HERE.discard(self.path.name)
        if fd >= 0:
            if self.fsync_interval is not None:
                os.fsync(fd)
            os.close(fd)

    def write(self, record: dict[str, Any]) -> bool:
        """Append one record as one line with one write(); False (and a loud log) on failure."""
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        try:
            self._rotate_if_due()
            written = os.write(self._fd, line)
            if written != len(line):
                raise OSError(f"short write ({written} of {len(line)} bytes)")
        except OSError as exc:
            self.errors += 1
            log.error("could not write metadata record %s to the spool: %s", record.get("id"), exc)
            return False
        self._size += written
        self._dirty = True
        self.records += 1
        return True

    async def append(self, record: dict[str, Any]) -> bool:
        ok = self.write(record)
        if ok and self.fsync_interval == 0:
            await self.sync()
        return ok

    async def sync(self) -> None:
        if self._dirty and self._fd >= 0:
            self._dirty = False
            await asyncio.get_running_loop().run_in_executor(None, os.fsync, self._fd)

    async def run_fsync(self) -> None:
        """Background task: bounds what a power loss can take to one interval."""
        if not self.fsync_interval:
            return
        while True:
            await asyncio.sleep(self.fsync_interval)
            try:
                await self.sync()
            except OSError as exc:
                log.error("fsync of the metadata spool failed: %s", exc)

    def close(self) -> None:
        self._close_segment()


_OPEN_HERE: set[str] = set()  # segments this process is appending to


def _process_started_at(pid: int) -> float | None:
    """Epoch seconds a process started (Linux), to tell a reused PID from the writer."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def segment_writer_alive(path: Path) -> bool:
    """Segments are named <UTC time>-<pid>-<random>: is their writer still appending?

    A PID can be reused (in a container Steward may be PID 1 on every start), so the process
    must also have started before the segment was created.
    """
    try:
        stamp, pid_text = path.name.split("-")[:2]
        pid = int(pid_text)
        created = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%S"))
    except ValueError:
        return False
    if pid == os.getpid():
        return path.name in _OPEN_HERE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    started = _process_started_at(pid)
    return started is None or started <= created + 1


def read_records(directory: Path) -> list[dict[str, Any]]:
    """Every record in every segment, oldest segment first (for `steward usage` and tests)."""
    records: list[dict[str, Any]] = []
    for path in sorted(directory.glob(f"*{SEGMENT_SUFFIX}")):
        with path.open("rb") as fh:
            for line in fh:
                if line.endswith(b"\n"):
                    records.append(json.loads(line))
    return records
