"""The body writer process: one per serving worker, so building and storing bodies never
shares the worker's GIL, started and stopped by the worker's Gateway.

It reads the worker's capture journal (bodies/journal.py), hands each capture to a BodyWriter
(build, store, retry, spill to pending-bodies/), and lets frames go only once their bodies are
durable (after the local store's flush). Twice a second it sends the worker its figures (a
datagram; the worker's /readyz, metrics and `bucket status` show them). It stops when the
worker says so (a "stop" datagram), or when the worker is gone: it finishes what is
journaled, within `drain` seconds, and exits; what is left waits in the journal for the next
start.
Group signals (SIGTERM, SIGINT from systemd or a terminal) are the worker's to act on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steward.bodies.stores import StoreSettings, open_store
from steward.bodies.writer import BodyWriter
from steward.wakeup import sleep_or_wake

if TYPE_CHECKING:
    from steward.bodies.journal import CaptureJournal

log = logging.getLogger("steward.bodies")

STOP = b"stop"  # the worker's one message
NAME = b"steward-bodies"  # its /proc comm, to tell it from a worker
REPORT_SECONDS = 0.5
READ_BYTES = 8 * 1024**2  # frames read per pass
BUSY_POLL, IDLE_POLL = 0.01, 0.05  # seconds between looks at the journal
NICE = 10  # a tenth of a serving worker's weight when both want the same core


@dataclass
class Options:
    """What the process needs besides the store: plain values, sent at spawn."""

    home: str
    journal: str
    owner: int  # the worker's pid: its segments are this process's
    workers: int
    queue_bytes: int
    flush_interval: float | None
    log_format: str
    drain: float
    # The configured wire formats: a plugin format's credential headers must be known here
    # too, or they would not be redacted from the documents this process builds.
    formats: tuple[str, ...] = ()


def main(settings: StoreSettings, options: Options, channel: socket.socket) -> None:
    """The process's entry point (multiprocessing, spawn)."""
    import uvloop

    from steward.daemon.logs import configure

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    # Background work: on a busy core the serving worker's loop goes first, and bodies wait
    # in the journal a little longer.
    with contextlib.suppress(OSError):
        os.nice(NICE)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(15, NAME, 0, 0, 0)  # PR_SET_NAME
    configure(options.log_format, access=False)
    uvloop.run(_serve(settings, options, channel))


async def _serve(settings: StoreSettings, options: Options, channel: socket.socket) -> None:
    from steward import providers
    from steward.bodies.journal import JournalReader

    for name in options.formats:
        providers.find(name)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    wake = asyncio.Event()
    channel.setblocking(False)

    def on_message() -> None:
        # "stop" from the worker; sent before this loop ran, it waited in the socket.
        with contextlib.suppress(BlockingIOError):
            while True:
                if channel.recv(64) == STOP:
                    stopping.set()
                    wake.set()

    loop.add_reader(channel.fileno(), on_message)
    store = await asyncio.to_thread(open_store, settings)
    writer = BodyWriter(store, Path(options.home), workers=options.workers,
                        queue_bytes=options.queue_bytes, flush_interval=options.flush_interval)
    writer.start()
    reader = JournalReader(Path(options.journal), options.owner)
    last_report = last_commit = 0.0
    commit_every = options.flush_interval or 1.0
    stop_by: float | None = None

    def report(final: bool = False) -> None:
        figures = {**writer.status(), "journal_backlog_bytes": reader.backlog(),
                   "running": not final}
        with contextlib.suppress(OSError):
            channel.send(json.dumps(figures).encode())

    async def commit() -> None:
        moved = reader.progress()
        if moved:
            await asyncio.to_thread(store.flush)  # durable in the store before we let go
            await asyncio.to_thread(reader.commit, moved)

    def done_for(future: asyncio.Future[bool]) -> Any:
        def done(durable: bool) -> None:
            if not future.done():
                future.set_result(durable)
        return done

    while True:
        now = time.monotonic()
        if os.getppid() != options.owner and not stopping.is_set():
            log.error("the worker (pid %d) is gone: storing what it journaled, then exiting",
                      options.owner)
            stopping.set()
        if stopping.is_set() and stop_by is None:
            stop_by = now + options.drain
        frames = []
        if stopping.is_set() or writer.queued_bytes < options.queue_bytes // 2:
            # On this loop, not in threads: it serves no caller, and a thread hop per look
            # cost more than the looking.
            reader.scan()  # also sees a segment the worker finished
            frames = reader.read(READ_BYTES)
        for frame in frames:
            future: asyncio.Future[bool] = loop.create_future()
            frame.capture.done = done_for(future)
            reader.track(frame, future)
        if frames:
            await writer.store_all([frame.capture for frame in frames])
        if now - last_commit >= commit_every or stopping.is_set():
            await commit()
            last_commit = now
        if now - last_report >= REPORT_SECONDS:
            report()
            last_report = now
        # Stopping: done once a fresh look found nothing more (the worker has finished its
        # segment before saying stop), or at the deadline.
        if stopping.is_set() and ((not frames and reader.idle())
                                  or (stop_by is not None and now >= stop_by)):
            break
        # A pause even when busy, so each pass takes many frames at once.
        await sleep_or_wake(wake, BUSY_POLL if frames or stopping.is_set() else IDLE_POLL)
    await writer.stop()  # whatever is queued: stored, or spilled to pending-bodies/
    await commit()
    left = reader.backlog()
    if left:
        log.warning("%d bytes of bodies wait in the capture journal for the next start", left)
    report(final=True)


