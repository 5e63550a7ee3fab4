"""Request and response bodies to the operator's bucket, off the critical path, none lost.

In the body writer process (bodies/process.py), each Capture read from the capture journal
goes to BodyWriter.submit(). Workers build the gzipped JSON document (bodies/document.py) and
upload it in threads, retrying with backoff; a Capture's `done` callback says when its body
is durable, so the journal can let its frame go. What cannot be uploaded now (bucket down,
queue full, shutting down) is spilled to Home.pending_bodies (temp file, fsync, rename) and
uploaded later, also after a restart; this module alone reads and writes that directory.
If that disk refuses too (full, read-only), the document waits in memory, within the queue's
byte budget, until the bucket or the disk takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from steward.bodies.document import BODY_META, build_document, open_document
from steward.bodies.stores import BodyStore, LocalStore
from steward.config import Config
from steward.errors import StewardError
from steward.files import write_atomic
from steward.held import Held
from steward.home import Home
from steward.wakeup import sleep_or_wake

log = logging.getLogger("steward.bodies")

PENDING_SUFFIX = ".json.gz"
LARGE_BODY = 4 * 1024 * 1024
# A captured response past this many bytes goes on to a temporary file as it arrives, written
# by a thread a piece at a time, and its document is built reading it back: any size of body
# then costs about this much memory.
SPILL_AT = 8 * 1024 * 1024
SPILL_PIECE = 1024 * 1024


class Spill:
    """The part of a captured response past SPILL_AT, on an anonymous temporary file (gone when
    closed, or if the process dies). Written in order by one thread hop at a time, never on the
    event loop; if the disk fails, the rest of the body stays in memory instead."""

    def __init__(self) -> None:
        self.file: IO[bytes] | None = None
        self.size = 0  # bytes on the file
        self.pending: list[bytes] = []  # waiting for the next write
        self.pending_bytes = 0
        self.writing: list[bytes] = []
        self.task: asyncio.Future[None] | None = None
        self.fallback: list[bytes] | None = None  # after a failed write: kept in memory

    @property
    def held(self) -> int:
        """Bytes of it in memory."""
        return (self.pending_bytes + sum(len(c) for c in self.writing)
                + sum(len(c) for c in self.fallback or ()))

    def add(self, chunk: bytes) -> None:
        if self.fallback is not None:
            self.fallback.append(chunk)
            return
        self.pending.append(chunk)
        self.pending_bytes += len(chunk)
        if self.task is None and self.pending_bytes >= SPILL_PIECE:
            self._start()

    def _start(self) -> None:
        self.writing, self.pending, self.pending_bytes = self.pending, [], 0
        self.task = asyncio.ensure_future(asyncio.to_thread(self._write, self.writing))
        self.task.add_done_callback(self._written)

    def _write(self, pieces: list[bytes]) -> None:  # in a worker thread
        if self.file is None:
            self.file = tempfile.TemporaryFile(prefix="steward-body-")  # noqa: SIM115 - see close()
        self.file.seek(self.size)  # a failed write may have left a part: overwrite it
        self.file.writelines(pieces)
        self.file.flush()
        self.size += sum(len(p) for p in pieces)

    def _written(self, task: asyncio.Future[None]) -> None:
        if self.task is not task:
            return  # settle() already took this write's outcome
        self.task = None
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error is not None:
            log.error("cannot write a large captured body to a temporary file (%s): keeping "
                      "the rest of it in memory", error or "cancelled")
            self.fallback = self.writing + self.pending
            self.pending, self.pending_bytes = [], 0
        self.writing = []
        if self.fallback is None and self.pending_bytes >= SPILL_PIECE:
            self._start()

    async def settle(self) -> None:
        """Every byte written (or kept in memory), before the document is built."""
        while self.task is not None or (self.pending and self.fallback is None):
            if self.task is None:
                self._start()
            task = self.task
            assert task is not None
            await asyncio.wait({task})  # its failure is _written's business, not ours
            # A finished task's callback runs only on the loop's next turn, and awaiting it
            # does not yield: take the outcome here, or this loop would spin.
            self._written(task)

    def read(self) -> Iterator[bytes]:
        """Its bytes in order, a piece at a time (in the worker thread building the document)."""
        if self.file is not None:
            self.file.seek(0)
            left = self.size
            while left > 0:
                piece = self.file.read(min(SPILL_PIECE, left))
                if not piece:
                    break
                left -= len(piece)
                yield piece
        yield from self.fallback or ()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@dataclass
class Capture:
    """Everything needed to build one body document; bytes are kept as they passed."""

    key: str
    meta: dict[str, Any]
    request_headers: list[tuple[bytes, bytes]]
    request_body: bytes | bytearray
    query: bytes
    response_status: int | None = None
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    response_chunks: list[bytes] = field(default_factory=list)  # the first SPILL_AT bytes
    spill: Spill | None = None  # the rest
    held: int = 0  # bytes in response_chunks added by add()
    # Called once with True when the body is durable (stored, or spilled to pending-bodies/,
    # or it can never be built), or False when it is given up in memory.
    done: Callable[[bool], None] | None = None

    def settled(self, durable: bool) -> None:
        if self.done is not None:
            done, self.done = self.done, None
            done(durable)

    def finish(self, record: Mapping[str, Any], status: int | None,
               headers: list[tuple[bytes, bytes]], error_body: bytes | None) -> None:
        """The response as the caller got it (None: it got none), and the record's facts the
        document repeats. An error Steward answered replaces any chunks."""
        self.meta = {k: record[k] for k in BODY_META}
        self.response_status = status
        if status is not None:
            self.response_headers = headers
        if error_body is not None:
            self.response_chunks = [error_body]

    def add(self, chunk: bytes) -> None:
        """A response chunk as it passes: in memory up to SPILL_AT, then to the spill file."""
        if self.spill is None and self.held + len(chunk) <= SPILL_AT:
            self.response_chunks.append(chunk)
            self.held += len(chunk)
            return
        if self.spill is None:
            self.spill = Spill()
        self.spill.add(chunk)

    @property
    def size(self) -> int:
        """Bytes held in memory (what the queue's budget counts)."""
        return (len(self.request_body) + sum(len(c) for c in self.response_chunks)
                + (self.spill.held if self.spill is not None else 0))

    @property
    def total(self) -> int:
        return self.size + (self.spill.size if self.spill is not None else 0)

    def response_pieces(self) -> Iterator[bytes]:
        yield from self.response_chunks
        if self.spill is not None:
            yield from self.spill.read()

    def release(self) -> None:
        if self.spill is not None:
            self.spill.close()


def object_key(api_key_id: str | None, request_id: str, ts: float) -> str:
    day = time.strftime("%Y/%m/%d", time.gmtime(ts))
    return f"{api_key_id or 'anonymous'}/{day}/{request_id}.json.gz"


class BodyWriter:
    def __init__(self, store: BodyStore, home: Path, *, workers: int, queue_bytes: int,
                 attempts: int = 4, flush_interval: float | None = None):
        self.store = store
        self.flush_interval = flush_interval  # store.flush() this often (None, 0: never)
        self.home = Home(home)
        self.pending_dir = self.home.pending_bodies
        self.workers = workers
        self.queue_bytes = queue_bytes
        self.attempts = attempts
        self.queue: asyncio.Queue[Capture | None] = asyncio.Queue()
        self.queued_bytes = 0
        self.uploaded = 0
        self.spilled = 0
        self.failures = 0
        self.failing = False  # the last attempt to store a body failed
        self.last_error: str | None = None
        # Neither uploaded nor on disk yet, with the callback to tell when they are.
        self.held: Held[tuple[str, bytes, Callable[[bool], None] | None]] = Held()
        self.pending_count = 0  # files in pending-bodies/, as of the drain loop's last look
        self._tasks: list[asyncio.Task[None]] = []  # the workers
        self._background: list[asyncio.Task[None]] = []  # draining and flushing
        self._wake_drain = asyncio.Event()
        self._large_builds = asyncio.Semaphore(1)
        self._later: set[asyncio.Future[None]] = set()  # store_all's retries in progress
        self._stopping = False

    def url(self, key: str) -> str:
        return self.store.url(key)

    def _building(self, capture: Capture) -> contextlib.AbstractAsyncContextManager[Any]:
        """Building a document briefly needs a few times its body in memory: large ones are
        built one at a time, so a burst of big prompts cannot multiply that."""
        return self._large_builds if capture.total > LARGE_BODY else contextlib.nullcontext()

    def start(self) -> None:
        self.pending_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]
        self._background = [asyncio.create_task(self._drain_pending())]
        if self.flush_interval:
            self._background.append(asyncio.create_task(self._flush_periodically()))

    async def store_all(self, captures: list[Capture]) -> None:
        """Many bodies at once, as the body writer process reads them: built and put by
        `workers` threads, a share each, one thread hop per share rather than per body. What
        is not stored then takes the usual way: retries (while the bucket is not known to be
        failing), then pending-bodies/. Large ones go through submit(), one at a time."""
        small = [c for c in captures if c.total <= LARGE_BODY]
        for capture in captures:
            if capture.total > LARGE_BODY:
                await self.submit(capture)
        if isinstance(self.store, LocalStore):
            # Nothing to wait on but the CPU: built and written right here, no thread hops
            # (this loop serves no caller; its reports and commits wait for the batch).
            results = [self._build_and_put_all(small)]
        else:
            shares = [small[i::self.workers] for i in range(min(self.workers, len(small)))]
            results = await asyncio.gather(*(asyncio.to_thread(self._build_and_put_all, share)
                                             for share in shares))
        for done in results:
            for capture, data, stored in done:
                if stored or data is None:  # stored, or it can never be built (logged)
                    capture.settled(True)
                elif self.failing and not self._stopping:
                    await self._keep(capture.key, data, capture.done)  # the drain retries
                else:
                    self._later.add(task := asyncio.ensure_future(
                        self._retry_then_keep(capture, data)))
                    task.add_done_callback(self._later.discard)

    def _build_and_put_all(self, captures: list[Capture]
                           ) -> list[tuple[Capture, bytes | None, bool]]:
        out: list[tuple[Capture, bytes | None, bool]] = []
        for capture in captures:
            try:
                data, stored = self._build_and_put(capture)
            except Exception as exc:  # one bad document must not stop the others
                log.exception("could not build the body document for %s", capture.key)
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                out.append((capture, None, False))
                continue
            out.append((capture, data, stored))
        return out

    async def _retry_then_keep(self, capture: Capture, data: bytes) -> None:
        if not self._stopping and await self._upload(capture.key, data,
                                                     attempts=self.attempts - 1):
            capture.settled(True)
        else:
            await self._keep(capture.key, data, capture.done)

    async def submit(self, capture: Capture) -> None:
        """Queue a body; over the memory budget, spill it to disk first (in a thread)."""
        if capture.spill is not None:
            await capture.spill.settle()
        if self.queued_bytes + self.held.bytes + capture.size > self.queue_bytes:
            async with self._building(capture):
                data, stored = await asyncio.to_thread(self._spill_capture, capture)
            if stored:
                self._spilled()
                capture.settled(True)
            else:
                await self._keep(capture.key, data, capture.done)
            return
        self.queued_bytes += capture.size
        self.queue.put_nowait(capture)

    async def stop(self) -> None:
        """Drain: whatever is still queued is uploaded if the bucket answers, else spilled."""
        self._stopping = True
        for _ in range(self.workers):
            self.queue.put_nowait(None)
        await asyncio.gather(*self._tasks, *self._later, return_exceptions=True)
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.held and await self._retry_held():
            log.error("%d bodies not stored at shutdown: neither the bucket nor %s took them "
                      "(%s); they stay in the capture journal for the next start",
                      len(self.held.give_up()), self.pending_dir, self.last_error)
        if self.flush_interval:
            await self._flush()

    async def _flush_periodically(self) -> None:
        """Bodies written without an fsync each become durable together, once per interval."""
        assert self.flush_interval
        flushed = self.uploaded
        while True:
            await asyncio.sleep(self.flush_interval)
            if self.uploaded != flushed:
                flushed = self.uploaded
                await self._flush()

    async def _flush(self) -> None:
        try:
            await asyncio.to_thread(self.store.flush)
        except OSError as exc:
            log.error("could not flush stored bodies to disk: %s", exc)

    def _list_pending(self) -> list[str]:
        """Spilled bodies, oldest first (in a worker thread: a directory can be large)."""
        try:
            return [p.name for p in pending_files(self.home)]
        except OSError:
            return []

    # -- workers ----------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            capture = await self.queue.get()
            if capture is None:
                return
            try:  # build and first upload attempt in one thread hop: most bodies need no more
                async with self._building(capture):
                    data, stored = await asyncio.to_thread(self._build_and_put, capture)
            except Exception as exc:  # a bug building one document must not stop the worker
                log.exception("could not build the body document for %s", capture.key)
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                capture.settled(True)  # it never will build: its frame must not wait for it
                continue
            finally:
                self.queued_bytes -= capture.size  # counted until its document exists
            if stored:
                capture.settled(True)
                continue
            # Shutting down: no more tries, straight to disk, so the drain meets its deadline.
            if self._stopping or not await self._upload(capture.key, data,
                                                        attempts=self.attempts - 1):
                await self._keep(capture.key, data, capture.done)
            else:
                capture.settled(True)

    async def _upload(self, key: str, data: bytes, attempts: int | None = None,
                      quiet: bool = False) -> bool:
        for attempt in range(attempts or self.attempts):
            if await asyncio.to_thread(self._put, key, data):
                return True
            if attempt + 1 < (attempts or self.attempts):
                await asyncio.sleep(random.uniform(0, min(30.0, 0.2 * 2 ** attempt)))
        if not quiet:
            log.warning("body %s not uploaded yet (%s); keeping it in %s", key,
                        self.last_error, self.pending_dir)
        return False

    def _put(self, key: str, data: bytes) -> bool:
        """One upload attempt (in a worker thread); the outcome also says if storage is up."""
        try:
            self.store.put(key, data)
        except Exception as exc:  # SDKs raise many types; every one means "not stored"
            self.failures += 1
            self.failing = True
            self.last_error = f"{exc.__class__.__name__}: {exc}"[:500]
            return False
        self.uploaded += 1
        self.failing = False
        return True

    def _build_and_put(self, capture: Capture) -> tuple[bytes, bool]:
        return self._build_then(capture, self._put)

    def _spill_capture(self, capture: Capture) -> tuple[bytes, bool]:
        return self._build_then(capture, self._spill)

    @staticmethod
    def _build_then(capture: Capture, keep: Callable[[str, bytes], bool]
                    ) -> tuple[bytes, bool]:
        """The document (its spill file released either way), and whether `keep` took it."""
        try:
            data = build_document(capture)
        finally:
            capture.release()
        return data, keep(capture.key, data)

    def _spill(self, key: str, data: bytes) -> bool:
        """Atomically to local disk (in a worker thread); False if the disk refused it."""
        try:
            write_atomic(pending_path(self.home, key), data)
        except OSError as exc:
            self.last_error = f"local disk: {exc}"
            return False
        return True

    def _spilled(self) -> None:
        """On the loop, after a spill: count it and wake the drain (an asyncio.Event must not
        be set from a worker thread)."""
        self.spilled += 1
        self.pending_count += 1
        self._wake_drain.set()

    async def _spill_now(self, key: str, data: bytes) -> bool:
        if not await asyncio.to_thread(self._spill, key, data):
            return False
        self._spilled()
        return True

    async def _keep(self, key: str, data: bytes,
                    done: Callable[[bool], None] | None = None) -> None:
        """To disk; if the disk refuses, into memory (loudly) for the drain loop to retry.
        The request has succeeded either way; its frame stays in the capture journal until
        `done` hears True."""
        if await self._spill_now(key, data):
            if done is not None:
                done(True)
            return
        first = not self.held
        if not self.held.add((key, data, done), len(data),
                             self.queue_bytes - self.queued_bytes):
            log.error("bodies: the bucket and %s both refuse %s (%s) and %d bodies already "
                      "wait in memory; it stays in the capture journal for the next start",
                      self.pending_dir, key, self.last_error, len(self.held))
            if done is not None:
                done(False)
            return
        if first:
            log.error("cannot write bodies to %s (%s): keeping them in memory (within "
                      "bodies.queue_bytes) until the bucket or the disk takes them",
                      self.pending_dir, self.last_error)

    async def _retry_held(self) -> bool:
        """Bodies held in memory: to the bucket if it answers, else to disk. True if any left."""
        while self.held:
            key, data, done = self.held.first()
            if (not await self._upload(key, data, attempts=1, quiet=True)
                    and not await self._spill_now(key, data)):
                return True
            self.held.drop()
            if done is not None:
                done(True)
            if not self.held:
                log.warning("bodies held in memory are all stored again")
        return False

    async def _drain_pending(self) -> None:
        """Upload spilled bodies, oldest first, whenever the bucket answers again."""
        delay = 1.0
        while True:
            held = await self._retry_held()
            names = await asyncio.to_thread(self._list_pending)  # never glob on the loop
            self.pending_count = len(names)
            stored: list[Path] = []
            for name in names:
                path = self.pending_dir / name
                try:
                    data = await asyncio.to_thread(path.read_bytes)
                except OSError:
                    continue  # gone (another worker sent it) or unreadable: next one
                if not await self._upload(name.replace("__", "/"), data, attempts=1,
                                          quiet=True):
                    break
                stored.append(path)
            if stored:
                # The durable copy goes only once the stored one is durable too (a local
                # store may defer its fsync to flush()).
                try:
                    await asyncio.to_thread(self.store.flush)
                except OSError as exc:
                    log.error("could not flush stored bodies to disk: %s; keeping their "
                              "pending copies", exc)
                    stored = []
            for path in stored:
                try:
                    await asyncio.to_thread(path.unlink, True)
                except OSError as exc:  # stored; re-sending it later is harmless
                    log.error("could not remove uploaded body %s: %s", path, exc)
                self.pending_count -= 1
            progressed = bool(stored)
            delay = 1.0 if progressed or held or not names else min(delay * 2, 30.0)
            await sleep_or_wake(self._wake_drain, delay)

    def status(self) -> dict[str, Any]:
        return {"queued": self.queue.qsize(), "queued_bytes": self.queued_bytes,
                "pending": self.pending_count, "uploaded": self.uploaded, "spilled": self.spilled,
                "failures": self.failures, "failing": self.failing,
                "last_error": self.last_error,
                "held": len(self.held), "held_bytes": self.held.bytes, "lost": self.held.lost,
                "updated_at": time.time()}


