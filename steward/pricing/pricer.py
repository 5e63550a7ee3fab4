"""Cost in US dollars, computed locally with Decimal from the active price table and overrides.

One formula serves every provider because usage is normalised (see usage.py):

    input cost  = (input - cache reads - cache writes) x input price
                + cache reads x cache-read price
                + 5-minute cache writes x cache-write price + 1-hour writes x the 1-hour price
                + tool-use prompt tokens x input price
    output cost = (output - reasoning) x output price + reasoning x reasoning price

Prices missing from an entry fall back to the plain input/output price, as the providers bill.
Long-context tiers (`..._above_Nk_tokens`) apply to the whole request once its input exceeds
N thousand tokens; a reported service tier (priority, flex) uses `..._priority`/`..._flex`.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from steward import providers
from steward.db import Connection, changed, transaction
from steward.errors import NotFoundError, StewardError
from steward.files import write_private
from steward.home import Home
from steward.pricing import table as price_table
from steward.records.record import Cost

log = logging.getLogger("steward.pricing")

MILLION = Decimal(1_000_000)
_DATED = re.compile(r"^(.*?)(-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{4})$")
_TIER = re.compile(r"^input_cost_per_token_above_(\d+)k_tokens$")
OVERRIDE_FIELDS = {"input": "input_cost_per_token", "output": "output_cost_per_token",
                   "cache_read": "cache_read_input_token_cost",
                   "cache_write": "cache_creation_input_token_cost",
                   "cache_write_1h": "cache_creation_input_token_cost_above_1hr"}


def candidates(model: str, fmt: str | None) -> Iterator[str]:
    """Exact; provider-prefixed; without `models/`; a dated snapshot's base name."""
    names = [model]
    if model.startswith("models/"):
        names.append(model[len("models/"):])
    for name in list(names):
        match = _DATED.match(name)
        if match:
            names.append(match.group(1))
    for name in names:
        yield name
        if fmt:
            yield f"{fmt}/{name}"


