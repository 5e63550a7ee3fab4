"""Several workers: the main process binds the sockets, starts the workers, and is the only
one that speaks to systemd (the unit keeps NotifyAccess=main).

Each worker serves the shared listening sockets and, from its own event loop, sends the main
process a small datagram every half tick: "I am serving, and these are my figures". The main
process turns those into READY=1 (once every worker serves), WATCHDOG=1 (only while every
worker's loop answers), and one STATUS= line for all. Signals go to the main process only:
SIGTERM says STOPPING=1 at once and drains every worker; SIGHUP validates steward.toml here
and reloads the workers in place only when it is valid; a worker that dies is replaced, and one
that cannot start stops the service with a non-zero status.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from hypercorn.config import Sockets

from steward.config import Config, load_config
from steward.daemon.notify import ServiceStatus, tick_seconds, watchdog_seconds
from steward.errors import StewardError

log = logging.getLogger("steward")

MAX_DATAGRAM = 8192
STOP_WORKER = signal.SIGUSR1  # main -> worker: drain (a second one: exit now)


class InProcessReporter:
    """One worker in the main process: its own loop feeds the service status directly."""

    def __init__(self) -> None:
        watchdog = watchdog_seconds()
        self.interval = tick_seconds(watchdog)
        self.status = ServiceStatus(1, watchdog)

    def beat(self, figures: dict[str, float]) -> None:
        self.status.beat(0, figures)
        self.status.tick()

    def stop(self) -> None:
        self.status.stop()


class WorkerReporter:
    """One of several workers: a datagram to the main process, never blocking the loop."""

    def __init__(self, channel: socket.socket, interval: float):
        channel.setblocking(False)
        self.channel = channel
        self.interval = interval
        self.pid = os.getpid()

    def beat(self, figures: dict[str, float]) -> None:
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError, OSError):
            self.channel.send(json.dumps({"pid": self.pid, "figures": figures}).encode())

    def stop(self) -> None:
        """The main process has already said STOPPING=1."""


def worker_main(home: str, sockets: Sockets, channel: socket.socket, interval: float) -> None:
    """A worker process: serve until the main process says stop (STOP_WORKER)."""
    import uvloop

    from steward.daemon.logs import configure as configure_logging
    from steward.daemon.server import hypercorn_config, serve_worker

    # Signals sent to the whole group reach every process; only the main one acts on them.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    try:
        config = load_config(Path(home))
    except StewardError as exc:
        configure_logging()
        log.error("worker cannot start: %s", exc)
        raise SystemExit(2) from None
    configure_logging(config.server.log_format)
    reporter = WorkerReporter(channel, interval)
    uvloop.run(serve_worker(config, hypercorn_config(config), sockets, reporter))


Reporter = InProcessReporter | WorkerReporter


@dataclass
class _Slot:
    process: BaseProcess
    started_at: float
    ready: bool = False


class Supervisor:
    def __init__(self, config: Config, sockets: Sockets):
        self.config = config
        self.sockets = sockets
        self.workers = config.server.workers
        watchdog = watchdog_seconds()
        self.tick = tick_seconds(watchdog)
        beat = self.tick / 2
        self.status = ServiceStatus(self.workers, watchdog, stale_after=max(1.0, 3 * beat))
        self.beat = beat
        self.slots: dict[int, _Slot] = {}
        self.context = multiprocessing.get_context("spawn")
        self.inbox, self.outbox = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.inbox.setblocking(False)
        self.signals: list[int] = []
        self.exit_code = 0
        self._hung: set[int] = set()

    # -- workers ----------------------------------------------------------------------------

    def _spawn(self) -> None:
        process = self.context.Process(
            target=worker_main, name="steward-worker",
            args=(str(self.config.home), self.sockets, self.outbox, self.beat))
        process.start()
        assert process.pid is not None
        self.slots[process.pid] = _Slot(process, time.monotonic())
        log.info("worker started (pid %d)", process.pid)

    def _signal_workers(self, signum: int) -> None:
        for pid in list(self.slots):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def _reap(self) -> None:
        for pid, slot in list(self.slots.items()):
            code = slot.process.exitcode
            if code is None:
                continue
            slot.process.join()
            del self.slots[pid]
            self.status.forget(pid)
            self._hung.discard(pid)
            if self.status.stopping:
                # A worker still starting when told to stop had served nothing to drain.
                if code != 0 and not (code == -STOP_WORKER and not slot.ready):
                    log.error("worker %d exited with status %s while draining", pid, code)
                    self.exit_code = 1
                continue
            if not slot.ready:
                log.error("worker %d exited with status %s before it could serve; stopping "
                          "Steward (see the worker's log lines above)", pid, code)
                self.exit_code = 1
                self._stop()
                continue
            log.error("worker %d exited unexpectedly with status %s; starting a new one",
                      pid, code)
            self._spawn()

    # -- messages and signals ---------------------------------------------------------------

    def _read_inbox(self) -> None:
        while True:
            try:
                data = self.inbox.recv(MAX_DATAGRAM)
            except BlockingIOError:
                return
            try:
                message: dict[str, Any] = json.loads(data)
                pid = int(message["pid"])
            except (ValueError, KeyError, TypeError):
                continue
            slot = self.slots.get(pid)
            if slot is None:
                continue
            slot.ready = True
            self.status.beat(pid, message.get("figures") or {})

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            if self.status.stopping:
                log.warning("second %s: workers exit now without draining",
                            signal.Signals(signum).name)
                self._signal_workers(STOP_WORKER)  # a worker's second one: exit now
                return
            log.info("%s: no new connections; draining in-flight requests for up to %gs",
                     signal.Signals(signum).name, self.config.server.drain_timeout)
            self._stop()
        elif signum == signal.SIGHUP:
            self._reload()

    def _stop(self) -> None:
        self.status.stop()  # STOPPING=1 before the drain starts
        self._signal_workers(STOP_WORKER)

    def _reload(self) -> None:
        """Validate here; the workers reload in place only a configuration that loads."""
        try:
            load_config(self.config.home)
        except StewardError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        log.info("reloading %d workers", len(self.slots))
        self._signal_workers(signal.SIGHUP)

    def _check_hung(self) -> None:
        hung = set(self.status.hung()) & {p for p, s in self.slots.items() if s.ready}
        for pid in hung - self._hung:
            log.error("worker %d has not answered for %.1fs: withholding the watchdog ping",
                      pid, self.status.stale_after)
        for pid in self._hung - hung:
            log.info("worker %d answers again", pid)
        self._hung = hung

    # -- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous = signal.set_wakeup_fd(wake_w)
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        for signum in handled:
            signal.signal(signum, lambda s, _f: self.signals.append(s))
        try:
            for _ in range(self.workers):
                self._spawn()
            next_tick = time.monotonic()
            while self.slots:
                timeout = max(0.0, next_tick - time.monotonic())
                sentinels = [s.process.sentinel for s in self.slots.values()]
                readable, _, _ = select.select([self.inbox, wake_r, *sentinels], [], [],
                                               timeout)
                if wake_r in readable:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                while self.signals:
                    self._on_signal(self.signals.pop(0))
                announced = self.status.announced
                self._read_inbox()
                self._reap()
                if not announced and self.status.all_ready():
                    next_tick = 0.0  # READY=1 now, not at the next tick
                if time.monotonic() >= next_tick:
                    self._check_hung()
                    self.status.tick()
                    next_tick = time.monotonic() + self.tick
        finally:
            signal.set_wakeup_fd(previous)
            for signum in handled:
                signal.signal(signum, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            self.inbox.close()
            self.outbox.close()
        return self.exit_code
