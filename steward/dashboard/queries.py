"""What the dashboard's JSON API answers, read from the store (blocking: run in a thread).

Overview figures come from the rollups only: a few hundred to a few tens of thousands of rows
whatever the traffic. Request lists walk an index newest first and stop at the page's end.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from steward.dashboard.store import (
    ALL,
    LAT,
    PICO,
    SUMS,
    TAGGED,
    TOKENS,
    TTFT,
    percentile,
    percentiles,
)
from steward.errors import StewardError


class BadRequest(StewardError):
    """A query parameter the API cannot use: 400, with a message saying what to send."""


@dataclass(frozen=True)
class Range:
    span: int  # seconds shown
    step: int  # seconds per point
    res: int  # rollup resolution read


RANGES = {"1h": Range(3600, 60, 60), "24h": Range(86400, 900, 900),
          "7d": Range(7 * 86400, 3600, 3600), "30d": Range(30 * 86400, 6 * 3600, 6 * 3600)}
GROUPS = ("model", "provider", "key")
MAX_GROUPS = 10  # series drawn; the rest is summed into OTHER
OTHER = "(other)"
UNTAGGED = "(untagged)"
TOP = 10

_ROW = ", ".join(SUMS)
_I = {name: i for i, name in enumerate(SUMS)}


def _usd(pico: int) -> str:
    return str((Decimal(pico) / PICO).normalize()) if pico else "0"


def _minus(a: list[int], b: list[int]) -> list[int]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _lat(sums: list[int]) -> list[int]:
    return sums[_I["l0"]:_I["l0"] + len(LAT)]


def _ttft(sums: list[int]) -> list[int]:
    return sums[_I["f0"]:_I["f0"] + len(TTFT)]


def _totals(sums: list[int]) -> dict[str, Any]:
    requests, errors = sums[_I["requests"]], sums[_I["errors"]]
    return {"requests": requests, "errors": errors,
            "error_rate": round(errors / requests, 6) if requests else 0.0,
            "cost": _usd(sums[_I["cost"]]),
            **{name: sums[_I[name]] for name in TOKENS},
            **dict(zip(("latency_p50_ms", "latency_p95_ms"),
                       percentiles(_lat(sums), (0.5, 0.95)), strict=True)),
            **dict(zip(("ttft_p50_ms", "ttft_p95_ms"),
                       percentiles(_ttft(sums), (0.5, 0.95)), strict=True))}


def check_group(group: str) -> str:
    if group in GROUPS or (group.startswith("tag:") and len(group) > 4):
        return group
    raise BadRequest(f"group {group!r}: use model, provider, key or tag:<name>")


def window(range_name: str, now: float) -> tuple[Range, int, int]:
    spec = RANGES.get(range_name)
    if spec is None:
        raise BadRequest(f"range {range_name!r}: use one of {', '.join(RANGES)}")
    to = math.ceil(now / spec.step) * spec.step
    return spec, to - spec.span, to


def _slots(conn: sqlite3.Connection, spec: Range, dim: str, start: int, end: int,
           values: list[str] | None = None) -> list[tuple[int, str, tuple[int, ...]]]:
    """(point, value, sums) of one dimension in the range: each range reads the resolution of
    its step, so a slot is a point and nothing needs summing."""
    only, args = "", []
    if values is not None:
        only, args = f"AND value IN ({', '.join('?' * len(values))})", values
    rows = conn.execute(
        f"SELECT (t - ?) / ?, value, {_ROW} FROM roll WHERE res = ? AND dim = ? AND t >= ? "
        f"AND t < ? {only}", [start, spec.step, spec.res, dim, start, end, *args]).fetchall()
    return [(row[0], row[1], row[2:]) for row in rows]


def _ranked(conn: sqlite3.Connection, spec: Range, where: str, args: list[Any], start: int,
            end: int, limit: int) -> list[tuple[str, str, int, int]]:
    """(dim, value, requests, cost) with the most spend in the range, best first."""
    return conn.execute(
        f"SELECT dim, value, SUM(requests), SUM(cost) FROM roll WHERE res = ? AND {where} "
        "AND t >= ? AND t < ? GROUP BY dim, value ORDER BY SUM(cost) DESC, SUM(requests) DESC, "
        "value LIMIT ?", [spec.res, *args, start, end, limit]).fetchall()


def overview(conn: sqlite3.Connection, range_name: str, group: str,
             key_names: Mapping[str, str], now: float | None = None) -> dict[str, Any]:
    spec, start, end = window(range_name, time.time() if now is None else now)
    check_group(group)
    points = spec.span // spec.step

    def empty() -> list[list[int]]:
        return [[0] * len(SUMS) for _ in range(points)]

    totals = empty()
    for i, _, sums in _slots(conn, spec, ALL, start, end):
        totals[i] = list(sums)
    ranked = _ranked(conn, spec, "dim = ?", [group], start, end, MAX_GROUPS + 1)
    shown = [value for _, value, _, _ in ranked[:MAX_GROUPS]]
    per_group = {value: empty() for value in shown}
    for i, value, sums in _slots(conn, spec, group, start, end, shown):
        per_group[value][i] = list(sums)
    # What the groups not shown add up to, and requests without the tag, by subtraction:
    # histograms are counts, so they subtract exactly.
    whole = totals
    if group.startswith("tag:"):
        whole = empty()
        for i, _, sums in _slots(conn, spec, TAGGED + group[4:], start, end):
            whole[i] = list(sums)
    if len(ranked) > MAX_GROUPS:
        groups = list(per_group.values())
        per_group[OTHER] = [
            _minus(whole[i], [sum(c) for c in zip(*(g[i] for g in groups), strict=True)])
            for i in range(points)]
    if group.startswith("tag:"):
        untagged = [_minus(t, w) for t, w in zip(totals, whole, strict=True)]
        if any(p[0] for p in untagged):
            per_group[UNTAGGED] = untagged

    def label(value: str) -> str:
        return key_names.get(value, value) if group == "key" else value

    return {"range": range_name, "from": start, "to": end, "step": spec.step, "group": group,
            "totals": _totals([sum(column) for column in zip(*totals, strict=True)]),
            "series": {"t": [start + i * spec.step for i in range(points)],
                       "groups": [_series(label(name), sums)
                                  for name, sums in per_group.items()]},
            "top": {"keys": _top(conn, spec, "key", start, end, key_names,
                                 ranked if group == "key" else None),
                    "models": _top(conn, spec, "model", start, end, {},
                                   ranked if group == "model" else None),
                    "tags": _top(conn, spec, "tag:", start, end, {}, None)}}


def _series(name: str, points: list[list[int]]) -> dict[str, Any]:
    latency = [percentiles(_lat(p), (0.5, 0.95)) if p[0] else (None, None) for p in points]
    return {"name": name,
            "requests": [p[_I["requests"]] for p in points],
            "errors": [p[_I["errors"]] for p in points],
            "cost": [float(Decimal(p[_I["cost"]]) / PICO) for p in points],
            "input_tokens": [p[_I["input_tokens"]] for p in points],
            "output_tokens": [p[_I["output_tokens"]] for p in points],
            "latency_p50_ms": [p50 for p50, _ in latency],
            "latency_p95_ms": [p95 for _, p95 in latency],
            "ttft_p50_ms": [percentile(_ttft(p), 0.5) if p[0] else None for p in points]}


def _top(conn: sqlite3.Connection, spec: Range, dim: str, start: int, end: int,
         names: Mapping[str, str], ranked: list[tuple[str, str, int, int]] | None
         ) -> list[dict[str, Any]]:
    """The values of a dimension (every tag's, for `tag:`) with the most spend."""
    if ranked is None:
        where, args = ("dim >= ? AND dim < ?", ["tag:", "tag;"]) if dim == "tag:" else \
            ("dim = ?", [dim])  # a range on the key, where LIKE would scan
        ranked = _ranked(conn, spec, where, args, start, end, TOP)
    out = []
    for found, value, requests, cost in ranked[:TOP]:
        name = f"{found[4:]}={value}" if found.startswith("tag:") else names.get(value, value)
        out.append({"name": name, "requests": requests, "cost": _usd(cost)})
    return out


# -- the request list -------------------------------------------------------------------------

MAX_LIMIT = 200
DEFAULT_LIMIT = 50


def _cursor(ts: float, rowid: int) -> str:
    return base64.urlsafe_b64encode(json.dumps([ts, rowid]).encode()).decode().rstrip("=")


def _uncursor(text: str) -> tuple[float, int]:
    try:
        ts, rowid = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return float(ts), int(rowid)
    except (ValueError, TypeError, binascii.Error):
        raise BadRequest("cursor: not a cursor this API gave (use the `next` of the last "
                         "page)") from None


def _number(params: Mapping[str, str], name: str) -> float | None:
    text = params.get(name, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} {text!r}: expected a number") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} {text!r}: expected a finite number")
    return value


