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

from steward.dashboard.store import LAT, PICO, SUMS, TOKENS, TTFT, percentile
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

_COLS = ", ".join(f"SUM({c})" for c in SUMS)
_I = {name: i for i, name in enumerate(SUMS)}


def _usd(pico: int) -> str:
    return str((Decimal(pico) / PICO).normalize()) if pico else "0"


def _add(into: list[int], row: Any) -> None:
    for i, v in enumerate(row):
        into[i] += v


def _sub(into: list[int], row: list[int]) -> None:
    for i, v in enumerate(row):
        into[i] -= v


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
            "latency_p50_ms": percentile(_lat(sums), 0.5),
            "latency_p95_ms": percentile(_lat(sums), 0.95),
            "ttft_p50_ms": percentile(_ttft(sums), 0.5),
            "ttft_p95_ms": percentile(_ttft(sums), 0.95)}


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


def _per_point(conn: sqlite3.Connection, spec: Range, dim: str, start: int, end: int,
               shown: list[str] | None = None) -> list[tuple[int, str | None, tuple[int, ...]]]:
    """Sums per point (and per value: the shown ones by name, the rest as None). The rows
    of one slot are the point's: each range reads the resolution of its step."""
    if shown is None:
        select, group, args = "NULL", "1", []
    else:
        select = f"CASE WHEN value IN ({', '.join('?' * len(shown))}) THEN value END"
        group, args = "1, 2", list(shown)
    rows = conn.execute(
        f"SELECT (t - ?) / ?, {select}, {_COLS} FROM roll WHERE res = ? AND dim = ? "
        f"AND t >= ? AND t < ? GROUP BY {group}",
        [start, spec.step, *args, spec.res, dim, start, end]).fetchall()
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
    # Every request has exactly one provider: those rows are the totals.
    totals_by_point = [[0] * len(SUMS) for _ in range(points)]
    for i, _, sums in _per_point(conn, spec, "provider", start, end):
        _add(totals_by_point[i], sums)
    total = [0] * len(SUMS)
    for sums in totals_by_point:
        _add(total, sums)
    ranked = _ranked(conn, spec, "dim = ?", [group], start, end, MAX_GROUPS + 1)
    shown = [value for _, value, _, _ in ranked[:MAX_GROUPS]]
    per_group: dict[str, list[list[int]]] = {
        value: [[0] * len(SUMS) for _ in range(points)] for value in shown}
    if len(ranked) > MAX_GROUPS:
        per_group[OTHER] = [[0] * len(SUMS) for _ in range(points)]
    for i, value, sums in _per_point(conn, spec, group, start, end, shown):
        _add(per_group[OTHER if value is None else value][i], sums)
    if group.startswith("tag:"):
        untagged = [list(s) for s in totals_by_point]
        for series in per_group.values():
            for i, sums in enumerate(series):
                _sub(untagged[i], sums)
        if any(s[0] for s in untagged):
            per_group[UNTAGGED] = untagged
    def label(value: str) -> str:
        return key_names.get(value, value) if group == "key" else value

    return {"range": range_name, "from": start, "to": end, "step": spec.step, "group": group,
            "totals": _totals(total),
            "series": {"t": [start + i * spec.step for i in range(points)],
                       "groups": [_series(label(name), sums)
                                  for name, sums in per_group.items()]},
            "top": {"keys": _top(conn, spec, "dim = 'key'", start, end, key_names),
                    "models": _top(conn, spec, "dim = 'model'", start, end, {}),
                    "tags": _top(conn, spec, "dim LIKE 'tag:%'", start, end, {})}}


def _series(name: str, points: list[list[int]]) -> dict[str, Any]:
    return {"name": name,
            "requests": [p[_I["requests"]] for p in points],
            "errors": [p[_I["errors"]] for p in points],
            "cost": [float(Decimal(p[_I["cost"]]) / PICO) for p in points],
            "input_tokens": [p[_I["input_tokens"]] for p in points],
            "output_tokens": [p[_I["output_tokens"]] for p in points],
            "latency_p50_ms": [percentile(_lat(p), 0.5) for p in points],
            "latency_p95_ms": [percentile(_lat(p), 0.95) for p in points],
            "ttft_p50_ms": [percentile(_ttft(p), 0.5) for p in points]}


def _top(conn: sqlite3.Connection, spec: Range, where: str, start: int, end: int,
         names: Mapping[str, str]) -> list[dict[str, Any]]:
    out = []
    for dim, value, requests, cost in _ranked(conn, spec, where, [], start, end, TOP):
        name = f"{dim[4:]}={value}" if dim.startswith("tag:") else names.get(value, value)
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
    min_cost = _number(params, "min_cost")
    if min_cost is not None:
        where.append("r.cost >= ?")
        args.append(int(Decimal(str(min_cost)) * PICO))
    min_latency = _number(params, "min_latency_ms")
    if min_latency is not None:
        where.append("r.latency_ms >= ?")
        args.append(min_latency)
    limit_text = params.get("limit", "").strip() or str(DEFAULT_LIMIT)
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
        raise BadRequest(f"limit {limit_text!r}: use a whole number from 1 to {MAX_LIMIT}")
    limit = int(limit_text)
    cursor = params.get("cursor", "").strip()
    if cursor:
        after_ts, after_row = _uncursor(cursor)
        where.append(f"({ts}, r.rowid) < (?, ?)")
        args += [after_ts, after_row]
    sql = (f"SELECT r.rowid, r.ts, r.record FROM requests r {tag_join} "
           f"{'WHERE ' + ' AND '.join(where) if where else ''} "
           f"ORDER BY {ts} DESC, r.rowid DESC LIMIT ?")
    rows = conn.execute(sql, [*args, limit + 1]).fetchall()
    out = [_with_name(json.loads(row[2]), key_names) for row in rows[:limit]]
    more = len(rows) > limit
    return {"requests": out,
            "next": _cursor(rows[limit - 1][1], rows[limit - 1][0]) if more else None}


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
