"""The local metadata spool: append-only NDJSON segments, one write() per record.

Each process writes its own segment files (several Hypercorn workers never share one), so a
record is one whole line even without locks. When the disk refuses a write (full, read-only,
failing), records wait in memory, in order, and a background task writes them as soon as it
can: requests go on, and nothing is lost unless the memory budget runs out too.
"""

from __future__ import annotations

import asyncio
import calendar
import errno
import itertools
import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from steward.held import Held
from steward.records.record import Record

log = logging.getLogger("steward.spool")

SEGMENT_SUFFIX = ".ndjson"
MAX_HELD_BYTES = 64 * 1024**2  # records kept in memory while the disk refuses them
RETRY_SECONDS = 1.0
RETRY_BATCH_BYTES = 1024**2  # one write() per batch of held records, then yield the loop


class Spool:
    """Append-only segments of whole items, one write() each, held in memory when the disk
    refuses. The records' spool; bodies/journal.py reuses it for the capture journal."""

    SUFFIX = SEGMENT_SUFFIX
    # What the log says, for this kind of segment and item.
    FAILING = ("cannot write to the metadata spool in %s (%s): keeping records in memory (up "
               "to %d MiB) and retrying every %gs")
    LOST_ONE = ("LOST metadata record %s: the spool in %s is still unwritable (%s) and %d "
                "records already wait in memory")
    RECOVERED = "the metadata spool in %s is writable again after %.0fs; every held record " \
                "is written"

    def __init__(self, directory: Path, fsync_interval: float | None,
                 max_segment_bytes: int = 64 * 1024**2, max_segment_age: float = 3600.0,
                 max_held_bytes: int = MAX_HELD_BYTES):
        self.directory = directory
        self.max_held_bytes = max_held_bytes
        self.fsync_interval = fsync_interval
        self.max_segment_bytes = max_segment_bytes
        self.max_segment_age = max_segment_age
        self.errors = 0
        self.records = 0
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self._held: Held[bytes] = Held()
        self._fd = -1
        self._opened_at = 0.0
        self._size = 0
        self._dirty = False
        self.path: Path | None = None

    def _open_segment(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        # Names sort in writing order: same second and process, the sequence number decides.
        self.path = self.directory / (f"{stamp}-{os.getpid()}-{next(_SEQUENCE):05d}"
                                      f"{secrets.token_hex(3)}{self.SUFFIX}")
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
            try:
                if self.fsync_interval is not None:
                    os.fsync(fd)
            except OSError as exc:
                log.error("fsync of spool segment %s failed: %s", self.path, exc)
            finally:
                os.close(fd)

    def _write_line(self, data: bytes) -> None:
        """One write() of whole lines; on failure the segment is left holding whole lines."""
        self._rotate_if_due()
        try:
            written = os.write(self._fd, data)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                self._close_segment()  # EIO, EROFS, a lost fd: start afresh on the next try
            raise
        if written != len(data):  # a torn line (the disk filled mid-write): cut it off
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                self._close_segment()  # a dead writer's torn tail is skipped by the uploader
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (wrote {written} of "
                          f"{len(data)} bytes; the partial line was cut off)")
        self._size += written
        self._dirty = True

    def write(self, record: Record) -> bool:
        """Append one record as one line with one write(); True when it reached the file.

        When it could not, the record waits in memory for run_retry(), in order."""
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()
        return self.write_bytes(line, record.get("id"))

    def write_bytes(self, item: bytes, label: Any) -> bool:
        """One whole item with one write(), or held in memory (label names it in the log)."""
        if not self._held:
            try:
                self._write_line(item)
                self.records += 1
                return True
            except OSError as exc:
                self._failed(exc)
        self._hold(item, label)
        return False

    def _failed(self, exc: OSError) -> None:
        self.errors += 1
        self.last_error = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        if self.failing_since is None:
            self.failing_since = time.time()
            log.error(self.FAILING, self.directory, self.last_error,
                      self.max_held_bytes // 1024**2, RETRY_SECONDS)

    @property
    def lost(self) -> int:
        return self._held.lost

    def _hold(self, line: bytes, record_id: Any) -> None:
        if not self._held.add(line, len(line), self.max_held_bytes):
            log.error(self.LOST_ONE, record_id, self.directory, self.last_error,
                      len(self._held))

    def _write_held_batch(self) -> bool:
        """Write the oldest held records (up to RETRY_BATCH_BYTES) with one write()."""
        batch, size = 0, 0
        for line in self._held:
            if batch and size + len(line) > RETRY_BATCH_BYTES:
                break
            batch += 1
            size += len(line)
        try:
            self._write_line(b"".join(itertools.islice(self._held, batch)))
        except OSError as exc:
            self._failed(exc)
            return False
        self._held.drop(batch)
        self.records += batch
        return True

    def _recovered(self) -> None:
        if self.failing_since is not None and not self._held:
            log.warning(self.RECOVERED, self.directory, time.time() - self.failing_since)
            self.failing_since = None

    def retry(self) -> bool:
        """Write every held record, oldest first; True once none are left."""
        while self._held:
            if not self._write_held_batch():
                return False
        self._recovered()
        return True

    async def run_retry(self) -> None:
        """Background task: writes held records as soon as the disk takes them again,
        a batch at a time so a long backlog never holds the event loop."""
        while True:
            await asyncio.sleep(RETRY_SECONDS)
            while self._held and self._write_held_batch():
                await asyncio.sleep(0)
            self._recovered()

    async def append(self, record: Record) -> bool:
        ok = self.write(record)
        if ok and self.fsync_interval == 0:
            try:
                await self.sync()
            except OSError as exc:
                self._failed(exc)
        return ok

    def status(self) -> dict[str, Any]:
        return {"records": self.records, "write_errors": self.errors,
                "held_records": len(self._held), "held_bytes": self._held.bytes,
                "lost_records": self.lost, "last_error": self.last_error,
                "failing_since": self.failing_since}

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
        """At exit, held records get a last try; failing that they go to the log, whole, as
        the only copy left (they hold counts and tags, never prompt text)."""
        if self._held and not self.retry():
            log.error("LOST %d metadata records at shutdown: the spool in %s is unwritable "
                      "(%s); they follow, one per line, for recovery by hand",
                      len(self._held), self.directory, self.last_error)
            for line in self._held.give_up():
                log.error("unspooled record: %s", line.decode().rstrip())
        self._close_segment()


_OPEN_HERE: set[str] = set()  # segments this process is appending to
_SEQUENCE = itertools.count()


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
    """Segments are named <UTC time>-<pid>-<sequence><random>: is their writer still appending?

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


def segments(directory: Path) -> list[Path]:
    """The segment files, oldest first: the one way anything lists the spool."""
    return sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))


def read_records(directory: Path) -> list[Record]:
    """Every record in every segment, oldest segment first (for `steward usage` and tests)."""
    records: list[Record] = []
    for path in segments(directory):
        with path.open("rb") as fh:
            for line in fh:
                if line.endswith(b"\n"):
                    records.append(json.loads(line))
    return records
