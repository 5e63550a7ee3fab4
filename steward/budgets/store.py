"""The budget and rate-limit tables: definitions the CLI writes, spend and leases the daemon
keeps. Amounts are whole nanodollars (10^-9 USD; a charge is rounded up to the next one), so
every sum is an exact integer in any SQL.

Invariant, per scope and period: spent + every holder's lease <= the budget's amount.
A holder (one worker process) spends only from its lease; settling moves an amount from its
lease into `spent`. A lease whose holder died is charged in full: Steward never learns what
that holder spent after its last sync, so counting all of it is the only safe choice.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from steward import db
from steward.budgets import scopes
from steward.errors import NotFoundError, StewardError

NANO = Decimal("1e9")
MAX_USD = 10**9  # in nanodollars, far inside a signed 64-bit integer


def to_nano(usd: Decimal) -> int:
    """Rounded up: a reservation or a charge is never less than the dollars it stands for."""
    return int((usd * NANO).to_integral_value(rounding=ROUND_CEILING))


def to_usd(nano: int) -> Decimal:
    return (Decimal(nano) / NANO).normalize()


def usd_text(nano: int) -> str:
    value = to_usd(nano)
    return format(value, "f") if value else "0"


@dataclass(frozen=True, slots=True)
class Budget:
    scope: str
    amount: int  # nanodollars
    period: str


@dataclass(frozen=True, slots=True)
class RateLimit:
    scope: str
    rpm: int | None
    tpm: int | None


def parse_amount(text: str) -> int:
    try:
        value = Decimal(text.strip().removeprefix("$"))
    except ArithmeticError:
        raise StewardError(f"amount {text!r}: give US dollars, e.g. 25 or 0.50") from None
    if not value.is_finite() or value <= 0:
        raise StewardError(f"amount {text!r}: must be more than 0")
    if value > MAX_USD:
        raise StewardError(f"amount {text!r}: at most {MAX_USD:,} US dollars")
    return to_nano(value)


def set_budget(conn: db.Connection, scope: str, amount: int, period: str) -> None:
    if period not in scopes.PERIODS:
        raise StewardError(f"--per {period!r}: use one of {', '.join(scopes.PERIODS)}")
    with db.transaction(conn):
        conn.execute("INSERT INTO budgets (scope, amount_nusd, period, created_at) VALUES "
                     "(?, ?, ?, ?) ON CONFLICT (scope) DO UPDATE SET "
                     "amount_nusd = excluded.amount_nusd, period = excluded.period",
                     (scope, amount, period, time.time()))
        db.changed(conn, "budgets")


def remove_budget(conn: db.Connection, scope: str) -> None:
    with db.transaction(conn):
        if conn.execute("DELETE FROM budgets WHERE scope = ?", (scope,)).rowcount == 0:
            raise NotFoundError(f"no budget for {scope}")
        conn.execute("DELETE FROM budget_spend WHERE scope = ?", (scope,))
        conn.execute("DELETE FROM budget_leases WHERE scope = ?", (scope,))
        db.changed(conn, "budgets")


def load_budgets(conn: db.Connection) -> dict[str, Budget]:
    rows = conn.execute("SELECT scope, amount_nusd, period FROM budgets").fetchall()
    return {r[0]: Budget(r[0], int(r[1]), r[2]) for r in rows}


def set_limit(conn: db.Connection, scope: str, rpm: int | None, tpm: int | None) -> None:
    if rpm is None and tpm is None:
        raise StewardError("give --rpm, --tpm or both")
    for name, value in (("--rpm", rpm), ("--tpm", tpm)):
        if value is not None and value < 1:
            raise StewardError(f"{name} must be at least 1")
    with db.transaction(conn):
        conn.execute("INSERT INTO rate_limits (scope, rpm, tpm, created_at) VALUES (?, ?, ?, ?)"
                     " ON CONFLICT (scope) DO UPDATE SET rpm = excluded.rpm, tpm = excluded.tpm",
                     (scope, rpm, tpm, time.time()))
        db.changed(conn, "budgets")


def remove_limit(conn: db.Connection, scope: str) -> None:
    with db.transaction(conn):
        if conn.execute("DELETE FROM rate_limits WHERE scope = ?", (scope,)).rowcount == 0:
            raise NotFoundError(f"no rate limit for {scope}")
        db.changed(conn, "budgets")


def load_limits(conn: db.Connection) -> dict[str, RateLimit]:
    rows = conn.execute("SELECT scope, rpm, tpm FROM rate_limits").fetchall()
    return {r[0]: RateLimit(r[0], r[1], r[2]) for r in rows}


@dataclass(frozen=True, slots=True)
class Standing:
    """A budget's figures for the current period, every holder together."""

    budget: Budget
    period_start: str
    resets_at: float | None
    spent: int
    held: int  # leased to workers, not yet settled
    reserved: int  # in flight at the holders' last syncs

    @property
    def remaining(self) -> int:
        return max(0, self.budget.amount - self.spent - self.reserved)