def requests(conn: sqlite3.Connection, params: Mapping[str, str],
             key_names: Mapping[str, str]) -> dict[str, Any]:
    """Newest first, filtered; `next` continues after the last one given."""
    where: list[str] = []
    args: list[Any] = []
    tag_join = ""
    key = params.get("key", "").strip()
    if key:
        ids = [k for k, n in key_names.items() if n == key] or [key]
        where.append(f"r.key IN ({', '.join('?' * len(ids))})")
        args += ids
    for name in ("model", "provider"):
        value = params.get(name, "").strip()
        if value:
            where.append(f"r.{name} = ?")
            args.append(value)
    status = params.get("status", "").strip().lower()
    if status:
        if status in ("2xx", "3xx", "4xx", "5xx"):
            low = int(status[0]) * 100
            where.append("r.status >= ? AND r.status < ?")
            args += [low, low + 100]
        elif status.isdigit():
            where.append("r.status = ?")
            args.append(int(status))
        else:
            raise BadRequest(f"status {status!r}: use a status code (429) or a class (2xx, "
                             "4xx, 5xx)")
    tag = params.get("tag", "").strip()
    if tag:
        name, sep, value = tag.partition("=")
        if not sep or not name:
            raise BadRequest(f"tag {tag!r}: use name=value, e.g. team=search")
        tag_join = ("JOIN request_tags g INDEXED BY request_tags_value ON g.req = r.rowid "
                    "AND g.name = ? AND g.value = ?")
        args = [name.strip().lower(), value, *args]
    since, until = _number(params, "from"), _number(params, "to")
    ts = "g.ts" if tag_join else "r.ts"
    if since is not None:
        where.append(f"{ts} >= ?")
        args.append(since)
    if until is not None:
        where.append(f"{ts} < ?")
        args.append(until)
    index = ""
    min_cost = _number(params, "min_cost")
    min_latency = _number(params, "min_latency_ms")
    for column, bound in (("cost", None if min_cost is None else
                           int(Decimal(str(min_cost)) * PICO)), ("latency_ms", min_latency)):
        if bound is None:
            continue
        where.append(f"r.{column} >= ?")
        args.append(bound)
        if not tag_join and not index and _few(conn, column, bound):
            index = f"INDEXED BY requests_{column.split('_')[0]}"
    limit_text = params.get("limit", "").strip() or str(DEFAULT_LIMIT)
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise BadRequest(f"limit {limit_text!r}: use a whole number from 1 to {MAX_LIMIT}")
    limit = int(limit_text)
    cursor = params.get("cursor", "").strip()
    if cursor:
        after_ts, after_row = _uncursor(cursor)
        where.append(f"({ts}, r.rowid) < (?, ?)")
        args += [after_ts, after_row]
    # The page's rows first, from the indexes alone where they cover the filters; then their
    # records (a sort never carries the records' text).
    sql = (f"SELECT r.rowid, {ts} FROM requests r {index} {tag_join} "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} "
           f"ORDER BY {ts} DESC, r.rowid DESC LIMIT ?")
    rows = conn.execute(sql, [*args, limit + 1]).fetchall()
    page = [row[0] for row in rows[:limit]]
    texts = dict(conn.execute(f"SELECT rowid, record FROM requests WHERE rowid IN "
                              f"({', '.join('?' * len(page))})", page).fetchall())
    out = [_with_name(json.loads(texts[rowid]), key_names) for rowid in page]
    more = len(rows) > limit
    return {"requests": out,
            "next": _cursor(rows[limit - 1][1], rows[limit - 1][0]) if more else None}


