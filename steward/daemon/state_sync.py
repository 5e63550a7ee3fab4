"""Changes from the shared PostgreSQL database reach this node within a second.

A dedicated connection LISTENs on the change channel in the background (never on the request
path); each notification makes the gateway reload from its own connection. Every POLL_SECONDS
the steward_changes counters are read too, so a lost notification is caught up. When the
database is unreachable the node keeps serving what it has (fail static), says so in /readyz,
/metrics and the log, reconnects with backoff, and reloads everything once it is back: the
changes it missed are in the rows, whatever notifications it did not hear.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from steward.backoff import retry_delay
from steward.postgres import CHANNEL, KINDS, Target, generations

log = logging.getLogger("steward")

POLL_SECONDS = 10.0
RECONNECT_CEILING = 0.5  # seconds between attempts at most: caught up within a second of return
QUERY_TIMEOUT = 5.0


class StateSync:
    def __init__(self, target: Target, on_change: Callable[[frozenset[str]], Awaitable[None]]):
        self.target = target
        self.on_change = on_change
        self.connected = False
        self.since = time.time()  # when `connected` last changed
        self.last_error: str | None = None
        self.outages = 0
        self._seen: dict[str, int] = {}

    def status(self) -> dict[str, Any]:
        return {"backend": "postgresql", "database": self.target.name,
                "connected": self.connected, "since": round(self.since, 3),
                "last_error": self.last_error, "outages": self.outages}

    async def run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every driver or network failure: serve on, retry
                detail = self.target.describe(exc)
                if self.connected or self.last_error is None:
                    log.error("the gateway database %s is unreachable; serving with the keys, "
                              "provider keys and prices already loaded until it is back: %s",
                              self.target.name, detail)
                    self.outages += 1
                if self.connected:
                    self.since = time.time()
                self.connected = False
                self.last_error = detail
                attempt += 1
                await asyncio.sleep(retry_delay(None, attempt, RECONNECT_CEILING, base=0.1))
            else:
                attempt = 0

    async def _listen(self) -> None:
        import psycopg

        args = self.target.connect_args()
        async with await psycopg.AsyncConnection.connect(self.target.url, **args) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self._seen = await self._generations(conn)
            if not self.connected:
                if self.last_error is not None:
                    log.warning("the gateway database %s is back; reloading what changed",
                                self.target.name)
                self.connected, self.since, self.last_error = True, time.time(), None
            # Listening from here: whatever changed before (start-up, an outage) is read now.
            await self.on_change(frozenset(KINDS))
            while True:
                kinds = set()
                async for note in conn.notifies(timeout=POLL_SECONDS, stop_after=1):
                    kinds.add(note.payload)
                if kinds:
                    await self.on_change(frozenset(kinds))
                    continue
                # Quiet for POLL_SECONDS: compare the counters, for notifications lost.
                now = await self._generations(conn)
                missed = frozenset(k for k, g in now.items() if self._seen.get(k) != g)
                self._seen = now
                if missed:
                    log.info("caught up on %s changes the poll found", ", ".join(sorted(missed)))
                    await self.on_change(missed)

    async def _generations(self, conn: Any) -> dict[str, int]:
        async def read() -> dict[str, int]:
            cursor = await conn.execute("SELECT kind, generation FROM steward_changes")
            return generations(await cursor.fetchall())

        return await asyncio.wait_for(read(), QUERY_TIMEOUT)
