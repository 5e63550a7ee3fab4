"""The pipeline's admission stage: every budget and rate limit a request falls under, checked
before anything goes upstream, and settled on the exact cost when the request ends."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from steward.budgets import scopes, store, worst
from steward.budgets.ledger import Account, Hold, Ledger, Shortfall
from steward.budgets.rates import Entry, Window
from steward.budgets.store import Budget, RateLimit
from steward.errors import GatewayError
from steward.pricing.pricer import Pricer, candidates

if TYPE_CHECKING:
    from steward.proxy.exchange import Exchange
    from steward.records.record import Record

# A reset further away than this: SDKs are told not to retry (they would only be refused).
NO_RETRY_AFTER = 60


@dataclass(frozen=True, slots=True)
class ModelRates:
    """What a worst case needs from the price table for one model, looked up once per table."""

    priced: bool
    rates: tuple[int, int]  # dearest input and output rates, attodollars per token
    mode: str | None
    max_output: Any
    max_input: Any


@dataclass(slots=True)
class Admission:
    hold: Hold | None = None
    entries: list[tuple[Window, Entry]] = field(default_factory=list)


class Governor:
    def __init__(self, ledger: Ledger, unpriced: str = "deny",
                 clock: Callable[[], float] = time.time):
        self.ledger = ledger
        self.unpriced = unpriced
        self.clock = clock
        self.limits: dict[str, RateLimit] = {}
        self.windows: dict[str, Window] = {}
        self.active = False
        self._rates: dict[tuple[str, str | None], ModelRates] = {}
        self._rates_of: Pricer | None = None  # the pricer the cache was filled from

    def configure(self, budgets: dict[str, Budget], limits: dict[str, RateLimit]) -> None:
        self.ledger.reload(budgets)
        self.limits = limits
        for scope, limit in limits.items():
            window = self.windows.get(scope)
            if window is None:
                self.windows[scope] = Window(limit.rpm, limit.tpm)
            else:  # keep what the window has seen: a changed limit is no fresh minute
                window.rpm, window.tpm = limit.rpm, limit.tpm
        for scope in set(self.windows) - set(limits):
            del self.windows[scope]
        self.active = bool(budgets or limits)

    async def admit(self, ex: Exchange, body: bytes | bytearray, pricer: Pricer
                    ) -> Admission | None:
        """None when nothing applies; else what was reserved. Raises the refusal."""
        assert ex.key is not None and ex.upstream is not None and ex.route is not None
        model = ex.request_model
        applicable = scopes.applicable(ex.key.id, ex.key.tags, ex.tags, ex.upstream.name, model)
        windows = [(s, self.windows[s]) for s in applicable if s in self.windows]
        now = self.clock()
        # Only inference costs money: listing models or counting tokens is never refused
        # for a budget.
        budgeted = [s for s in applicable if s in self.ledger.budgets] \
            if ex.route.scope is None else []
        if not windows and not budgeted:
            return None
        tokens, cost, unbounded = self._worst(ex, body, pricer, bool(budgeted),
                                              any(w.tpm for _, w in windows))
        for scope, window in windows:
            refused = window.refusal(tokens, now)
            if refused is not None:
                self._refuse_rate(ex, scope, *refused)
        admission = Admission()
        if budgeted and unbounded is not None:
            if self.unpriced == "deny":
                raise GatewayError(
                    403, f"{unbounded}, and the budget for {_name(ex, budgeted[0])} applies: "
                    "Steward cannot reserve its cost. Set a price with `steward pricing set`, "
                    "send a max_tokens, or set budgets.unpriced = \"allow\".",
                    record_error=f"budget_unpriced:{budgeted[0]}")
            budgeted = []
        if budgeted:
            parts: list[tuple[Account, int]] = []
            for scope in budgeted:
                account = self.ledger.account(scope, now)
                if account is not None:
                    parts.append((account, cost))
            result = await self.ledger.reserve(parts)
            if isinstance(result, Shortfall):
                self._refuse_budget(ex, result, now)
            admission.hold = result
        now = self.clock()
        for scope, window in windows:  # the windows may have filled while the lease grew
            refused = window.refusal(tokens, now)
            if refused is not None:
                self.settle(admission, None)
                self._refuse_rate(ex, scope, *refused)
        admission.entries = [(w, w.admit(tokens if w.tpm else 0, now)) for _, w in windows]
        return admission

    def settle(self, admission: Admission, record: Record | None) -> None:
        """The exact cost and token count replace what was reserved."""
        if admission.hold is not None:
            cost = record.get("cost") if record is not None else None
            self.ledger.settle(admission.hold, store.to_nano(Decimal(cost)) if cost else 0)
            admission.hold = None
        used = 0
        if record is not None:
            used = (record.get("input_tokens") or 0) + (record.get("output_tokens") or 0)
        for window, entry in admission.entries:
            if window.tpm:
                window.settle(entry, used)
        admission.entries = []

    def _worst(self, ex: Exchange, body: bytes | bytearray, pricer: Pricer, budgeted: bool,
               tokens_limited: bool) -> tuple[int, int, str | None]:
        """(worst-case tokens, worst-case cost in nanodollars, why the cost has no bound)."""
        if not budgeted and not tokens_limited:
            return 0, 0, None
        model = ex.request_model
        fmt = ex.upstream.fmt.name if ex.upstream else None
        known = self._model(pricer, model, fmt)
        b = worst.bound(body, known.mode, known.max_output, known.max_input)
        tokens = b.input_tokens + (b.output_tokens or 0)
        if not budgeted:
            return tokens, 0, None
        if not known.priced:
            return tokens, 0, (f"no price is known for model {model!r}" if model
                               else "the request names no model")
        if b.output_tokens is None:
            return tokens, 0, (f"the request sets no output cap (max_tokens) and the price "
                               f"table has no maximum output for {model!r}")
        return tokens, worst.cost_nano(known.rates, b), None

    def _model(self, pricer: Pricer, model: str | None, fmt: str | None) -> ModelRates:
        if pricer is not self._rates_of:  # a new table or override: look everything up again
            self._rates, self._rates_of = {}, pricer
        known = self._rates.get((model or "", fmt))
        if known is None:
            found = pricer.match(model, fmt) if model else None
            entry = _table_entry(pricer, model, fmt) or {}
            known = ModelRates(found is not None,
                               worst.dearest(found.prices) if found else (0, 0),
                               entry.get("mode"), entry.get("max_output_tokens"),
                               entry.get("max_input_tokens"))
            if len(self._rates) < 10_000:  # model names come from callers: keep it bounded
                self._rates[(model or "", fmt)] = known
        return known

    def _refuse_budget(self, ex: Exchange, short: Shortfall, now: float) -> None:
        acc = short.account
        scope = acc.budget.scope
        if short.offline:
            raise GatewayError(
                503, f"the budget for {_name(ex, scope)} cannot be checked: this Steward's "
                f"share of it is used up and the database cannot be reached to extend it; "
                "retry shortly", headers={"Retry-After": "1"},
                record_error=f"budget_unavailable:{scope}")
        headers = {}
        per = "in total" if acc.resets_at is None else f"per {acc.budget.period}"
        if acc.resets_at is None:
            when = "it does not reset (a total budget); raise it with `steward budgets set`"
            headers["x-should-retry"] = "false"
        else:
            wait = max(1, math.ceil(acc.resets_at - now))
            headers["Retry-After"] = str(wait)
            if wait > NO_RETRY_AFTER:
                headers["x-should-retry"] = "false"
            when = "it resets at " + datetime.fromtimestamp(acc.resets_at, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ")
        raise GatewayError(
            429, f"budget exceeded for {_name(ex, scope)}: ${store.usd_text(acc.budget.amount)} "
            f"{per}, ${store.usd_text(short.remaining)} left, and this request may cost up to "
            f"${store.usd_text(short.cost)}; {when}", headers=headers,
            record_error=f"budget_exceeded:{scope}")

    def _refuse_rate(self, ex: Exchange, scope: str, what: str, wait: int) -> None:
        if wait == 0:
            raise GatewayError(429, f"rate limit for {_name(ex, scope)} is {what}: it can "
                               "never fit; send a smaller request or lower max_tokens",
                               headers={"x-should-retry": "false"},
                               record_error=f"rate_limited:{scope}")
        raise GatewayError(429, f"rate limit exceeded for {_name(ex, scope)}: {what}; retry "
                           f"in {wait}s", headers={"Retry-After": str(wait)},
                           record_error=f"rate_limited:{scope}")


def _name(ex: Exchange, scope: str) -> str:
    """Scopes as a person knows them: the key's name, not its id."""
    if ex.key is not None and scope == f"key:{ex.key.id}":
        return f"key:{ex.key.name}"
    return scope


def _table_entry(pricer: Pricer, model: str | None, fmt: str | None) -> dict[str, Any] | None:
    """The price table's entry (for max tokens and mode), even when an override prices it."""
    if not model:
        return None
    for name in candidates(model, fmt):
        if name in pricer.models:
            return pricer.models[name]
    return None