def pending_path(home: Home, key: str) -> Path:
    """Where a spilled document waits: its object key as one file name."""
    return home.pending_bodies / key.replace("/", "__")


def pending_files(home: Home) -> list[Path]:
    """Documents spilled to disk, waiting for the bucket, oldest first."""
    return sorted(home.pending_bodies.glob(f"*{PENDING_SUFFIX}"))


def disk_status(config: Config) -> dict[str, Any]:
    """What `steward bucket status` shows: the bodies waiting on disk, and the running
    gateway's last figures (as its writer last wrote them)."""
    home = Home(config.home)
    pending = pending_files(home)
    try:
        daemon = json.loads(home.bodies_status.read_text())
    except (FileNotFoundError, ValueError):
        daemon = {}
    from steward.bodies.journal import journal_bytes

    return {"destination": config.bodies_url(), "pending_on_disk": len(pending),
            "pending_bytes": sum(p.stat().st_size for p in pending),
            "journaled_bytes": journal_bytes(home.capture), **{
                k: daemon.get(k) for k in ("queued", "uploaded", "failures", "last_error",
                                           "updated_at")}}


def find_key(home: Path, store: BodyStore, request_id: str) -> str | None:
    """The object key of one request's body: from its metadata record's body_ref, or, for the
    local store, by looking in the day its time-ordered id names (and the days beside it)."""
    from steward.records.spool import read_records

    for record in read_records(Home(home).spool):
        if record.get("id") == request_id:
            ref = record.get("body_ref")
            return "/".join(ref.split("/")[-5:]) if ref else None
    if not isinstance(store, LocalStore):
        return None
    try:
        ms = uuid.UUID(request_id).int >> 80
    except ValueError:
        return None
    day = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).date()
    for when in (day, day - datetime.timedelta(days=1), day + datetime.timedelta(days=1)):
        key = store.locate(f"{request_id}.json.gz", when)
        if key is not None:
            return key
    return None


def read_document(home: Path, store: BodyStore, request_id: str) -> bytes:
    """One request's body document, decompressed: still waiting in pending-bodies/, or stored."""
    key = find_key(home, store, request_id)
    if key is None:
        raise StewardError(f"no body found for request {request_id}: no metadata record names "
                           "it (records are kept for metadata.retention) and it is not in the "
                           "local store")
    pending = pending_path(Home(home), key)
    try:
        data = pending.read_bytes()
    except FileNotFoundError:
        try:
            data = store.get(key)
        except Exception as exc:  # each store raises its own kinds of "not there"
            raise StewardError(f"cannot read the body of {request_id} ({store.url(key)}): "
                               f"{exc.__class__.__name__}: {exc}"[:400]) from None
    return open_document(data, request_id)