def standings(conn: db.Connection, now: float) -> list[Standing]:
    out = []
    for budget in sorted(load_budgets(conn).values(), key=lambda b: b.scope):
        start, resets = scopes.period_start(budget.period, now)
        out.append(Standing(budget, start, resets, spent_in(conn, budget.scope, start),
                            *_leased(conn, budget.scope, start)))
    return out


def spent_in(conn: db.Connection, scope: str, start: str) -> int:
    row = conn.execute("SELECT spent_nusd FROM budget_spend WHERE scope = ? AND period_start = ?",
                       (scope, start)).fetchone()
    return int(row[0]) if row else 0


def _leased(conn: db.Connection, scope: str, start: str, but: str = ""
            ) -> tuple[int, int]:
    row = conn.execute("SELECT COALESCE(SUM(held_nusd), 0), COALESCE(SUM(reserved_nusd), 0) "
                       "FROM budget_leases WHERE scope = ? AND period_start = ? AND holder <> ?",
                       (scope, start, but)).fetchone()
    return int(row[0]), int(row[1])


def add_spent(conn: db.Connection, scope: str, start: str, amount: int) -> None:
    conn.execute("INSERT INTO budget_spend (scope, period_start, spent_nusd) VALUES (?, ?, ?) "
                 "ON CONFLICT (scope, period_start) DO UPDATE SET "
                 "spent_nusd = budget_spend.spent_nusd + excluded.spent_nusd",
                 (scope, start, amount))


def free(conn: db.Connection, budget: Budget, start: str, holder: str
         ) -> tuple[int, int]:
    """What no holder but `holder` has spent or leased; and how much of the others' leases
    was not in flight at their last syncs (theirs now, but given back once they idle)."""
    others, reserved = _leased(conn, budget.scope, start, holder)
    return budget.amount - spent_in(conn, budget.scope, start) - others, max(0, others - reserved)


def write_lease(conn: db.Connection, holder: str, scope: str, start: str, held: int,
                reserved: int, now: float) -> None:
    if held <= 0 and reserved <= 0:
        conn.execute("DELETE FROM budget_leases WHERE holder = ? AND scope = ? AND "
                     "period_start = ?", (holder, scope, start))
        return
    conn.execute("INSERT INTO budget_leases (holder, scope, period_start, held_nusd, "
                 "reserved_nusd, renewed_at) VALUES (?, ?, ?, ?, ?, ?) "
                 "ON CONFLICT (holder, scope, period_start) DO UPDATE SET "
                 "held_nusd = excluded.held_nusd, reserved_nusd = excluded.reserved_nusd, "
                 "renewed_at = excluded.renewed_at", (holder, scope, start, held, reserved, now))


def leases_of_others(conn: db.Connection, holder: str
                     ) -> list[tuple[str, str, str, int, float]]:
    """(holder, scope, period_start, held, renewed_at) of every other holder's lease."""
    rows = conn.execute("SELECT holder, scope, period_start, held_nusd, renewed_at "
                        "FROM budget_leases WHERE holder <> ?", (holder,)).fetchall()
    return [(r[0], r[1], r[2], int(r[3]), float(r[4])) for r in rows]


def charge_lease(conn: db.Connection, holder: str, scope: str, start: str, held: int
                 ) -> None:
    """A dead holder's lease counts as spent (see the module's docstring)."""
    add_spent(conn, scope, start, held)
    conn.execute("DELETE FROM budget_leases WHERE holder = ? AND scope = ? AND period_start = ?",
                 (holder, scope, start))