PROBE = 5000


def _few(conn: sqlite3.Connection, column: str, bound: float) -> bool:
    """Whether few rows pass a minimum (cost, latency): then they are found by their index
    and sorted, rather than by walking every request newest first to find them."""
    return conn.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM requests WHERE {column} >= ? "
                        "LIMIT ?)", (bound, PROBE)).fetchone()[0] < PROBE


def _with_name(record: dict[str, Any], key_names: Mapping[str, str]) -> dict[str, Any]:
    key_id = record.get("api_key_id")
    record["key_name"] = key_names.get(key_id, key_id) if key_id else None
    return record


def record(conn: sqlite3.Connection, request_id: str,
           key_names: Mapping[str, str]) -> dict[str, Any] | None:
    row = conn.execute("SELECT record FROM requests WHERE id = ?", (request_id,)).fetchone()
    return _with_name(json.loads(row[0]), key_names) if row else None


def filters(conn: sqlite3.Connection, key_names: Mapping[str, str],
            now: float | None = None) -> dict[str, Any]:
    """The values seen in the last 30 days, for the filter menus."""
    spec = RANGES["30d"]
    since = int((time.time() if now is None else now) - spec.span) // spec.res * spec.res
    rows = conn.execute("SELECT DISTINCT dim, value FROM roll WHERE res = ? AND t >= ?",
                        (spec.res, since)).fetchall()
    found: dict[str, set[str]] = {}
    for dim, value in rows:
        found.setdefault(dim, set()).add(value)
    tags = {dim[4:]: sorted(values) for dim, values in sorted(found.items())
            if dim.startswith("tag:")}
    return {"keys": sorted({key_names.get(v, v) for v in found.get("key", ())}),
            "models": sorted(found.get("model", ())),
            "providers": sorted(found.get("provider", ())),
            "tags": tags}
