"""`steward budgets` and `steward limits`: spend caps and request/token rates per scope.

Running gateways pick changes up within seconds (as they do keys); `list` shows every worker's
spend and in-flight reservations as of their last sync.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from steward.cli.options import HomeOption, JsonOption, out

from steward import db
from steward.budgets import scopes, store
from steward.home import require_home, resolve_home
from steward.secrets import gateway_keys

budgets_app = typer.Typer(no_args_is_help=True, help="Spend caps in US dollars per key, tag, "
                          "provider, model or in all, checked before a request is forwarded.")
limits_app = typer.Typer(no_args_is_help=True, help="Requests and tokens per minute per key, "
                         "tag, provider, model or in all.")
ScopeArg = Annotated[str, typer.Argument(
    help="key:<name or id>, tag:<name>=<value>, provider:<name>, model:<name> or global")]


def _conn(home: Any) -> contextlib.closing[Any]:
    return contextlib.closing(db.open_home(require_home(resolve_home(home))))


def _canonical(conn: Any, text: str) -> str:
    """Scopes as stored: a key by its id, so renaming or re-creating a name never moves it."""
    kind, rest = scopes.parse(text)
    if kind == "global":
        return "global"
    if kind == "key":
        rest = gateway_keys.find_key(conn, rest).id
    return f"{kind}:{rest}"


def _display(conn: Any) -> Any:
    names = {k.id: k.name for k in gateway_keys.list_keys(conn)}

    def show(scope: str) -> str:
        kind, _, rest = scope.partition(":")
        return f"key:{names[rest]}" if kind == "key" and rest in names else scope
    return show


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@budgets_app.command("set")
def budgets_set(scope: ScopeArg,
                amount: Annotated[str, typer.Argument(help="US dollars, e.g. 25 or 0.50")],
                per: Annotated[str, typer.Option(
                    help="day | week | month | total (periods reset at 00:00 UTC, Monday, "
                    "the 1st)")] = "month",
                home: HomeOption = None) -> None:
    """Cap what requests under SCOPE may spend per period."""
    with _conn(home) as conn:
        canonical = _canonical(conn, scope)
        store.set_budget(conn, canonical, store.parse_amount(amount), per)
    out.print(f"Budget for {scope}: ${store.usd_text(store.parse_amount(amount))} "
              f"{'in total' if per == 'total' else 'per ' + per}.", highlight=False)


@budgets_app.command("list")
def budgets_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Every budget: limit, spent, reserved in flight, remaining and the next reset."""
    with _conn(home) as conn:
        rows = store.standings(conn, time.time())
        show = _display(conn)
    items = [{"scope": show(s.budget.scope), "stored_scope": s.budget.scope,
              "period": s.budget.period, "limit": store.usd_text(s.budget.amount),
              "spent": store.usd_text(s.spent), "reserved": store.usd_text(s.reserved),
              "remaining": store.usd_text(s.remaining), "period_start": s.period_start,
              "resets_at": _when(s.resets_at)} for s in rows]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    if not items:
        out.print("No budgets. Add one with `steward budgets set SCOPE AMOUNT --per month`.")
        return
    table = Table("scope", "period", "limit", "spent", "reserved", "remaining", "resets")
    for item in items:
        table.add_row(item["scope"], item["period"], f"${item['limit']}", f"${item['spent']}",
                      f"${item['reserved']}", f"${item['remaining']}", item["resets_at"] or "-")
    out.print(table)


@budgets_app.command("remove")
def budgets_remove(scope: ScopeArg, home: HomeOption = None) -> None:
    """Remove a budget and what was spent against it."""
    with _conn(home) as conn:
        store.remove_budget(conn, _canonical(conn, scope))
    out.print(f"Budget for {scope} removed.")


@limits_app.command("set")
def limits_set(scope: ScopeArg,
               rpm: Annotated[int | None, typer.Option(help="Requests per minute")] = None,
               tpm: Annotated[int | None, typer.Option(
                   help="Tokens (input + output) per minute")] = None,
               home: HomeOption = None) -> None:
    """Cap requests and tokens per minute under SCOPE (a sliding 60-second window)."""
    with _conn(home) as conn:
        store.set_limit(conn, _canonical(conn, scope), rpm, tpm)
    parts = [f"{rpm} requests" if rpm else "", f"{tpm} tokens" if tpm else ""]
    out.print(f"Rate limit for {scope}: {' and '.join(p for p in parts if p)} per minute.")


@limits_app.command("list")
def limits_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Every rate limit."""
    with _conn(home) as conn:
        limits = store.load_limits(conn)
        show = _display(conn)
    items = [{"scope": show(lim.scope), "stored_scope": lim.scope, "rpm": lim.rpm,
              "tpm": lim.tpm} for lim in sorted(limits.values(), key=lambda x: x.scope)]
    if as_json:
        print(json.dumps(items, indent=2))
        return
    if not items:
        out.print("No rate limits. Add one with `steward limits set SCOPE --rpm N`.")
        return
    table = Table("scope", "requests/min", "tokens/min")
    for item in items:
        table.add_row(item["scope"], str(item["rpm"] or "-"), str(item["tpm"] or "-"))
    out.print(table)


@limits_app.command("remove")
def limits_remove(scope: ScopeArg, home: HomeOption = None) -> None:
    """Remove a rate limit."""
    with _conn(home) as conn:
        store.remove_limit(conn, _canonical(conn, scope))
    out.print(f"Rate limit for {scope} removed.")


