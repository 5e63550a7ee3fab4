"""Batched, idempotent upload of spooled metadata to a control-plane endpoint.

The cursor (Home.upload_cursor, replaced atomically) holds, per segment, the byte offset up to
which records are committed, plus the batch in flight. A batch is a list of byte ranges in
segment files, which never change once written, so a retry (even after a crash) re-sends exactly
the same records under the same Idempotency-Key. Only one process uploads: the one holding
Home.uploader_lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steward.backoff import retry_delay
from steward.files import write_atomic
from steward.home import Home
from steward.records.spool import SEGMENT_SUFFIX, segment_writer_alive, segments
from steward.wakeup import sleep_or_wake

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("steward.upload")

RETRYABLE = {408, 425, 429}
MAX_BACKOFF = 300.0


@dataclass
class Batch:
    key: str
    ranges: list[tuple[str, int, int]]  # segment name, start, end (bytes)

    @classmethod
    def of(cls, ranges: list[tuple[str, int, int]]) -> Batch:
        digest = hashlib.sha256(json.dumps(ranges).encode()).hexdigest()[:32]
        return cls(key=f"steward-{digest}", ranges=ranges)


@dataclass
class Cursor:
    offsets: dict[str, int] = field(default_factory=dict)
    inflight: Batch | None = None

    @classmethod
    def load(cls, path: Path) -> Cursor:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        inflight = data.get("inflight")
        return cls(offsets=dict(data.get("offsets", {})),
                   inflight=Batch(inflight["key"], [tuple(r) for r in inflight["ranges"]])
                   if inflight else None)

    def save(self, path: Path) -> None:
        data = {"offsets": self.offsets,
                "inflight": {"key": self.inflight.key, "ranges": self.inflight.ranges}
                if self.inflight else None}
        write_atomic(path, json.dumps(data).encode())


def read_range(directory: Path, segment: str, start: int, end: int) -> bytes:
    with (directory / segment).open("rb") as fh:
        fh.seek(start)
        return fh.read(end - start)


def next_batch(directory: Path, cursor: Cursor, batch_size: int) -> Batch | None:
    """Up to batch_size complete records past the cursor, oldest segment first."""
    ranges: list[tuple[str, int, int]] = []
    wanted = batch_size
    for path in segments(directory):
        if wanted <= 0:
            break
        start = cursor.offsets.get(path.name, 0)
        size = path.stat().st_size
        if size <= start:
            continue
        end = start
        with path.open("rb") as fh:
            fh.seek(start)
            for line in fh:
                if not line.endswith(b"\n"):
                    if not segment_writer_alive(path):
                        log.error("skipping %d bytes of an unfinished record at the end of "
                                  "%s (its writer died mid-write)", len(line), path.name)
                        cursor.offsets[path.name] = end + len(line)
                    break
                end += len(line)
                wanted -= 1
                if wanted == 0:
                    break
        if end > start:
            ranges.append((path.name, start, end))
    return Batch.of(ranges) if ranges else None


def retry_after(response: httpx.Response | None, attempt: int) -> float:
    """Retry-After when the server gives one, else exponential backoff with full jitter."""
    header = response.headers.get("retry-after") if response is not None else None
    return retry_delay(header, attempt, MAX_BACKOFF)


Encoder = Callable[[bytes], tuple[bytes, dict[str, str]]]


class Uploader:
    def __init__(self, home: Home, url: str, token: str | None, *, batch_size: int,
                 interval: float, retention: float, max_spool_bytes: int, encoder: Encoder,
                 ok_statuses: Callable[[int], bool] = lambda s: 200 <= s < 300,
                 client: httpx.AsyncClient | None = None):
        self.home = home
        self.directory = home.spool
        self.url = url
        self.token = token
        self.batch_size = batch_size
        self.interval = interval
        self.retention = retention
        self.max_spool_bytes = max_spool_bytes
        self.encoder = encoder
        self.ok_statuses = ok_statuses
        # Imported here: the CLI imports this module, and httpx adds ~0.2 s to each command.
        import httpx

        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.status: dict[str, Any] = {}
        self._lock_fd = -1
        self._attempt = 0

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Upload while holding the lock; another worker takes over if this one dies, and a
        reload's new uploader takes over from the old one, which releases the lock here."""
        try:
            await self._wait_for_lock()
            housekept = 0.0
            while True:
                try:
                    delay = await self.step()
                    idle = delay is None
                    if delay is None:
                        self.idle.set()
                        delay = self.interval
                    # Retention and the backlog alarm under sustained load too, not only once
                    # everything is uploaded: at most once an interval while busy.
                    if idle or time.monotonic() - housekept >= self.interval:
                        await asyncio.to_thread(self.cleanup)
                        housekept = time.monotonic()
                except OSError as exc:  # the spool's disk: full, read-only, failing
                    log.error("metadata upload paused: cannot use the spool in %s (%s); "
                              "retrying in %gs", self.directory, exc, self.interval)
                    self._record_status(ok=False, status=None, error=f"spool: {exc}")
                    delay = self.interval
                await self._sleep(delay)
        finally:
            self.status["lock_held"] = False
            if self._lock_fd >= 0:
                os.close(self._lock_fd)  # closing releases the flock
                self._lock_fd = -1
            await self.client.aclose()

    async def _wait_for_lock(self) -> None:
        """Several workers share one spool: the one holding the lock uploads. Waiting is said
        once in the log (with the holder's pid), and shown in status and /metrics."""
        said = False
        self.status["lock_held"] = False
        while not await self._locked():
            if not said:
                log.info("metadata upload: %s is held by pid %s; uploading from here when "
                         "it is released", self.home.uploader_lock,
                         lock_holder(self.home) or "?")
                said = True
            self.idle.set()
            await self._sleep(self.interval)
        self.status["lock_held"] = True
        if said:
            log.info("metadata upload: took over %s", self.home.uploader_lock)

    async def _locked(self) -> bool:
        try:
            return await asyncio.to_thread(self._try_lock)
        except OSError as exc:
            log.error("cannot take the uploader lock in %s (%s); retrying", self.directory, exc)
            return False

    async def _sleep(self, seconds: float) -> None:
        await sleep_or_wake(self.wake, seconds)

    def _try_lock(self) -> bool:
        fd = _take_lock(self.home)
        if fd is None:
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # who holds it, for spool status
        self._lock_fd = fd
        return True

    async def step(self) -> float | None:
        """Send one batch. Returns None when nothing is pending, else how long to wait."""
        cursor = await asyncio.to_thread(Cursor.load, self.home.upload_cursor)
        if cursor.inflight is None:
            cursor.inflight = await asyncio.to_thread(next_batch, self.directory, cursor,
                                                      self.batch_size)
            if cursor.inflight is None:
                return None
            await asyncio.to_thread(cursor.save, self.home.upload_cursor)  # the batch is fixed
        self.idle.clear()
        batch = cursor.inflight
        lines = await asyncio.to_thread(self._read, batch)
        body, headers = self.encoder(lines)
        headers["Idempotency-Key"] = batch.key
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        import httpx

        response = None
        try:
            response = await self.client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return self._failed(f"{exc.__class__.__name__}: {exc}", None)
        records = lines.count(b"\n")
        if self.ok_statuses(response.status_code):
            await asyncio.to_thread(self._commit, cursor)
            self._attempt = 0
            self._record_status(ok=True, status=response.status_code, records=records)
            return 0.0
        if response.status_code in RETRYABLE or response.status_code >= 500:
            return self._failed(f"HTTP {response.status_code}", response)
        await asyncio.to_thread(self._reject, cursor, lines, response)
        self._attempt = 0
        return 0.0

    def _read(self, batch: Batch) -> bytes:
        return b"".join(read_range(self.directory, *r) for r in batch.ranges)

    def _commit(self, cursor: Cursor) -> None:
        assert cursor.inflight is not None
        for name, _, end in cursor.inflight.ranges:
            cursor.offsets[name] = max(cursor.offsets.get(name, 0), end)
        cursor.inflight = None
        cursor.save(self.home.upload_cursor)

    def _reject(self, cursor: Cursor, lines: bytes, response: httpx.Response) -> None:
        """A 4xx the endpoint will never accept: keep the batch aside, loudly, and go on."""
        assert cursor.inflight is not None
        rejected = self.home.rejected
        rejected.mkdir(mode=0o700, exist_ok=True)
        key = cursor.inflight.key
        write_atomic(rejected / f"{key}{SEGMENT_SUFFIX}", lines)
        reason = {"status": response.status_code, "body": response.text[:2000],
                  "url": self.url, "at": time.time()}
        write_atomic(rejected / f"{key}.reason.json", json.dumps(reason).encode())
        log.error("the upload endpoint refused batch %s with HTTP %d (%s); its %d records are "
                  "kept in %s and later batches go on", key, response.status_code,
                  response.text[:200], lines.count(b"\n"), rejected)
        self._commit(cursor)
        self._record_status(ok=False, status=response.status_code,
                            error=f"batch rejected with HTTP {response.status_code}")

    def _failed(self, error: str, response: httpx.Response | None) -> float:
        self._attempt += 1
        delay = retry_after(response, self._attempt)
        log.warning("metadata upload failed (%s); retrying in %.1fs", error, delay)
        self._record_status(ok=False, status=response.status_code if response else None,
                            error=error)
        return delay

    def _record_status(self, ok: bool, status: int | None, error: str | None = None,
                       records: int = 0) -> None:
        now = time.time()
        self.status.update({"last_attempt_at": now, "last_status": status,
                            "last_error": None if ok else error})
        if ok:
            self.status["last_success_at"] = now
            self.status["uploaded_records"] = self.status.get("uploaded_records", 0) + records
        else:
            self.status["failures"] = self.status.get("failures", 0) + 1
        with contextlib.suppress(OSError):
            write_atomic(self.home.upload_status, json.dumps(self.status).encode())

    # -- housekeeping -----------------------------------------------------------------------

    def cleanup(self) -> None:
        """Delete fully uploaded, finished segments older than the retention; warn on backlog.
        A segment the dashboard has not indexed whole yet is kept (once it has a cursor)."""
        cursor = Cursor.load(self.home.upload_cursor)
        dashboard = (Cursor.load(self.home.dashboard_cursor).offsets
                     if self.home.dashboard_cursor.exists() else None)
        now = time.time()
        backlog = 0
        changed = False
        for path in segments(self.directory):
            size = path.stat().st_size
            done = cursor.offsets.get(path.name, 0)
            backlog += max(size - done, 0)
            if (done >= size and now - path.stat().st_mtime > self.retention
                    and (dashboard is None or dashboard.get(path.name, 0) >= size)
                    and not segment_writer_alive(path)):
                path.unlink()
                cursor.offsets.pop(path.name, None)
                changed = True
        if changed and cursor.inflight is None:
            cursor.save(self.home.upload_cursor)
        self.status["backlog_bytes"] = backlog
        over = backlog > self.max_spool_bytes
        if over != self.status.get("backlog_over_limit", False):
            self.status["backlog_over_limit"] = over
            if over:
                log.error("metadata backlog is %d bytes, over metadata.max_spool_bytes (%d): "
                          "the upload endpoint is not keeping up; no record is dropped",
                          backlog, self.max_spool_bytes)
            else:
                log.info("metadata backlog is %d bytes, back under metadata.max_spool_bytes "
                         "(%d)", backlog, self.max_spool_bytes)


