"""The capture journal: how a serving worker hands its bodies to the body writer process.

Building a body document (JSON, gzip) and storing it cost more CPU than proxying the request,
and in threads of the serving process they also fight its event loop for the GIL. So the
worker does one thing per request: it appends the bytes as they passed, as one frame, with one
write(), to a segment of <home>/capture/ (this module alone reads and writes that directory).
Its body writer process (bodies/process.py) reads the frames, builds, stores, and lets a
segment go only once every body in it is durable: in the bucket (flushed, for the local store)
or in pending-bodies/. A killed worker or body process loses nothing: the frames are on disk.

Segments are named <UTC time>-<writer pid>-<sequence><random>; `.open` while the worker
appends, renamed `.capture` when it moves on (size, age, shutdown). A segment still `.open`
whose writer is dead is treated as finished, its torn last frame (if any) skipped.

A frame: HEAD (magic, header length, request length, response length, CRC-32 of the rest),
then the header (a pickle of the capture's small fields: key, metadata, headers, query,
status), the request bytes, the response bytes. Pickle is safe here: only this process's own
kind writes the directory (mode 0700), and the CRC is checked before anything is unpickled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steward.bodies.writer import Capture
from steward.config import min_free_bytes
from steward.files import write_atomic
from steward.records.spool import Spool, segment_writer_alive

log = logging.getLogger("steward.bodies")

MAGIC = b"SCJ1"
HEAD = struct.Struct("<4sIQQI")  # magic, header, request and response lengths, CRC-32
OPEN, SEALED = ".open", ".capture"
SEGMENT_BYTES = 32 * 1024**2
SEGMENT_SECONDS = 60.0
INLINE_BYTES = 256 * 1024  # a larger capture is written by a thread, not on the event loop
SPACE_CHECK_SECONDS = 1.0


def encode(capture: Capture) -> list[bytes | bytearray]:
    """A capture as the pieces of one frame (joined by the writer), without the spill file."""
    header = pickle.dumps((capture.key, capture.meta, capture.request_headers, capture.query,
                           capture.response_status, capture.response_headers),
                          protocol=pickle.HIGHEST_PROTOCOL)
    body = capture.request_body
    chunks = capture.response_chunks
    response = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    crc = zlib.crc32(response, zlib.crc32(body, zlib.crc32(header)))
    return [HEAD.pack(MAGIC, len(header), len(body), len(response), crc), header, body,
            response]


def decode(header: bytes, request: bytes, response: bytes) -> Capture:
    key, meta, request_headers, query, status, response_headers = pickle.loads(header)
    capture = Capture(key, meta, request_headers, request, query)
    capture.response_status = status
    capture.response_headers = response_headers
    if response:
        capture.response_chunks = [response]
    return capture


class CaptureJournal(Spool):
    """The worker's side. It stands where the body writer stood for the proxy: `refuse()` per
    request (the disk is low), `url()` for the record, `submit()` after the response."""

    SUFFIX = OPEN
    FAILING = ("cannot write bodies to the capture journal in %s (%s): keeping them in memory "
               "(up to %d MiB) and retrying every %gs")
    LOST_ONE = ("LOST BODY %s: the capture journal in %s is still unwritable (%s) and %d "
                "bodies already wait in memory")
    RECOVERED = "the capture journal in %s is writable again after %.0fs; every held body " \
                "is written"

    def __init__(self, directory: Path, url: Callable[[str], str], *,
                 fsync_interval: float | None, queue_bytes: int,
                 guard_dir: Path | None = None, min_free: str = "0",
                 status_path: Path | None = None):
        super().__init__(directory, fsync_interval, SEGMENT_BYTES, SEGMENT_SECONDS,
                         max_held_bytes=queue_bytes)
        self.url = url
        # bodies.min_free: below it on guard_dir's disk no body is kept, and each record says
        # why (`refusing`); checked every second off the loop.
        self.guard_dir = guard_dir
        self.min_free = min_free
        self.refusing: str | None = None
        self.refused = 0
        self.free_bytes: int | None = None
        self.status_path = status_path  # for `steward bucket status`
        self.writer: dict[str, Any] = {}  # the body writer process's last report
        self._one_large = asyncio.Lock()  # one large capture written at a time
        self._large: set[asyncio.Future[None]] = set()  # being written
        self._large_bytes = 0

    # -- the hot path -----------------------------------------------------------------------

    def refuse(self) -> str | None:
        """Per request: why its body will not be stored (the disk is low), else None."""
        if self.refusing is not None:
            self.refused += 1
        return self.refusing

    def write_now(self, capture: Capture) -> bool:
        """A capture up to INLINE_BYTES: one frame, one write(), on the event loop (or held
        in memory if the disk refuses). False: it is larger, for submit()."""
        if capture.spill is not None or capture.size > INLINE_BYTES:
            return False
        self.write_bytes(b"".join(encode(capture)), capture.key)
        return True

    async def submit(self, capture: Capture) -> None:
        """Any capture. A large one (or one with a spill file) is written by a thread as a
        segment of its own, so the event loop never copies megabytes; the request does not
        wait for that write unless large ones already waiting hold bodies.queue_bytes."""
        if self.write_now(capture):
            return
        size = capture.total
        if self._large_bytes + size > self.max_held_bytes and self._large:
            await asyncio.wait(set(self._large))  # back-pressure: a burst of huge bodies
        self._large_bytes += size
        task = asyncio.ensure_future(self._submit_large(capture, size))
        self._large.add(task)
        task.add_done_callback(self._large.discard)

    async def _submit_large(self, capture: Capture, size: int) -> None:
        try:
            if capture.spill is not None:
                await capture.spill.settle()
            async with self._one_large:
                try:
                    await asyncio.to_thread(self._write_large, capture)
                    self.records += 1
                except OSError as exc:  # on a refusing disk, like any frame: held in memory
                    self._failed(exc)
                    frame = await asyncio.to_thread(_whole_frame, capture)
                    self._hold(frame, capture.key)
        finally:
            self._large_bytes -= size
            capture.release()

    async def drain(self) -> None:
        """At shutdown, before close(): every large capture written (or held)."""
        while self._large:
            await asyncio.wait(set(self._large))

    def _write_large(self, capture: Capture) -> None:
        """A frame with a large body, as its own sealed segment (temporary name, fsync,
        rename), so no small frame ever lands in the middle of it."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        pieces = _spilled_frame_start(capture)
        spill = capture.spill
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{stamp}-{os.getpid()}-{os.urandom(4).hex()}{SEALED}"
        temp = self.directory / (name + ".tmp")  # never listed: not .open, not .capture
        try:
            with open(temp, "wb") as fh:
                fh.writelines(pieces)
                if spill is not None:
                    fh.writelines(spill.read())
                fh.flush()
                if self.fsync_interval is not None:
                    os.fsync(fh.fileno())
            os.rename(temp, self.directory / name)
        except OSError:
            temp.unlink(missing_ok=True)
            raise

    # -- segments ---------------------------------------------------------------------------

    def _close_segment(self) -> None:
        """Moving on from a segment: it is renamed finished, for the body writer to let go."""
        path = self.path
        super()._close_segment()
        if path is not None and path.suffix == OPEN:
            try:
                os.rename(path, path.with_suffix(SEALED))
            except OSError as exc:  # still readable: a dead writer's .open counts as finished
                log.error("cannot mark capture segment %s finished: %s", path.name, exc)
            self.path = None

    def close(self) -> None:
        """At exit, held frames get a last try; failing that they are lost, loudly, with
        their object keys only (never a body in the log)."""
        if self._held and not self.retry():
            log.error("LOST %d BODIES at shutdown: the capture journal in %s is unwritable "
                      "(%s)", len(self._held), self.directory, self.last_error)
            self._held.give_up()
        self._close_segment()

    # -- the disk's free space --------------------------------------------------------------

    async def watch_space(self) -> None:
        if self.guard_dir is None or self.min_free.strip() in ("0", "0b"):
            return
        while True:
            try:
                st = await asyncio.to_thread(os.statvfs, self.guard_dir)
            except OSError:
                st = None  # not there yet: the first body creates it
            if st is not None:
                self._check_space(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)
            await asyncio.sleep(SPACE_CHECK_SECONDS)

    def _check_space(self, free: int, total: int) -> None:
        floor = min_free_bytes(self.min_free, total)
        self.free_bytes = free
        if free < floor and self.refusing is None:
            self.refusing = (f"not stored: {free / 2**20:.1f} MiB free on {self.guard_dir}, "
                             f"under bodies.min_free ({floor / 2**20:.1f} MiB)")
            log.error("bodies: %s; requests are served, their bodies are not kept until space "
                      "returns", self.refusing.removeprefix("not stored: "))
        elif free >= floor and self.refusing is not None:
            self.refusing = None
            log.warning("bodies: %.1f MiB free on %s, back above bodies.min_free; storing "
                        "bodies again", free / 2**20, self.guard_dir)

    def status(self) -> dict[str, Any]:
        """The body writer process's figures, with what waits here: frames the disk refused
        are held bodies too, and the journal's own backlog."""
        mine = super().status()
        writer = self.writer
        return {**writer,
                "held": writer.get("held", 0) + mine["held_records"],
                "held_bytes": writer.get("held_bytes", 0) + mine["held_bytes"],
                "lost": writer.get("lost", 0) + mine["lost_records"],
                "journal_write_errors": mine["write_errors"],
                "journal_last_error": mine["last_error"],
                "refusing": self.refusing, "refused_low_space": self.refused,
                "free_bytes": self.free_bytes}

    def write_status(self) -> None:
        """For `steward bucket status`, which reads it with writer.disk_status()."""
        if self.status_path is not None:
            with contextlib.suppress(OSError):
                write_atomic(self.status_path, json.dumps(self.status()).encode())


