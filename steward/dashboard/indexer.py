"""Follows the spool into the dashboard's store, in the background, off the request path.

Like the uploader, one process of several workers does it: the one holding
Home.dashboard_lock; another takes over when it exits. Records are seen within POLL_SECONDS
of reaching the spool file (each is one write(), visible at once to other processes; the
fsync timer only bounds what a power cut takes).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from typing import Any

from steward.dashboard import store
from steward.home import Home
from steward.records.spool import segments

log = logging.getLogger("steward.dashboard")

POLL_SECONDS = 0.25
LOCK_RETRY_SECONDS = 2.0
PRUNE_SECONDS = 3600.0


class Indexer:
    def __init__(self, home: Home):
        self.home = home
        self.status: dict[str, Any] = {"lock_held": False, "indexed": 0, "last_indexed_at": None,
                                       "last_error": None}
        self._conn: sqlite3.Connection | None = None
        self._lock_fd = -1
        self._seen: dict[str, int] | None = None  # segment sizes when last indexed whole

    async def run(self) -> None:
        try:
            while not await asyncio.to_thread(self._try_lock):
                await asyncio.sleep(LOCK_RETRY_SECONDS)
            self.status["lock_held"] = True
            pruned = 0.0
            while True:
                try:
                    result = await asyncio.to_thread(self._step)
                    if time.monotonic() - pruned >= PRUNE_SECONDS:
                        await asyncio.to_thread(store.prune, self._connection(), time.time())
                        pruned = time.monotonic()
                    self.status["last_error"] = None
                except (OSError, sqlite3.Error) as exc:  # the disk, or a rebuild holding it
                    if self.status["last_error"] != str(exc):
                        log.error("dashboard indexing paused (%s); retrying", exc)
                    self.status["last_error"] = str(exc)
                    await asyncio.sleep(1.0)
                    continue
                if not result.more:
                    await asyncio.sleep(POLL_SECONDS)
        finally:
            self.status["lock_held"] = False
            await asyncio.to_thread(self._close)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = store.connect(self.home)
        return self._conn

    def _step(self) -> store.StepResult:
        sizes = _sizes(self.home)
        if sizes == self._seen:  # nothing written since: no transaction, no thread of work
            return store.StepResult()
        result = store.step(self._connection(), self.home)
        if not result.more:
            self._seen = sizes
        if result.records:
            self.status["indexed"] += result.records
            self.status["last_indexed_at"] = time.time()
        return result

    def _try_lock(self) -> bool:
        try:
            self.home.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.home.dashboard_lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            log.error("cannot open the dashboard indexer lock %s (%s); retrying",
                      self.home.dashboard_lock, exc)
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the lock for another worker
            self._lock_fd = -1


def _sizes(home: Home) -> dict[str, int]:
    sizes = {}
    for path in segments(home.spool):
        with contextlib.suppress(FileNotFoundError):
            sizes[path.name] = path.stat().st_size
    return sizes