def backlog(home: Home) -> dict[str, Any]:
    """What `steward spool status` shows: pending records, their age, the last upload."""
    cursor = Cursor.load(home.upload_cursor)
    pending = 0
    oldest: str | None = None
    for path in segments(home.spool):
        with path.open("rb") as fh:
            fh.seek(cursor.offsets.get(path.name, 0))
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                if oldest is None:
                    with contextlib.suppress(ValueError):
                        oldest = json.loads(line).get("ts")
                pending += 1
    try:
        status = json.loads(home.upload_status.read_text())
    except (FileNotFoundError, ValueError):
        status = {}
    rejected = segments(home.rejected)
    return {"pending_records": pending, "oldest_pending": oldest,
            "uploader_pid": None if lock_is_free(home) else lock_holder(home),
            "in_flight": cursor.inflight.key if cursor.inflight else None,
            "last_success_at": status.get("last_success_at"),
            "last_attempt_at": status.get("last_attempt_at"),
            "last_status": status.get("last_status"), "last_error": status.get("last_error"),
            "rejected_batches": len(rejected), "rejected_dir": str(home.rejected)}


def lock_holder(home: Home) -> int | None:
    """The pid that last took the uploader lock (it may have exited since)."""
    try:
        text = home.uploader_lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_is_free(home: Home) -> bool:
    """True when no running gateway holds the uploader lock."""
    fd = _take_lock(home)
    if fd is None:
        return False
    os.close(fd)  # closing releases the lock
    return True


def _take_lock(home: Home) -> int | None:
    """The uploader lock, without waiting: its fd (closing it releases the lock), or None
    while another process holds it."""
    home.spool.mkdir(parents=True, exist_ok=True)
    fd = os.open(home.uploader_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