def _spilled_frame_start(capture: Capture) -> list[bytes | bytearray]:
    """A frame's pieces before the spill file's bytes, its head counting them (the spill is
    read once here for its length and CRC; the caller writes it after these)."""
    head, header, request, response = encode(capture)
    spill = capture.spill
    if spill is not None and spill.size:
        crc = zlib.crc32(response, zlib.crc32(request, zlib.crc32(header)))
        length = len(response)
        for piece in spill.read():
            crc = zlib.crc32(piece, crc)
            length += len(piece)
        head = HEAD.pack(MAGIC, len(header), len(request), length, crc)
    return [head, header, request, response]


def _whole_frame(capture: Capture) -> bytes:
    """One frame in memory, spill included: for a disk that refused it, to hold."""
    spill = capture.spill
    return b"".join([*_spilled_frame_start(capture), *(spill.read() if spill else ())])


# -- the body writer process's side -----------------------------------------------------------


@dataclass
class Frame:
    segment: str
    end: int  # the offset just past it
    capture: Capture


@dataclass
class Segment:
    name: str
    read: int = 0  # offset of the next frame to read
    committed: int = 0  # every frame before this is durable
    outstanding: list[tuple[int, asyncio.Future[bool]]] = field(default_factory=list)
    finished: bool = False  # sealed, or its writer is dead: no frame will be added


