"""systemd's sd_notify protocol, spoken only by the main process.

`notify` sends one datagram to $NOTIFY_SOCKET (a no-op when unset). `ServiceStatus` decides what
to say from what every worker reports: READY=1 once all of them serve, WATCHDOG=1 only while
each one's event loop still answers, STATUS= summed over all. One worker in one process feeds
it directly; several workers feed it through the supervisor (steward/supervisor.py), because the
unit's NotifyAccess=main drops anything a worker would send itself.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

log = logging.getLogger("steward")
_warned: list[bool] = []

# The figures a STATUS= line shows, summed over the workers.
STATUS_FIGURES = ("requests_served", "body_queue_depth", "bodies_pending_on_disk",
                  "spool_backlog_bytes")


def notify(message: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        # Non-blocking: called from the event loop, and a receiver whose queue is full must
        # cost us a dropped status line, never a stalled gateway.
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                           | socket.SOCK_NONBLOCK) as sock:
            sock.connect(address)
            sock.send(message.encode())
    except BlockingIOError:
        return False
    except OSError as exc:
        if not _warned:  # once: a vanished socket must not fill the log every few seconds
            _warned.append(True)
            log.warning("could not notify systemd (%s): %s", os.environ.get("NOTIFY_SOCKET"),
                        exc)
        return False
    return True


def watchdog_seconds() -> float:
    """systemd's WatchdogSec as this process sees it (0 when off, or meant for another pid)."""
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return 0.0
    try:
        return int(os.environ.get("WATCHDOG_USEC", "0") or 0) / 1e6
    except ValueError:
        return 0.0


def tick_seconds(watchdog: float) -> float:
    """How often the main process speaks: twice per watchdog period, at least once a second."""
    return min(watchdog / 2, 1.0) if watchdog else 1.0


@dataclass
class _Worker:
    ready: bool = False
    beat_at: float = 0.0
    figures: dict[str, float] = field(default_factory=dict)


@dataclass
class ServiceStatus:
    """What every worker said last, and what systemd has been told."""

    workers: int
    watchdog: float = 0.0
    stale_after: float = 1.5  # a worker whose loop has not answered for this long is hung
    _seen: dict[int, _Worker] = field(default_factory=dict)
    announced: bool = False
    stopping: bool = False

    def beat(self, worker: int, figures: dict[str, float], ready: bool = True,
             now: float | None = None) -> None:
        state = self._seen.setdefault(worker, _Worker())
        state.ready = state.ready or ready
        state.beat_at = time.monotonic() if now is None else now
        state.figures = figures

    def forget(self, worker: int) -> None:
        self._seen.pop(worker, None)

    def all_ready(self) -> bool:
        return sum(w.ready for w in self._seen.values()) >= self.workers

    def hung(self, now: float | None = None) -> list[int]:
        now = time.monotonic() if now is None else now
        return [pid for pid, w in self._seen.items() if now - w.beat_at > self.stale_after]

    def status_line(self) -> str:
        total = {name: sum(int(w.figures.get(name, 0)) for w in self._seen.values())
                 for name in STATUS_FIGURES}
        who = f" ({self.workers} workers)" if self.workers > 1 else ""
        return (f"STATUS=serving{who}; {total['requests_served']} requests; "
                f"{total['body_queue_depth']} bodies queued, "
                f"{total['bodies_pending_on_disk']} on disk; "
                f"spool backlog {total['spool_backlog_bytes']} bytes")

    def tick(self, now: float | None = None) -> None:
        """READY=1 once every worker serves; then WATCHDOG=1 while none is hung; STATUS=."""
        if self.stopping:
            return
        if not self.announced:
            if not self.all_ready():
                return
            self.announced = True
            notify("READY=1")
        if self.watchdog and not self.hung(now):
            notify("WATCHDOG=1")
        notify(self.status_line())

    def stop(self) -> None:
        """SIGTERM arrived: say so before the drain, and nothing after."""
        if not self.stopping:
            self.stopping = True
            notify("STOPPING=1")
