"""The dashboard's store: every record's metadata and rollups kept as records are indexed, so
a page never scans the spool.

A local SQLite file (Home.dashboard_db, WAL), derived entirely from the spool: it can be
dropped and rebuilt at any time (`steward dashboard rebuild`), and a schema change rebuilds
it. Three tables:

- `requests`: one row per record (its JSON, plus the columns lists filter and sort on),
  `request_tags` beside it for tag filters;
- `roll`: per resolution (1 min, 15 min, 1 h, 6 h), time slot, dimension (`all`, `model`,
  `provider`, `key`, `tag:<name>`, `tagged:<name>`) and value: requests, errors, cost, token
  sums and fixed log-scale latency and time-to-first-token histograms, so totals and p50/p95
  over any range come from a few hundred rows;
- `cursor`: per spool segment, the byte offset indexed so far. It changes in the same
  transaction as the rows it accounts for, so a record is counted exactly once, whoever
  indexes (the daemon's indexer, a rebuild, both at once).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from steward.errors import StewardError
from steward.files import write_atomic
from steward.home import Home
from steward.records.spool import segment_writer_alive, segments

log = logging.getLogger("steward.dashboard")

STORE_VERSION = 2  # a different version on disk: the store is dropped and rebuilt
# Dimensions of the rollups besides model, provider, key and tag:<name>: every request (the
# totals), and every request carrying a tag of that name (whatever its value).
ALL = "all"
TAGGED = "tagged:"
RETENTION = 31 * 86400.0  # the longest range shown (30 days), and a day to spare
# Rollup resolutions (seconds) and how long each is kept: each range reads the one whose
# slots are its points (1h: minutes, 24h: 15 minutes, 7d: hours, 30d: 6 hours), so a query
# reads at most a few hundred slots per group whatever the traffic.
KEEP = {60: 3 * 3600.0, 900: 26 * 3600.0, 3600: 8 * 86400.0, 21600: RETENTION}
RESOLUTIONS = tuple(KEEP)
PICO = Decimal(10) ** 12  # costs are summed exactly, in whole picodollars
# Latency histogram: bucket 0 is under FIRST_BOUND ms, bucket i < FIRST_BOUND * RATIO**i,
# the last one everything above (about 36 minutes). p50/p95 are within a bucket's width
# (25%), interpolated inside it.
BUCKETS = 56
FIRST_BOUND = 10.0
RATIO = 1.25
LAT = tuple(f"l{i}" for i in range(BUCKETS))
TTFT = tuple(f"f{i}" for i in range(BUCKETS))
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
          "reasoning_tokens")
SUMS = ("requests", "errors", "cost", *TOKENS, *LAT, *TTFT)
BATCH_BYTES = 4 * 1024 * 1024  # spool bytes indexed per transaction


def _schema() -> list[str]:
    sums = ", ".join(f"{name} INTEGER NOT NULL DEFAULT 0" for name in SUMS)
    return [
        "CREATE TABLE requests (id TEXT NOT NULL UNIQUE, ts REAL NOT NULL, key TEXT, "
        "model TEXT, provider TEXT, status INTEGER, cost INTEGER, latency_ms REAL, "
        "record TEXT NOT NULL)",
        "CREATE INDEX requests_ts ON requests (ts)",
        "CREATE INDEX requests_key ON requests (key, ts)",
        "CREATE INDEX requests_model ON requests (model, ts)",
        "CREATE INDEX requests_provider ON requests (provider, ts)",
        "CREATE INDEX requests_status ON requests (status, ts)",
        "CREATE INDEX requests_cost ON requests (cost)",
        "CREATE INDEX requests_latency ON requests (latency_ms)",
        "CREATE TABLE request_tags (req INTEGER NOT NULL, name TEXT NOT NULL, "
        "value TEXT NOT NULL, ts REAL NOT NULL)",
        "CREATE INDEX request_tags_value ON request_tags (name, value, ts)",
        "CREATE INDEX request_tags_req ON request_tags (req)",
        f"CREATE TABLE roll (res INTEGER NOT NULL, dim TEXT NOT NULL, t INTEGER NOT NULL, "
        f"value TEXT NOT NULL, {sums}, PRIMARY KEY (res, dim, t, value)) WITHOUT ROWID",
        "CREATE TABLE cursor (segment TEXT PRIMARY KEY, offset INTEGER NOT NULL)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ]


TABLES = ("requests", "request_tags", "roll", "cursor", "meta")


def connect(home: Home) -> sqlite3.Connection:
    """The store, created or rebuilt empty when missing, unreadable or of another version."""
    path = home.dashboard_db
    try:
        conn = _open(path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        log.error("the dashboard store %s is unreadable (%s): starting it afresh from the "
                  "spool", path, exc)
        remove(path)
        conn = _open(path)
        version = 0
    if version != STORE_VERSION:
        if version:
            log.warning("the dashboard store %s is version %d, this Steward writes %d: "
                        "rebuilding it from the spool", path, version, STORE_VERSION)
        reset(conn, force=False)
    return conn


def _open(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # derived data: a power cut costs a rebuild
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def remove(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


def reset(conn: sqlite3.Connection, force: bool = True) -> None:
    """Drop everything and create the empty schema, in one transaction; without force, only
    if no other process has just done so."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not force and conn.execute("PRAGMA user_version").fetchone()[0] == STORE_VERSION:
            conn.execute("COMMIT")
            return
        try:  # kept across a rebuild: signed-in browsers stay signed in
            session_key = get_meta(conn, "session_key")
        except sqlite3.OperationalError:
            session_key = None
        for table in TABLES:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
        for statement in _schema():
            conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('session_key', ?)",
                     (session_key or secrets.token_hex(32),))
        conn.execute(f"PRAGMA user_version = {STORE_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


# -- histograms -------------------------------------------------------------------------------

_LOG_RATIO = math.log(RATIO)


def bucket(ms: float) -> int:
    if ms < FIRST_BOUND:
        return 0
    return min(BUCKETS - 1, 1 + int(math.log(ms / FIRST_BOUND) / _LOG_RATIO))


def bounds(index: int) -> tuple[float, float]:
    """A bucket's [low, high) in ms (the last one's high is its low: nothing to interpolate)."""
    if index == 0:
        return 0.0, FIRST_BOUND
    low = FIRST_BOUND * RATIO ** (index - 1)
    return low, (low if index == BUCKETS - 1 else low * RATIO)


_BOUNDS = tuple(bounds(i) for i in range(BUCKETS))


def percentiles(counts: Sequence[int], qs: Sequence[float]) -> list[float | None]:
    """The q-quantiles (ascending qs) of a histogram, each interpolated within its bucket
    (geometrically: the buckets are); None when it is empty. One pass for all of them."""
    total = sum(counts)
    if not total:
        return [None] * len(qs)
    out: list[float | None] = []
    ranks = [q * total for q in qs]
    seen = 0
    for index, count in enumerate(counts):
        if not count:
            continue
        while len(out) < len(ranks) and seen + count >= ranks[len(out)]:
            low, high = _BOUNDS[index]
            share = (ranks[len(out)] - seen) / count
            out.append(round(low + (high - low) * share if index == 0
                             else low * (high / low) ** share, 1))
        if len(out) == len(ranks):
            return out
        seen += count
    return out + [round(_BOUNDS[-1][0], 1)] * (len(ranks) - len(out))


def percentile(counts: Sequence[int], q: float) -> float | None:
    return percentiles(counts, (q,))[0]


# -- indexing ---------------------------------------------------------------------------------


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def to_pico(cost: Any) -> int:
    if cost is None:
        return 0
    try:
        return int((Decimal(str(cost)) * PICO).to_integral_value())
    except (InvalidOperation, ValueError):
        return 0


def is_error(status: Any) -> bool:
    """What the caller saw was not a success (or nothing at all)."""
    return not isinstance(status, int) or not 200 <= status < 300


def model_of(record: dict[str, Any]) -> str:
    """As `steward usage` groups: the model that answered, else the one asked for."""
    return record.get("response_model") or record.get("model") or "(none)"


_INDEX = {name: i for i, name in enumerate(SUMS)}
_LAT0 = _INDEX["l0"]
_TTFT0 = _INDEX["f0"]


class Batch:
    """Rollup increments of one transaction, summed in memory, then one upsert per row.

    Records are first summed per minute and combination (model, provider, key, tags): under
    load most of a batch's records share one, so each costs a few additions; the rows of every
    resolution and dimension are made from those sums once, at write time, and only for the
    resolutions that keep their time."""

    def __init__(self, now: float | None = None) -> None:
        self.rows: dict[tuple[int, str, int, str], list[int]] = {}
        self.minutes: dict[tuple[Any, ...], dict[int, int]] = {}
        now = time.time() if now is None else now
        self.since = [(res, now - keep) for res, keep in KEEP.items()]

    def add(self, record: dict[str, Any], ts: float, cost: int) -> None:
        tags = record.get("tags") or {}
        combo = (int(ts // 60) * 60, model_of(record), record.get("provider") or "(none)",
                 record.get("api_key_id") or "(no key)",
                 tuple((name, str(value)) for name, value in tags.items()))
        sums = self.minutes.get(combo)
        if sums is None:
            sums = self.minutes[combo] = {}
        sums[0] = sums.get(0, 0) + 1
        if is_error(record.get("status")):
            sums[1] = sums.get(1, 0) + 1
        if cost:
            sums[2] = sums.get(2, 0) + cost
        for i, name in enumerate(TOKENS, 3):
            value = record.get(name)
            if isinstance(value, int) and value:
                sums[i] = sums.get(i, 0) + value
        latency = record.get("latency_ms")
        if isinstance(latency, int | float):
            i = _LAT0 + bucket(latency)
            sums[i] = sums.get(i, 0) + 1
        ttft = record.get("ttft_ms")
        if isinstance(ttft, int | float):
            i = _TTFT0 + bucket(ttft)
            sums[i] = sums.get(i, 0) + 1

    def _expand(self) -> None:
        rows = self.rows
        width = len(SUMS)
        for (minute, model, provider, key, tags), sums in self.minutes.items():
            dims = [(ALL, ""), ("model", model), ("provider", provider), ("key", key)]
            for name, value in tags:
                dims += [(f"tag:{name}", value), (f"{TAGGED}{name}", "")]
            deltas = list(sums.items())
            for res, since in self.since:
                if minute + 60 <= since:
                    continue
                slot = minute // res * res
                for dim, value in dims:
                    row = rows.get((res, dim, slot, value))
                    if row is None:
                        row = rows[(res, dim, slot, value)] = [0] * width
                    for i, d in deltas:
                        row[i] += d
        self.minutes.clear()

    def write(self, conn: sqlite3.Connection) -> None:
        self._expand()
        if not self.rows:
            return
        columns = ", ".join(SUMS)
        marks = ", ".join("?" * len(SUMS))
        updates = ", ".join(f"{c} = {c} + excluded.{c}" for c in SUMS)
        conn.executemany(
            f"INSERT INTO roll (res, dim, t, value, {columns}) VALUES (?, ?, ?, ?, {marks}) "
            f"ON CONFLICT (res, dim, t, value) DO UPDATE SET {updates}",
            [(*k, *v) for k, v in self.rows.items()])
        self.rows.clear()


def insert(conn: sqlite3.Connection, batch: Batch, record: dict[str, Any]) -> bool:
    """One record into `requests` and the batch; False when it is already there or unusable."""
    try:
        ts = epoch(record["ts"])
        record_id = str(record["id"])
    except (KeyError, TypeError, ValueError):
        return False
    cost = to_pico(record.get("cost"))
    latency = record.get("latency_ms")
    status = record.get("status")
    cursor = conn.execute(
        "INSERT OR IGNORE INTO requests (id, ts, key, model, provider, status, cost, "
        "latency_ms, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (record_id, ts, record.get("api_key_id"), model_of(record), record.get("provider"),
         status if isinstance(status, int) else None, cost,
         latency if isinstance(latency, int | float) else None,
         json.dumps(record, separators=(",", ":"), ensure_ascii=False)))
    if not cursor.rowcount:
        return False
    tags = record.get("tags") or {}
    if tags:
        conn.executemany("INSERT INTO request_tags (req, name, value, ts) VALUES (?, ?, ?, ?)",
                         [(cursor.lastrowid, n, str(v), ts) for n, v in tags.items()])
    batch.add(record, ts, cost)
    return True


@dataclass
class StepResult:
    records: int = 0  # indexed now
    more: bool = False  # a batch's worth was left for the next step


def step(conn: sqlite3.Connection, home: Home, max_bytes: int = BATCH_BYTES) -> StepResult:
    """Index what the spool holds past the cursor, up to max_bytes, in one transaction."""
    result = StepResult()
    on_disk = segments(home.spool)
    conn.execute("BEGIN IMMEDIATE")
    try:
        offsets = dict(conn.execute("SELECT segment, offset FROM cursor").fetchall())
        names = {p.name for p in on_disk}
        gone = [name for name in offsets if name not in names]
        conn.executemany("DELETE FROM cursor WHERE segment = ?", [(n,) for n in gone])
        batch = Batch()
        budget = max_bytes
        for path in on_disk:
            start = offsets.get(path.name, 0)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size <= start:
                continue
            if budget <= 0:
                result.more = True
                break
            limit = min(size, start + budget)
            end = _index_segment(conn, batch, path, start, limit, size, result)
            budget -= max(end - start, 1)
            if limit < size:  # stopped by the batch size, not at a record still being written
                result.more = True
            if end != start:
                conn.execute("INSERT INTO cursor (segment, offset) VALUES (?, ?) ON CONFLICT "
                             "(segment) DO UPDATE SET offset = excluded.offset",
                             (path.name, end))
        batch.write(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if result.records or gone:
        save_offsets(conn, home)
    return result


def _index_segment(conn: sqlite3.Connection, batch: Batch, path: Path, start: int, limit: int,
                   size: int, result: StepResult) -> int:
    """Index the whole lines in [start, limit); returns the offset after the last one."""
    with path.open("rb") as fh:
        fh.seek(start)
        data = fh.read(limit - start)
        if b"\n" not in data and limit < size:
            data += fh.readline()  # one record longer than a batch: read it whole
    last = data.rfind(b"\n")
    if last < 0:
        if data and start + len(data) >= size and not segment_writer_alive(path):
            log.error("dashboard: skipping %d bytes of an unfinished record at the end of %s "
                      "(its writer died mid-write)", len(data), path.name)
            return start + len(data)
        return start
    offset = start
    for line in data[:last].split(b"\n"):
        try:
            record = json.loads(line)
        except ValueError:
            log.error("dashboard: skipping a line of %s at byte %d that is not JSON",
                      path.name, offset)
            record = None
        offset += len(line) + 1
        if isinstance(record, dict) and insert(conn, batch, record):
            result.records += 1
    return start + last + 1


def save_offsets(conn: sqlite3.Connection, home: Home) -> None:
    """The cursor as a file beside the uploader's, so its cleanup keeps every segment the
    dashboard has not read yet (records/upload.py). It may lag the store: that only keeps a
    segment a little longer."""
    offsets = dict(conn.execute("SELECT segment, offset FROM cursor").fetchall())
    with contextlib.suppress(OSError):
        write_atomic(home.dashboard_cursor, json.dumps({"offsets": offsets}).encode())


def prune(conn: sqlite3.Connection, now: float) -> None:
    """Forget what is older than the longest range: rows, tags and rollups."""
    cutoff = now - RETENTION
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM request_tags WHERE ts < ?", (cutoff,))
        conn.execute("DELETE FROM requests WHERE ts < ?", (cutoff,))
        for res, keep in KEEP.items():
            conn.execute("DELETE FROM roll WHERE res = ? AND t < ?", (res, now - keep - res))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def index_all(conn: sqlite3.Connection, home: Home) -> int:
    """Index everything the spool holds past the cursor; the number of records indexed."""
    total = 0
    while True:
        result = step(conn, home)
        total += result.records
        if not result.more:
            return total


@dataclass
class Rebuilt:
    records: int
    segments: int
    seconds: float


def rebuild(home: Home) -> Rebuilt:
    """Drop the store and index every segment still on disk. A running gateway's indexer may
    index some of them at the same time: each batch is one transaction, so nothing is counted
    twice, and the figures given are the store's."""
    started = time.monotonic()
    try:
        conn = connect(home)
        try:
            reset(conn)
            index_all(conn, home)
            prune(conn, time.time())
            save_offsets(conn, home)
            count = conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
            return Rebuilt(count, len(segments(home.spool)), time.monotonic() - started)
        finally:
            conn.close()
    except (OSError, sqlite3.Error) as exc:
        where = getattr(exc, "filename", None) or home.dashboard_db
        raise StewardError(f"cannot rebuild the dashboard store ({where}): "
                           f"{getattr(exc, 'strerror', None) or exc}") from None