class JournalReader:
    """Reads frames in order from the segments it owns: those of one writer (the worker
    this process serves) and any whose writer died. Offsets survive a restart in
    `<segment>.done`, written after the bodies before it are durable."""

    def __init__(self, directory: Path, owner: int):
        self.directory = directory
        self.owner = owner
        self.segments: dict[str, Segment] = {}

    def _owned(self, path: Path) -> bool:
        try:
            pid = int(path.name.split("-")[1])
        except (IndexError, ValueError):
            return False
        return pid == self.owner or not segment_writer_alive(path)

    def scan(self) -> None:
        """Find new segments and notice finished ones (in a thread: a directory listing)."""
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return
        present = set()
        for name in names:
            path = self.directory / name
            if name.endswith(SEALED) or (name.endswith(OPEN)):
                stem = name.rsplit(".", 1)[0]
                present.add(stem)
                known = self.segments.get(stem)
                if known is None:
                    if not self._owned(path):
                        continue
                    known = Segment(name)
                    known.read = known.committed = _done_offset(path)
                    self.segments[stem] = known
                known.name = name
                known.finished = name.endswith(SEALED) or not segment_writer_alive(path)
        for stem in list(self.segments):
            if stem not in present and not self.segments[stem].outstanding:
                del self.segments[stem]

    def read(self, max_bytes: int) -> list[Frame]:
        """The next complete frames, up to about max_bytes (in a thread)."""
        frames: list[Frame] = []
        budget = max_bytes
        for segment in list(self.segments.values()):
            if budget <= 0:
                break
            before = segment.read
            frames += self._read_segment(segment, budget)
            budget -= segment.read - before
        return frames

    def _read_segment(self, segment: Segment, budget: int) -> list[Frame]:
        path = self.directory / segment.name
        frames: list[Frame] = []
        try:
            fh = open(path, "rb")  # noqa: SIM115 - a with block follows at once
        except FileNotFoundError:
            return frames
        with fh:
            fh.seek(segment.read)
            while budget > 0:
                start = segment.read
                head = fh.read(HEAD.size)
                if not head:
                    return frames
                parsed = _parse_head(head)
                if parsed is None:
                    self._torn(segment, path, start, "not a frame header")
                    return frames
                header_len, request_len, response_len, crc = parsed
                header = fh.read(header_len)
                request = fh.read(request_len)
                response = fh.read(response_len)
                if len(response) < response_len or len(header) < header_len \
                        or len(request) < request_len:
                    self._torn(segment, path, start, "incomplete")
                    return frames
                if zlib.crc32(response, zlib.crc32(request, zlib.crc32(header))) != crc:
                    self._torn(segment, path, start, "checksum mismatch")
                    return frames
                segment.read = fh.tell()
                budget -= segment.read - start
                try:
                    capture = decode(header, request, response)
                except Exception as exc:  # a frame we cannot read is skipped, loudly
                    log.error("skipping an unreadable frame in %s at %d: %s", segment.name,
                              start, exc)
                    continue
                frames.append(Frame(segment.name.rsplit(".", 1)[0], segment.read, capture))
        return frames

    def _torn(self, segment: Segment, path: Path, start: int, why: str) -> None:
        """The end of what its writer has written so far; if the writer is gone, a torn
        last frame (it died mid-write), skipped."""
        if segment.finished or not segment_writer_alive(path):
            size = path.stat().st_size
            if size > start:
                log.error("skipping %d bytes at the end of capture segment %s (%s): its "
                          "writer stopped mid-frame", size - start, segment.name, why)
            segment.read = max(segment.read, size)
            segment.finished = True

    def track(self, frame: Frame, done: asyncio.Future[bool]) -> None:
        self.segments[frame.segment].outstanding.append((frame.end, done))

    def progress(self) -> list[tuple[Segment, int]]:
        """Segments whose durable prefix grew, or that are finished and wholly durable:
        (segment, committed offset), for commit()."""
        moved = []
        for segment in self.segments.values():
            committed = segment.committed
            while segment.outstanding and segment.outstanding[0][1].done():
                end, done = segment.outstanding[0]
                if not done.result():
                    break
                segment.outstanding.pop(0)
                committed = end
            if not segment.outstanding:
                committed = segment.read
            if committed != segment.committed or (segment.finished and not segment.outstanding
                                                  and committed >= segment.read):
                moved.append((segment, committed))  # progress, or a finished one to let go
        return moved

    def commit(self, moved: list[tuple[Segment, int]]) -> None:
        """Record durable offsets; delete finished segments read to their end (in a thread,
        after the store's flush)."""
        for segment, offset in moved:
            segment.committed = offset
            path = self.directory / segment.name
            if segment.finished and offset >= segment.read and not segment.outstanding \
                    and offset >= _size(path):
                path.unlink(missing_ok=True)
                _done_path(path).unlink(missing_ok=True)
                continue
            try:
                _done_path(path).write_text(str(offset))
            except OSError as exc:  # the frames are re-read after a restart: stored twice
                log.error("cannot record progress in the capture journal: %s", exc)

    def backlog(self) -> int:
        """Bytes not yet durable in the segments this process owns."""
        total = 0
        for segment in self.segments.values():
            total += max(_size(self.directory / segment.name) - segment.committed, 0)
        return total

    def idle(self) -> bool:
        """Every owned segment finished, read to its end, nothing outstanding (as of the
        last scan)."""
        return all(s.finished and not s.outstanding and s.read >= _size(self.directory / s.name)
                   for s in self.segments.values())


def _parse_head(head: bytes) -> tuple[int, int, int, int] | None:
    if len(head) < HEAD.size:
        return None
    magic, header_len, request_len, response_len, crc = HEAD.unpack(head)
    if magic != MAGIC:
        return None
    return header_len, request_len, response_len, crc


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _done_path(path: Path) -> Path:
    return path.with_name(path.name.rsplit(".", 1)[0] + ".done")


def _done_offset(path: Path) -> int:
    try:
        return int(_done_path(path).read_text())
    except (OSError, ValueError):
        return 0


def journal_bytes(directory: Path) -> int:
    """Bytes waiting in the capture journal (for `steward bucket status`)."""
    try:
        return sum(p.stat().st_size for p in directory.iterdir()
                   if p.name.endswith((OPEN, SEALED)))
    except OSError:
        return 0

