"""One worker's share of every budget: reserve and settle in memory, lease from the database.

A request's reservation fits when the worker's lease for that budget covers everything in
flight; most requests never wait. When one does not fit, it waits for the next sync (one
database transaction, in a thread, shared by every request waiting at that moment), which
tops the lease up from what no other worker holds. Every sync also moves settled spend into
the database and gives back the part of the lease this worker did not need lately, so an idle
worker holds nothing and the others can use it.

A worker that cannot reach the database keeps spending only what it already holds; after
LEASE_TTL / 2 without a sync it stops, because after LEASE_TTL another worker may charge its
lease as spent (see store.py) and hand out the rest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from steward import db
from steward.budgets import scopes, store
from steward.budgets.store import Budget
from steward.errors import StewardError

log = logging.getLogger("steward")

SYNC_SECONDS = float(os.environ.get("STEWARD_BUDGET_SYNC_SECONDS", "0.5"))
LEASE_TTL = 600.0
TOPUP_TIMEOUT = 5.0
IDLE_READ_SECONDS = 5.0  # nothing held or owed: only read the figures for /metrics this often
SYNC_LOCK = int.from_bytes(b"STEWBUDG", "big")  # one budget sync at a time, every node


@dataclass(slots=True)
class Account:
    """One budget in one period, as this worker holds it. All amounts in nanodollars."""

    budget: Budget
    start: str
    resets_at: float | None
    held: int = 0  # leased to this worker and not yet settled
    reserved: int = 0  # in flight here
    unsynced: int = 0  # settled here since the last sync
    waiting: int = 0  # reservations waiting for a top-up
    peak: int = 0  # the most in flight (and waiting) since the last sync
    recorded: bool = False  # the database has a lease row of this worker's for it
    spent_all: int = 0  # every holder's settled spend, as of the last sync
    free_all: int = 0  # what nobody held at the last sync
    slack: int = 0  # other workers' leases not in flight at their last syncs


@dataclass(slots=True)
class Shortfall:
    """Why a reservation does not fit: the budget, what is left of it, when it resets."""

    account: Account
    cost: int
    offline: bool  # the lease could not be topped up: the database is out of reach

    @property
    def remaining(self) -> int:
        a = self.account
        return max(0, a.free_all + a.held - a.reserved + a.slack)


@dataclass(slots=True)
class Hold:
    """What one request has reserved, to settle when it ends."""

    parts: list[tuple[Account, int]] = field(default_factory=list)


def holder_name(node: str | None = None) -> str:
    return f"{node or socket.gethostname()}:{os.getpid()}"


class Ledger:
    """`connect` opens the gateway database (its own connection: syncs run in a thread)."""

    def __init__(self, connect: Callable[[], db.Connection], holder: str,
                 clock: Callable[[], float] = time.time):
        self.holder = holder
        self.clock = clock
        self._connect = connect
        self._conn: db.Connection | None = None
        self.budgets: dict[str, Budget] = {}
        self.accounts: dict[tuple[str, str], Account] = {}
        self._current: dict[str, Account] = {}  # each budget's account for the period now
        self._next: asyncio.Future[bool] | None = None
        self._lock = asyncio.Lock()
        self._syncing: set[asyncio.Future[None]] = set()
        self.last_sync = clock()
        self._last_read = float("-inf")
        self.sync_error: str | None = None

    # -- on the event loop, per request ------------------------------------------------------

    def account(self, scope: str, now: float) -> Account | None:
        budget = self.budgets.get(scope)
        if budget is None:
            return None
        current = self._current.get(scope)
        if current is not None and current.budget is budget and (
                current.resets_at is None or now < current.resets_at):
            return current  # the common case: no date arithmetic per request
        start, resets = scopes.period_start(budget.period, now)
        acc = self.accounts.get((scope, start))
        if acc is None:
            acc = self.accounts[(scope, start)] = Account(budget, start, resets)
        elif acc.budget is not budget:  # changed by the CLI: requests in flight hold `acc`
            acc.budget = budget
        self._current[scope] = acc
        return acc

    def try_reserve(self, parts: list[tuple[Account, int]]) -> Account | None:
        """Reserve every part, or none: the first account that cannot hold its part."""
        usable = self.clock() - self.last_sync < LEASE_TTL / 2
        for acc, cost in parts:
            if not usable or acc.reserved + cost > acc.held:
                return acc
        for acc, cost in parts:
            acc.reserved += cost
            acc.peak = max(acc.peak, acc.reserved)
        return None

    async def reserve(self, parts: list[tuple[Account, int]]) -> Hold | Shortfall:
        """At once when the lease covers it; else after syncs, for as long as the budget could
        still hold it: other workers give back what they hold but do not use within a sync
        or two. Refused when it cannot fit even if they did, or after TOPUP_TIMEOUT."""
        short = self.try_reserve(parts)
        if short is None:
            return Hold(parts)
        deadline = asyncio.get_running_loop().time() + TOPUP_TIMEOUT
        for acc, cost in parts:
            acc.waiting += cost
            acc.peak = max(acc.peak, acc.reserved + acc.waiting)
        try:
            while True:
                synced = await self.sync_soon()
                short = self.try_reserve(parts)
                if short is None:
                    return Hold(parts)
                cost = _cost_of(parts, short)
                within = short.free_all + short.held - short.reserved + short.slack >= cost
                if not synced or not within or asyncio.get_running_loop().time() > deadline:
                    return Shortfall(short, cost, offline=not synced)
                await asyncio.sleep(SYNC_SECONDS / 2)  # the others sync, and give back
        finally:
            for acc, cost in parts:
                acc.waiting -= cost

    def settle(self, hold: Hold, charge: int) -> None:
        """The request's real cost replaces its reservation in every budget it touched."""
        for acc, cost in hold.parts:
            acc.reserved -= cost
            acc.held -= charge
            acc.unsynced += charge
        hold.parts = []

    # -- syncing -------------------------------------------------------------------------------

    async def sync_soon(self) -> bool:
        """Join the next sync (starting one if none is pending); True if it reached the
        database in time."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(self._sync_pending())
            self._syncing.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._syncing.discard)
        try:
            async with asyncio.timeout(TOPUP_TIMEOUT):
                return await asyncio.shield(self._next)
        except TimeoutError:
            return False

    async def _sync_pending(self) -> None:
        async with self._lock:
            done, self._next = self._next, None
            ok = await self._sync()
            if done is not None and not done.done():
                done.set_result(ok)

    async def sync(self, give_back_all: bool = False) -> bool:
        async with self._lock:
            return await self._sync(give_back_all)

    async def _sync(self, give_back_all: bool = False) -> bool:
        now = self.clock()
        for scope in self.budgets:  # every budget, so /metrics shows those not yet used too
            self.account(scope, now)
        snapshot = []
        for key, acc in list(self.accounts.items()):
            want = 0 if give_back_all else acc.reserved + acc.waiting + (
                max(acc.peak, acc.waiting) if _is_current(self, acc, now) else 0)
            if acc.held > want:  # given back before the sync: no reservation can use it
                acc.held = max(want, acc.reserved)
            snapshot.append((key, acc, acc.unsynced, acc.held, acc.reserved, want))
            acc.unsynced = 0
            acc.peak = acc.reserved
        # Nothing held, owed or wanted: no write transaction (every commit would wake the
        # other workers' change checks), and the figures only every few seconds.
        # After a failure, every sync is a write: only a write shows the database takes them.
        idle = self.sync_error is None and not any(
            unsynced or held or reserved or want or acc.recorded
            for _, acc, unsynced, held, reserved, want in snapshot)
        if idle and now - self._last_read < IDLE_READ_SECONDS:
            return True
        self._last_read = now
        work = asyncio.ensure_future(asyncio.to_thread(self._write, snapshot, now, not idle))
        try:
            try:
                results = await asyncio.shield(work)
            except asyncio.CancelledError:
                # Stopping: the transaction runs on in its thread, and what it wrote must be
                # known here, or settled spend would be lost or counted twice.
                await asyncio.wait([work])
                if work.exception() is None:
                    self._apply(snapshot, work.result(), now, not idle)
                else:
                    self._unsent(snapshot)
                raise
        except (sqlite3.Error, StewardError, OSError) as exc:
            self._unsent(snapshot)
            if self.sync_error is None:
                log.error("budgets: cannot sync with the database (this worker spends only "
                          "the budget it holds until it can): %s", exc)
            self.sync_error = str(exc)
            self._close()
            return False
        if self.sync_error is not None:
            log.info("budgets: syncing with the database again")
            self.sync_error = None
        self._apply(snapshot, results, now, not idle)
        return True

    @staticmethod
    def _unsent(snapshot: list) -> None:
        for _, acc, unsynced, *_ in snapshot:
            acc.unsynced += unsynced  # sent again with the next sync

    def _apply(self, snapshot: list, results: list[tuple[int, int, int, int]], now: float,
               wrote: bool = True) -> None:
        self.last_sync = now
        for (key, acc, *_), (grant, spent_all, free_all, slack) in zip(snapshot, results,
                                                                        strict=True):
            acc.held += grant
            acc.spent_all, acc.free_all, acc.slack = spent_all, free_all, slack
            acc.recorded = acc.held > 0 or acc.reserved > 0 if wrote else acc.recorded
            if acc.held <= 0 and acc.reserved == 0 and acc.unsynced == 0 and (
                    self.accounts.get(key) is acc and not _is_current(self, acc, now)):
                del self.accounts[key]  # a past period or a removed budget, all settled

    def _write(self, snapshot: list, now: float, write: bool = True
               ) -> list[tuple[int, int, int, int]]:
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        out = []
        if not write:  # the figures only
            for (scope, start), acc, *_ in snapshot:
                free, slack = store.free(conn, acc.budget, start, self.holder)
                out.append((0, store.spent_in(conn, scope, start), free, slack))
            return out
        with db.transaction(conn):
            if getattr(conn, "dialect", "sqlite") == "postgresql":
                # SQLite's BEGIN IMMEDIATE already makes writers take turns; PostgreSQL's
                # READ COMMITTED would let two syncs both see the same free amount.
                conn.execute("SELECT pg_advisory_xact_lock(?)", (SYNC_LOCK,))
            self._charge_dead(conn, now)
            for (scope, start), acc, unsynced, held, reserved, want in snapshot:
                if unsynced:
                    store.add_spent(conn, scope, start, unsynced)
                free, slack = store.free(conn, acc.budget, start, self.holder)
                # Below what this worker holds only when a request cost more than it reserved
                # (a price changed in flight): then the lease shrinks by the excess.
                new_held = max(0, min(max(want, held), free))
                store.write_lease(conn, self.holder, scope, start, new_held, reserved, now)
                out.append((new_held - held, store.spent_in(conn, scope, start),
                            free - new_held, slack))
        return out

    def _charge_dead(self, conn: db.Connection, now: float) -> None:
        node = self.holder.rsplit(":", 1)[0]
        for holder, scope, start, held, renewed in store.leases_of_others(conn, self.holder):
            host, _, pid = holder.rpartition(":")
            dead = renewed < now - LEASE_TTL or (host == node and pid.isdigit()
                                                 and not _alive(int(pid)))
            if dead:
                log.warning("budgets: %s stopped without settling its lease of $%s on %s; "
                            "counted as spent", holder, store.usd_text(held), scope)
                store.charge_lease(conn, holder, scope, start, held)

    def figures(self) -> dict[str, tuple[float, float, float]]:
        """For /metrics: (limit, spent, remaining) in USD per budget in its current period."""
        out = {}
        now = self.clock()
        for acc in self.accounts.values():
            if _is_current(self, acc, now):
                spent = acc.spent_all + acc.unsynced
                out[acc.budget.scope] = (float(store.to_usd(acc.budget.amount)),
                                         float(store.to_usd(spent)),
                                         float(store.to_usd(max(0, acc.budget.amount - spent))))
        return out

    def reload(self, budgets: dict[str, Budget]) -> None:
        self.budgets = budgets

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def close(self) -> None:
        """After the last request: settle, give every lease back."""
        await self.sync(give_back_all=True)
        self._close()


def _cost_of(parts: list[tuple[Account, int]], acc: Account) -> int:
    return next(cost for a, cost in parts if a is acc)


def _is_current(ledger: Ledger, acc: Account, now: float) -> bool:
    return ledger.budgets.get(acc.budget.scope) == acc.budget and (
        acc.start == scopes.period_start(acc.budget.period, now)[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