class BodyProcess:
    """The worker's handle on its body writer process: start, restart if it dies, stop."""

    def __init__(self, settings: StoreSettings, options: Options, journal: CaptureJournal):
        self.journal = journal  # its status() shows our figures
        self.settings = settings
        self.options = options
        self.process: BaseProcess | None = None
        self.figures: dict[str, Any] = {}  # none yet: it is starting
        self._inbox, self._outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._inbox.setblocking(False)
        self._stopping = False
        self.restarts = 0

    def start(self) -> None:
        """Spawn it (in a thread: spawning takes a few ms, its imports a second)."""
        context = multiprocessing.get_context("spawn")
        process = context.Process(target=main, name="steward-bodies",
                                  args=(self.settings, self.options, self._outbox))
        process.start()
        self.process = process

    async def watch(self) -> None:
        """Read its reports (into the journal's status); a process that dies is started
        again (its frames wait)."""
        loop = asyncio.get_running_loop()
        arrived = asyncio.Event()
        loop.add_reader(self._inbox.fileno(), arrived.set)
        try:
            while True:
                await sleep_or_wake(arrived, 1.0)
                self._read()
                process = self.process
                if process is not None and not process.is_alive() and not self._stopping:
                    log.error("the body writer process (pid %s) exited with status %s; "
                              "starting a new one (bodies wait in the capture journal)",
                              process.pid, process.exitcode)
                    self.figures = self.journal.writer = {**self.figures, "running": False}
                    self.restarts += 1
                    await asyncio.sleep(min(30.0, 0.5 * 2 ** min(self.restarts, 6)))
                    await asyncio.to_thread(self.start)
        finally:
            loop.remove_reader(self._inbox.fileno())

    def _read(self) -> None:
        while True:
            try:
                data = self._inbox.recv(65536)
            except BlockingIOError:
                return
            with contextlib.suppress(ValueError):
                self.figures = self.journal.writer = json.loads(data)

    async def stop(self) -> None:
        """Tell it to finish and wait (its drain deadline, and a little more to exit)."""
        self._stopping = True
        process = self.process
        if process is None:
            return
        if process.is_alive():
            with contextlib.suppress(OSError):
                self._inbox.send(STOP)
            await asyncio.to_thread(process.join, self.options.drain + 5.0)
        if process.is_alive():
            log.error("the body writer process did not finish in time; its bodies wait in "
                      "the capture journal for the next start")
            process.kill()
            await asyncio.to_thread(process.join, 5.0)
        self._read()
        self._inbox.close()
        self._outbox.close()
