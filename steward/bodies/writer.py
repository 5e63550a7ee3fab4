"""Request and response bodies to the operator's bucket, off the critical path, none lost.

The request path hands a Capture to BodyWriter.submit() after the caller has its response.
Workers build the gzipped JSON document and upload it in threads, retrying with backoff.
What cannot be uploaded now (bucket down, queue full, shutting down) is spilled to
<home>/pending-bodies/ (temp file, fsync, rename) and uploaded later, also after a restart.
If that disk refuses too (full, read-only), the document waits in memory, within the queue's
byte budget, until the bucket or the disk takes it.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import contextlib
import datetime
import itertools
import json
import logging
import os
import random
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from steward.bodies.stores import BodyStore
from steward.config import min_free_bytes
from steward.errors import StewardError
from steward.files import write_atomic
from steward.providers import CREDENTIAL_HEADERS, CREDENTIAL_PARAMS
from steward.providers.base import rewrite_query
from steward.wakeup import sleep_or_wake

log = logging.getLogger("steward.bodies")

SCHEMA_VERSION = 1
REDACTED = "[REDACTED]"
# What a body document repeats from the metadata record.
BODY_META = ("id", "ts", "api_key_id", "provider", "endpoint", "model", "response_model",
             "method", "path", "stream", "status")
# Headers never stored: every format's credential headers (CREDENTIAL_HEADERS, kept up to date
# as formats register), the gateway key, and the usual secrets of any HTTP exchange.
SECRET_HEADERS = {"proxy-authorization", "cookie", "set-cookie", "x-majordomo-key"}
PENDING_DIR = "pending-bodies"
BODIES_STATUS = "bodies-status.json"  # written by the gateway for `steward bucket status`
PENDING_SUFFIX = ".json.gz"
LARGE_BODY = 4 * 1024 * 1024
SPACE_CHECK_SECONDS = 1.0
# A captured response past this many bytes goes on to a temporary file as it arrives, written
# by a thread a piece at a time, and its document is built reading it back: any size of body
# then costs about this much memory.
SPILL_AT = 8 * 1024 * 1024
# A compressed response is stored decompressed up to the same size, else as it came: a bomb's
# build (which may run beside a large one) never inflates more.
MAX_DECODED_BODY = SPILL_AT
DECODE_PIECE = 1024 * 1024
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
                piece = self.file.read(min(DECODE_PIECE, left))
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


def redact_headers(headers: list[tuple[bytes, bytes]]) -> list[list[str]]:
    out = []
    for name, value in headers:
        text = name.decode("latin-1").lower()
        secret = text in SECRET_HEADERS or name.lower() in CREDENTIAL_HEADERS
        out.append([text, REDACTED if secret else value.decode("latin-1")])
    return out


def redact_query(query: bytes) -> str:
    """The query with every format's credential parameter (Gemini's `key`) redacted."""
    return rewrite_query(query, CREDENTIAL_PARAMS, REDACTED)[1].decode("latin-1")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN/Infinity: Python reads them, others don't


def encode_body(data: bytes | bytearray, content_type: str, streamed: bool
                ) -> tuple[bytes | bytearray, str]:
    """The body as JSON text for the document, and how it is encoded there.

    A JSON body goes in as the very bytes that passed (checked once, never re-serialised); a
    stream as the exact text the caller got; other text as a string; anything else base64."""
    if not data:
        return b"null", "empty"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return json.dumps(base64.b64encode(data).decode()).encode(), "base64"
    if "json" in content_type and not streamed:
        try:
            json.loads(text, parse_constant=_reject_constant)
            return data, "json"
        except (ValueError, RecursionError):  # too deep for Python is kept as text
            pass
    return json.dumps(text, ensure_ascii=False).encode(), "sse" if streamed else "text"


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    return next((v.decode("latin-1") for k, v in headers if k.lower() == name), "")


def _decoded(data: bytes, encoding: str) -> bytes | bytearray | None:
    """The readable body: a gzip/deflate response decompressed, a piece at a time and only up
    to MAX_DECODED_BODY (a bomb is never inflated whole); None if it cannot be."""
    if encoding not in ("gzip", "deflate"):
        return data
    decoder = zlib.decompressobj(32 + 15 if encoding == "gzip" else 15)
    out = bytearray()
    try:
        while True:
            piece = decoder.decompress(data, DECODE_PIECE)
            out += piece
            if len(out) > MAX_DECODED_BODY:
                return None
            data = decoder.unconsumed_tail
            if not data and len(piece) < DECODE_PIECE:
                return out
    except zlib.error:
        return None


def _with_body(fields: dict[str, Any], data: bytes | bytearray | None, content_type: str,
               streamed: bool, raw: bytes = b"") -> list[bytes | bytearray]:
    """fields as a JSON object with "body" and "body_encoding" added, as pieces to write.
    data None: the raw bytes could not be decoded, and are stored as they came, in base64."""
    if data is None:
        body, encoding = json.dumps(base64.b64encode(raw).decode()).encode(), "base64"
    else:
        body, encoding = encode_body(data, content_type, streamed)
    head = json.dumps({**fields, "body_encoding": encoding}, ensure_ascii=False).encode()
    return [head[:-1], b', "body": ', body, b"}"]


def _spilled_body(capture: Capture, encoding: str, streamed: bool
                  ) -> tuple[str, Iterator[bytes]]:
    """A spilled response's body_encoding and its JSON text, a piece at a time from the file:
    as it came in base64 if compressed or not UTF-8, else as escaped text (a large JSON body
    too, which is not parsed whole to check it)."""
    kind = "base64"
    if encoding not in ("gzip", "deflate"):
        check = codecs.getincrementaldecoder("utf-8")()
        try:
            for piece in capture.response_pieces():
                check.decode(piece)
            check.decode(b"", final=True)
            kind = "sse" if streamed else "text"
        except UnicodeDecodeError:
            pass

    def text() -> Iterator[bytes]:
        yield b'"'
        if kind == "base64":
            rest = b""
            for piece in capture.response_pieces():
                data = rest + piece
                cut = len(data) - len(data) % 3
                yield base64.b64encode(data[:cut])
                rest = data[cut:]
            yield base64.b64encode(rest)
        else:
            decoder = codecs.getincrementaldecoder("utf-8")()
            for piece in capture.response_pieces():
                yield json.dumps(decoder.decode(piece), ensure_ascii=False)[1:-1].encode()
        yield b'"'
    return kind, text()


def build_document(capture: Capture) -> bytes:
    """The gzipped JSON object (CPU-heavy for big bodies: runs in a worker thread).

    Written piece by piece into the compressor, so a large body is never copied into one big
    document string first; a spilled one is read back from its file a piece at a time."""
    response_type = _header(capture.response_headers, b"content-type")
    encoding = _header(capture.response_headers, b"content-encoding").strip().lower()
    streamed = (response_type.startswith("text/event-stream")
                or capture.meta.get("stream", False))
    meta = json.dumps({"schema": SCHEMA_VERSION, **capture.meta}, ensure_ascii=False).encode()
    request = _with_body(
        {"method": capture.meta.get("method"), "path": capture.meta.get("path"),
         "query": redact_query(capture.query),
         "headers": redact_headers(capture.request_headers)},
        capture.request_body, _header(capture.request_headers, b"content-type"), False)
    fields = {"status": capture.response_status,
              "headers": redact_headers(capture.response_headers)}
    response: Iterable[bytes | bytearray]
    if capture.spill is None:
        response_body = b"".join(capture.response_chunks)
        response = _with_body(fields, _decoded(response_body, encoding), response_type,
                              streamed, raw=response_body)
    else:
        kind, body = _spilled_body(capture, encoding, streamed)
        head = json.dumps({**fields, "body_encoding": kind}, ensure_ascii=False).encode()
        response = itertools.chain((head[:-1], b', "body": '), body, (b"}",))
    gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)  # 16+: a gzip container
    pieces = [gz.compress(piece) for piece in itertools.chain(
        (meta[:-1], b', "request": '), request, (b', "response": ',), response, (b"}",))]
    pieces.append(gz.flush())
    return b"".join(pieces)


class BodyWriter:
    def __init__(self, store: BodyStore, home: Path, *, workers: int, queue_bytes: int,
                 attempts: int = 4, flush_interval: float | None = None,
                 guard_dir: Path | None = None, min_free: str = "0"):
        self.store = store
        # bodies.min_free: below it on guard_dir's disk no body is written locally, and each
        # record says why (`refusing`); checked every second off the loop.
        self.guard_dir = guard_dir
        self.min_free = min_free
        self.refusing: str | None = None
        self.refused = 0
        self.free_bytes: int | None = None
        self.flush_interval = flush_interval  # store.flush() this often (None, 0: never)
        self.pending_dir = home / PENDING_DIR
        self.workers = workers
        self.queue_bytes = queue_bytes
        self.attempts = attempts
        self.queue: asyncio.Queue[Capture | None] = asyncio.Queue()
        self.queued_bytes = 0
        self.uploaded = 0
        self.spilled = 0
        self.failures = 0
        self.lost = 0
        self.failing = False  # the last attempt to store a body failed
        self.last_error: str | None = None
        self.held: list[tuple[str, bytes]] = []  # neither uploaded nor on disk yet
        self.held_bytes = 0
        self.pending_count = 0  # files in pending-bodies/, as of the drain loop's last look
        self._tasks: list[asyncio.Task[None]] = []  # the workers
        self._background: list[asyncio.Task[None]] = []  # draining and flushing
        self._wake_drain = asyncio.Event()
        self._large_builds = asyncio.Semaphore(1)
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
        if self.guard_dir is not None and self.min_free.strip() not in ("0", "0b"):
            self._background.append(asyncio.create_task(self._watch_space()))
        if self.flush_interval:
            self._background.append(asyncio.create_task(self._flush_periodically()))

    async def submit(self, capture: Capture) -> None:
        """Queue a body; over the memory budget, spill it to disk first (in a thread)."""
        if capture.spill is not None:
            await capture.spill.settle()
        if self.queued_bytes + self.held_bytes + capture.size > self.queue_bytes:
            async with self._building(capture):
                data, stored = await asyncio.to_thread(self._spill_capture, capture)
            if stored:
                self._spilled()
            else:
                await self._keep(capture.key, data)
            return
        self.queued_bytes += capture.size
        self.queue.put_nowait(capture)

    async def stop(self) -> None:
        """Drain: whatever is still queued is uploaded if the bucket answers, else spilled."""
        self._stopping = True
        for _ in range(self.workers):
            self.queue.put_nowait(None)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.held and await self._retry_held():
            self.lost += len(self.held)
            log.error("LOST %d BODIES at shutdown: neither the bucket nor %s took them (%s)",
                      len(self.held), self.pending_dir, self.last_error)
        if self.flush_interval:
            await self._flush()

    def refuse(self) -> str | None:
        """Per request: why its body will not be stored (the disk is low), else None."""
        if self.refusing is not None:
            self.refused += 1
        return self.refusing

    async def _watch_space(self) -> None:
        assert self.guard_dir is not None
        while True:
            try:
                st = await asyncio.to_thread(os.statvfs, self.guard_dir)
            except OSError:
                st = None  # not there yet: the first body creates it
            if st is not None:
                free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
                floor = min_free_bytes(self.min_free, total)
                self.free_bytes = free
                if free < floor and self.refusing is None:
                    self.refusing = (f"not stored: {free / 2**20:.1f} MiB free on "
                                     f"{self.guard_dir}, under bodies.min_free "
                                     f"({floor / 2**20:.1f} MiB)")
                    log.error("bodies: %s; requests are served, their bodies are not kept "
                              "until space returns", self.refusing.removeprefix("not stored: "))
                elif free >= floor and self.refusing is not None:
                    self.refusing = None
                    log.warning("bodies: %.1f MiB free on %s, back above bodies.min_free; "
                                "storing bodies again", free / 2**20, self.guard_dir)
            await asyncio.sleep(SPACE_CHECK_SECONDS)

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
            return sorted(p.name for p in self.pending_dir.glob(f"*{PENDING_SUFFIX}"))
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
                continue
            finally:
                self.queued_bytes -= capture.size  # counted until its document exists
            if stored:
                continue
            # Shutting down: no more tries, straight to disk, so the drain meets its deadline.
            if self._stopping or not await self._upload(capture.key, data,
                                                        attempts=self.attempts - 1):
                await self._keep(capture.key, data)

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
        try:
            data = build_document(capture)
        finally:
            capture.release()
        return data, self._put(capture.key, data)

    def _spill_capture(self, capture: Capture) -> tuple[bytes, bool]:
        try:
            data = build_document(capture)
        finally:
            capture.release()
        return data, self._spill(capture.key, data)

    def _spill(self, key: str, data: bytes) -> bool:
        """Atomically to local disk (in a worker thread); False if the disk refused it."""
        try:
            write_atomic(self.pending_dir / key.replace("/", "__"), data)
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

    async def _keep(self, key: str, data: bytes) -> None:
        """To disk; if the disk refuses, into memory (loudly) for the drain loop to retry.
        The request has succeeded either way."""
        if await self._spill_now(key, data):
            return
        if self.held_bytes + self.queued_bytes + len(data) > self.queue_bytes:
            self.lost += 1
            log.error("LOST BODY %s: the bucket and %s both refuse it (%s) and %d bodies "
                      "already wait in memory", key, self.pending_dir, self.last_error,
                      len(self.held))
            return
        if not self.held:
            log.error("cannot write bodies to %s (%s): keeping them in memory (within "
                      "bodies.queue_bytes) until the bucket or the disk takes them",
                      self.pending_dir, self.last_error)
        self.held.append((key, data))
        self.held_bytes += len(data)

    async def _retry_held(self) -> bool:
        """Bodies held in memory: to the bucket if it answers, else to disk. True if any left."""
        while self.held:
            key, data = self.held[0]
            if (not await self._upload(key, data, attempts=1, quiet=True)
                    and not await self._spill_now(key, data)):
                return True
            self.held.pop(0)
            self.held_bytes -= len(data)
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
            progressed = False
            for name in names:
                path = self.pending_dir / name
                try:
                    data = await asyncio.to_thread(path.read_bytes)
                except OSError:
                    continue  # gone (another worker sent it) or unreadable: next one
                if not await self._upload(name.replace("__", "/"), data, attempts=1,
                                          quiet=True):
                    break
                try:
                    await asyncio.to_thread(path.unlink, True)
                except OSError as exc:  # stored; re-sending it later is harmless
                    log.error("could not remove uploaded body %s: %s", path, exc)
                self.pending_count -= 1
                progressed = True
            delay = 1.0 if progressed or held or not names else min(delay * 2, 30.0)
            await sleep_or_wake(self._wake_drain, delay)

    def status(self) -> dict[str, Any]:
        return {"queued": self.queue.qsize(), "queued_bytes": self.queued_bytes,
                "pending": self.pending_count, "uploaded": self.uploaded, "spilled": self.spilled,
                "failures": self.failures, "failing": self.failing,
                "last_error": self.last_error,
                "held": len(self.held), "held_bytes": self.held_bytes, "lost": self.lost,
                "refusing": self.refusing, "refused_low_space": self.refused,
                "free_bytes": self.free_bytes,
                "updated_at": time.time()}

    def write_status(self, home: Path) -> None:
        with contextlib.suppress(OSError):
            write_atomic(home / BODIES_STATUS, json.dumps(self.status()).encode())


def find_key(home: Path, store: BodyStore, request_id: str) -> str | None:
    """The object key of one request's body: from its metadata record's body_ref, or, for the
    local store, by looking in the day its time-ordered id names (and the days beside it)."""
    from steward.bodies.stores import LocalStore
    from steward.records.spool import read_records

    for record in read_records(home / "spool"):
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
        pattern = f"*/{when:%Y/%m/%d}/{request_id}.json.gz"
        for path in store.root.glob(pattern):
            return str(path.relative_to(store.root))
    return None


def read_document(home: Path, store: BodyStore, request_id: str) -> bytes:
    """One request's body document, decompressed: still waiting in pending-bodies/, or stored."""
    key = find_key(home, store, request_id)
    if key is None:
        raise StewardError(f"no body found for request {request_id}: no metadata record names "
                           "it (records are kept for metadata.retention) and it is not in the "
                           "local store")
    pending = home / PENDING_DIR / key.replace("/", "__")
    try:
        data = pending.read_bytes()
    except FileNotFoundError:
        try:
            data = store.get(key)
        except Exception as exc:  # each store raises its own kinds of "not there"
            raise StewardError(f"cannot read the body of {request_id} ({store.url(key)}): "
                               f"{exc.__class__.__name__}: {exc}"[:400]) from None
    try:
        return zlib.decompress(data, 16 + zlib.MAX_WBITS)
    except zlib.error as exc:
        raise StewardError(f"the stored body of {request_id} is not gzip: {exc}") from None