def _fmt(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


@dataclass(frozen=True)
class Match:
    name: str
    prices: dict[str, Any]
    source: str  # bundled | updated | override


class Pricer:
    def __init__(self, table: dict[str, Any], origin: str,
                 overrides: dict[str, dict[str, str]] | None = None):
        self.table = table
        self.origin = origin
        self.models: dict[str, dict[str, Any]] = table["models"]
        self.overrides = overrides or {}
        self.version = f"{table['version']}@{table['date']}"
        self._warned: set[str] = set()
        # (provider, requested model) -> the table name to price it by, from configuration
        # (Azure deployments: the model and data zone a deployment name stands for).
        self.aliases: dict[tuple[str, str], str] = {}

    def match(self, model: str, fmt: str | None) -> Match | None:
        """An override, else the format's own entry (Azure's `azure/gpt-4o…` before OpenAI's
        `gpt-4o…`, AI Studio's `gemini/…` before Vertex's bare Gemini names), else any."""
        known = providers.FORMATS.get(fmt) if fmt else None
        names = list(candidates(model, known.price_prefix or fmt if known else fmt))
        for name in names:
            if name in self.overrides:
                # An override replaces the table's entry whole: prices it leaves out fall back
                # to its own input price, never to a table price from another scale.
                return Match(name, self.overrides[name], "override")
            if self.models.get(name, {}).get("provider") == fmt:
                return Match(name, self.models[name], self.origin)
        for name in names:
            if name in self.models:
                return Match(name, self.models[name], self.origin)
        return None

    def cost(self, record: Mapping[str, Any]) -> Cost:
        """The cost fields of a metadata record."""
        out: Cost = {"cost": None, "input_cost": None, "output_cost": None,
                               "pricing_status": None, "pricing_model": None,
                               "pricing_version": self.version}
        if record.get("input_tokens") is None:
            out["pricing_status"] = "no_usage"
            return out
        found = None
        fmt = providers.find(record["format"]) if record.get("format") else None
        names = (fmt.price_models(record.get("response_model"), record.get("model"))
                 if fmt is not None else (record.get("response_model"), record.get("model")))
        alias = self.aliases.get((record.get("provider"), record.get("model"))) \
            if self.aliases else None
        for model in (alias, *names):
            if model and (found := self.match(model, record.get("format"))):
                break
        if found is None:
            out["pricing_status"] = "unknown_model"
            name = record.get("response_model") or record.get("model") or "(none)"
            if name not in self._warned:
                self._warned.add(name)
                log.warning("no price for model %r: its requests are recorded with cost null "
                            "(set one with `steward pricing set`)", name)
            return out
        input_cost, output_cost = compute(found.prices, record)
        out.update(cost=_fmt(input_cost + output_cost), input_cost=_fmt(input_cost),
                   output_cost=_fmt(output_cost), pricing_model=found.name,
                   pricing_status="ok" if found.source != "override" else "override")
        return out


def compute(prices: dict[str, Any], usage: dict[str, Any]) -> tuple[Decimal, Decimal]:
    def count(name: str) -> int:
        return usage.get(name) or 0

    total_input = count("input_tokens")
    crossed = [int(m.group(1)) for key in prices if (m := _TIER.match(key))
               and total_input > int(m.group(1)) * 1000]
    tier = f"_above_{max(crossed)}k_tokens" if crossed else ""
    service = usage.get("service_tier")
    service_suffix = f"_{service}" if service in ("priority", "flex") else ""

    def price(name: str, fallback: Decimal | None = None) -> Decimal:
        for key in (f"{name}{tier}{service_suffix}", f"{name}{tier}",
                    f"{name}{service_suffix}" if not tier else None, name):
            if key and key in prices:
                return Decimal(prices[key])
        return fallback if fallback is not None else Decimal(0)

    p_in = price("input_cost_per_token")
    p_out = price("output_cost_per_token")
    p_write = price("cache_creation_input_token_cost", p_in)
    read, write = count("cache_read_tokens"), count("cache_write_tokens")
    write_1h = count("cache_write_1h_tokens")
    write_5m = usage.get("cache_write_5m_tokens")
    write_5m = write - write_1h if write_5m is None else write_5m
    reasoning = count("reasoning_tokens")
    input_cost = ((total_input - read - write) * p_in
                  + read * price("cache_read_input_token_cost", p_in)
                  + write_5m * p_write
                  + write_1h * price("cache_creation_input_token_cost_above_1hr", p_write)
                  + count("tool_use_prompt_tokens") * p_in)
    output_cost = ((count("output_tokens") - reasoning) * p_out
                   + reasoning * price("output_cost_per_reasoning_token", p_out))
    return input_cost, output_cost


# -- the active table and overrides ---------------------------------------------------------


def install_table(home: Path, raw: bytes, source: str) -> dict[str, Any]:
    """Validate a downloaded LiteLLM-format table and make it the active one, atomically.

    A bad table raises and leaves the last good one in place.
    """
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise price_table.PriceTableError(f"not valid JSON ({exc})") from None
    table = price_table.reduce(parsed, source)
    write_private(Home(home).prices, json.dumps(table, sort_keys=True))
    return table


def update_table(home: Path, source: str, raw: bytes | None = None) -> dict[str, Any]:
    """Make the table at source the active one: fetched from that URL, unless its bytes are
    given (a local file). What `steward pricing update` and pricing.refresh_interval do; a
    failure raises saying why, and the last good table stays."""
    if raw is None:
        import httpx  # only this download needs it: the CLI starts faster without

        try:
            response = httpx.get(source, timeout=60, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPStatusError as exc:
            raise price_table.PriceTableError(
                f"{source} answered {exc.response.status_code}") from None
        except httpx.HTTPError as exc:
            raise price_table.PriceTableError(
                f"cannot fetch {source} ({exc.__class__.__name__})") from None
        raw = response.content
    return install_table(home, raw, source)


def active_table(home: Path) -> tuple[dict[str, Any], str]:
    """The table from `steward pricing update` if there is one, else the bundled table."""
    updated = Home(home).prices
    if updated.exists():
        try:
            return price_table.load(updated), "updated"
        except (ValueError, OSError) as exc:
            log.error("ignoring %s (%s); using the bundled price table", updated, exc)
    return price_table.load(price_table.BUNDLED), "bundled"


def load_overrides(conn: Connection) -> dict[str, dict[str, str]]:
    overrides: dict[str, dict[str, str]] = {}
    for row in conn.execute("SELECT * FROM pricing_overrides"):
        overrides[row["model"]] = {field: str(Decimal(row[column]) / MILLION)
                                   for column, field in OVERRIDE_FIELDS.items()
                                   if row[column] is not None}
    return overrides


def load_pricer(home: Path, conn: Connection) -> Pricer:
    table, origin = active_table(home)
    return Pricer(table, origin, load_overrides(conn))


def set_override(conn: Connection, model: str, per_million: dict[str, Decimal | None]
                 ) -> None:
    for name, value in per_million.items():
        if value is not None and (not value.is_finite() or value < 0):
            raise StewardError(f"--{name.replace('_', '-')}: prices are non-negative numbers")
    with transaction(conn):
        conn.execute(
            "INSERT INTO pricing_overrides (model, input, output, cache_read, "
            "cache_write, cache_write_1h, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (model) DO UPDATE SET input = excluded.input, output = excluded.output,"
            " cache_read = excluded.cache_read, cache_write = excluded.cache_write, "
            "cache_write_1h = excluded.cache_write_1h, created_at = excluded.created_at",
            (model, *(None if per_million.get(k) is None else str(per_million[k])
                      for k in OVERRIDE_FIELDS), time.time()))
        changed(conn, "pricing")


def unset_override(conn: Connection, model: str) -> None:
    with transaction(conn):
        changed(conn, "pricing")
        if not conn.execute("DELETE FROM pricing_overrides WHERE model = ?", (model,)).rowcount:
            raise NotFoundError(f"no price override for {model!r} (see `steward pricing show`)")
