"""The budget ledger against a real SQLite database, with an injected clock: leases, exact
settlement, period resets, restarts and workers that die holding a lease."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from steward import db
from steward.budgets import ledger as ledger_module
from steward.budgets import store
from steward.budgets.ledger import Hold, Ledger, Shortfall
from steward.budgets.rates import Window

CENT = 10**7  # $0.01 in nanodollars


class Clock:
    def __init__(self, at: str = "2026-11-28T12:00:00"):
        self.now = datetime.fromisoformat(at).replace(tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def make(path: Path, holder: str, clock: Clock, budgets: dict[str, tuple[str, str]]) -> Ledger:
    with db.connect(path) as conn:
        for scope, (amount, per) in budgets.items():
            store.set_budget(conn, scope, store.parse_amount(amount), per)
        loaded = store.load_budgets(conn)
    ledger = Ledger(lambda: db.connect(path), holder, clock)
    ledger.reload(loaded)
    return ledger


def spent(path: Path, scope: str, start: str) -> int:
    conn = db.connect(path)
    try:
        return store.spent_in(conn, scope, start)
    finally:
        conn.close()


async def spend(ledger: Ledger, scope: str, cost: int, charge: int | None = None) -> bool:
    acc = ledger.account(scope, ledger.clock())
    assert acc is not None
    result = await ledger.reserve([(acc, cost)])
    if isinstance(result, Shortfall):
        return False
    await asyncio.sleep(0)  # in flight while others reserve
    ledger.settle(result, cost if charge is None else charge)
    return True


def test_fifty_at_once_exactly_ten_fit(tmp_path: Path) -> None:
    path, clock = tmp_path / "g.db", Clock()
    ledger = make(path, "node:1", clock, {"key:a": ("0.10", "day")})

    async def run() -> list[bool]:
        results = await asyncio.gather(*(spend(ledger, "key:a", CENT) for _ in range(50)))
        await ledger.close()
        return results

    results = asyncio.run(run())
    assert results.count(True) == 10
    assert spent(path, "key:a", "2026-11-28") == 10 * CENT
    assert store.standings(db.connect(path), clock())[0].remaining == 0


def test_settles_on_the_exact_cost_and_releases_the_rest(tmp_path: Path) -> None:
    path, clock = tmp_path / "g.db", Clock()
    ledger = make(path, "node:1", clock, {"global": ("1", "total")})

    async def run() -> None:
        assert await spend(ledger, "global", 50 * CENT, charge=3 * CENT)  # worst 0.50, real 0.03
        assert await spend(ledger, "global", 50 * CENT, charge=0)  # the upstream failed
        await ledger.sync()
        acc = ledger.account("global", clock())
        assert acc is not None and acc.reserved == 0
        assert await spend(ledger, "global", 97 * CENT)  # all that is left
        assert not await spend(ledger, "global", 1)
        await ledger.close()

    asyncio.run(run())
    assert spent(path, "global", "total") == 100 * CENT


def test_a_new_day_is_a_new_budget(tmp_path: Path) -> None:
    path, clock = tmp_path / "g.db", Clock("2026-11-28T23:59:00")
    ledger = make(path, "node:1", clock, {"model:m": ("0.02", "day")})

    async def run() -> None:
        assert await spend(ledger, "model:m", 2 * CENT)
        assert not await spend(ledger, "model:m", CENT)
        clock.now += 120  # 00:01 the next day, UTC
        assert await spend(ledger, "model:m", 2 * CENT)
        await ledger.close()

    asyncio.run(run())
    assert spent(path, "model:m", "2026-11-28") == 2 * CENT
    assert spent(path, "model:m", "2026-11-29") == 2 * CENT


def test_a_restart_keeps_what_was_spent(tmp_path: Path) -> None:
    path, clock = tmp_path / "g.db", Clock()
    first = make(path, "node:1", clock, {"key:a": ("0.05", "month")})

    async def run() -> None:
        for _ in range(3):
            assert await spend(first, "key:a", CENT)
        await first.close()
        second = make(path, "node:2", clock, {})
        second.reload(store.load_budgets(db.connect(path)))
        assert await spend(second, "key:a", 2 * CENT)
        assert not await spend(second, "key:a", 1)
        await second.close()

    asyncio.run(run())
    assert spent(path, "key:a", "2026-11-01") == 5 * CENT


def test_a_dead_workers_lease_is_charged_never_handed_out_again(tmp_path: Path) -> None:
    path, clock = tmp_path / "g.db", Clock()
    # A holder on this node whose process is gone (pid 2**22 + 1 is above Linux's pid_max).
    dead = make(path, f"node:{2**22 + 1}", clock, {"global": ("1", "total")})
    live = make(path, "node:1", clock, {})
    live.reload(dead.budgets)

    async def run() -> None:
        acc = dead.account("global", clock())
        assert acc is not None
        hold = await dead.reserve([(acc, 40 * CENT)])
        assert isinstance(hold, Hold)
        await dead.sync()  # holds its lease, then "dies" without settling or giving it back
        held = dead.account("global", clock()).held  # type: ignore[union-attr]
        assert 40 * CENT <= held < 100 * CENT
        # All of it counts as spent: what the dead worker spent after its last sync is unknown.
        assert await spend(live, "global", 100 * CENT - held)
        assert not await spend(live, "global", 1)
        await live.close()

    asyncio.run(run())
    assert spent(path, "global", "total") == 100 * CENT


def test_many_workers_never_spend_more_than_the_budget(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # The holders here sync only when the test says so: a request that waits for another's
    # lease gives up sooner than in a daemon, whose holders sync by themselves.
    monkeypatch.setattr(ledger_module, "TOPUP_TIMEOUT", 0.3)
    monkeypatch.setattr(ledger_module, "SYNC_SECONDS", 0.05)
    path, clock = tmp_path / "g.db", Clock()
    ledgers = [make(path, f"node:{n}", clock, {"global": ("1", "total")}) for n in (1, 2, 3)]
    for ledger in ledgers:
        ledger.reload(ledgers[0].budgets)
    rng = random.Random(7)
    charged = []

    async def one(ledger: Ledger) -> None:
        worst = rng.randint(1, 9) * CENT
        real = rng.randint(0, worst)
        if await spend(ledger, "global", worst, real):
            charged.append(real)

    async def run() -> None:
        for _ in range(20):
            await asyncio.gather(*(one(rng.choice(ledgers)) for _ in range(30)))
            await asyncio.gather(*(ledger.sync() for ledger in ledgers))
        for ledger in ledgers:
            await ledger.close()

    asyncio.run(run())
    total = spent(path, "global", "total")
    assert total == sum(charged)
    assert 90 * CENT < total <= 100 * CENT  # demand exceeded it: little left unspent


@pytest.mark.parametrize("rpm", [1, 3])
def test_requests_per_minute_sliding_window(rpm: int) -> None:
    window, now = Window(rpm, None), 1000.0
    for n in range(rpm):
        assert window.refusal(0, now + n) is None
        window.admit(0, now + n)
    what, wait = window.refusal(0, now + rpm)  # type: ignore[misc]
    assert what == f"{rpm} requests per minute" and wait == 60 - rpm
    assert window.refusal(0, now + 60) is None  # the first one left the window


def test_tokens_per_minute_settle_to_the_real_count() -> None:
    window = Window(None, 1000)
    entry = window.admit(900, 0.0)
    assert window.refusal(200, 1.0) is not None
    window.settle(entry, 100)  # it used 100 of the 900 it might have
    assert window.refusal(200, 1.0) is None
    assert window.refusal(1001, 1.0) == ("1000 tokens per minute (this request may use 1001)", 0)
