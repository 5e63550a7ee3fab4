"""The dashboard store on real files: exactly-once indexing whoever indexes, torn tails,
percentiles from the histograms, and the uploader keeping segments the dashboard has not read."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from steward.dashboard import queries, store
from steward.home import Home
from steward.ids import uuid7
from steward.records.record import FIELDS, rfc3339
from steward.records.upload import Cursor, Uploader


def _record(i: int, latency: float = 100.0) -> dict[str, Any]:
    record: dict[str, Any] = dict.fromkeys(FIELDS)
    record.update(id=str(uuid7()), ts=rfc3339(time.time() - 60), api_key_id=f"key_{i % 3}",
                  provider="openai", model="gpt-4o", method="POST", path="/v1/chat/completions",
                  status=200 if i % 10 else 500, stream=False, input_tokens=10,
                  output_tokens=i, latency_ms=latency, tags={"team": f"t{i % 2}"},
                  cost="0.000000000001")  # one picodollar: the smallest the store counts
    return record


def _segment(home: Home, name: str, records: list[dict[str, Any]], tail: bytes = b"") -> Path:
    home.spool.mkdir(parents=True, exist_ok=True)
    path = home.spool / f"20200101T00000{name}-999999-00000abcdef.ndjson"  # a dead writer
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)
    return path


def test_two_indexers_at_once_count_each_record_once(tmp_path: Path) -> None:
    home = Home(tmp_path)
    records = [_record(i) for i in range(3000)]
    for n in range(3):
        _segment(home, str(n), records[n * 1000:(n + 1) * 1000])
    conns = [store.connect(home), store.connect(home)]

    def index(conn: Any) -> None:
        while store.step(conn, home, max_bytes=20_000).more:
            pass

    threads = [threading.Thread(target=index, args=(c,)) for c in conns]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conn = conns[0]
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 3000
    overview = queries.overview(conn, "1h", "key", {})
    assert overview["totals"]["requests"] == 3000 and overview["totals"]["errors"] == 300
    assert overview["totals"]["cost"] == "3E-9"
    assert overview["totals"]["output_tokens"] == sum(range(3000))
    assert {g["name"]: sum(g["requests"]) for g in overview["series"]["groups"]} == \
        {"key_0": 1000, "key_1": 1000, "key_2": 1000}
    assert store.step(conn, home).records == 0  # nothing left, nothing twice


def test_a_torn_tail_of_a_dead_writer_is_skipped(tmp_path: Path) -> None:
    home = Home(tmp_path)
    _segment(home, "0", [_record(1), _record(2)], tail=b'{"id": "cut-o')
    conn = store.connect(home)
    assert store.index_all(conn, home) == 2
    assert store.step(conn, home).records == 0
    offsets = dict(conn.execute("SELECT segment, offset FROM cursor").fetchall())
    assert list(offsets.values()) == [next(home.spool.glob("*.ndjson")).stat().st_size]


def test_percentiles_come_within_a_bucket(tmp_path: Path) -> None:
    home = Home(tmp_path)
    latencies = [5.0 * 1.07 ** i for i in range(120)]  # 5 ms to 16 s
    _segment(home, "0", [_record(i, latency) for i, latency in enumerate(latencies)])
    conn = store.connect(home)
    store.index_all(conn, home)
    totals = queries.overview(conn, "24h", "model", {})["totals"]
    exact = statistics.quantiles(latencies, n=100, method="inclusive")
    for got, want in ((totals["latency_p50_ms"], exact[49]), (totals["latency_p95_ms"],
                                                               exact[94])):
        assert want / store.RATIO <= got <= want * store.RATIO


def test_uploads_keep_segments_the_dashboard_has_not_read(tmp_path: Path) -> None:
    home = Home(tmp_path)
    uploader = Uploader(home, "http://127.0.0.1:9/", None, batch_size=10, interval=1.0,
                        retention=0.0, max_spool_bytes=1 << 30, encoder=lambda b: (b, {}))
    conn = store.connect(home)
    first = _segment(home, "0", [_record(1)])
    store.index_all(conn, home)  # the dashboard has a cursor from now on
    second = _segment(home, "1", [_record(2)])
    Cursor(offsets={p.name: p.stat().st_size for p in (first, second)}).save(
        home.upload_cursor)  # both uploaded
    for path in (first, second):
        os.utime(path, (time.time() - 60, time.time() - 60))  # past a retention of 0
    uploader.cleanup()
    assert not first.exists() and second.exists()  # the second is not indexed yet
    store.index_all(conn, home)
    uploader.cleanup()
    assert not second.exists()
    assert conn.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 2


def test_groups_past_ten_are_summed_as_other(tmp_path: Path) -> None:
    home = Home(tmp_path)
    records = []
    for m in range(12):  # model m: m + 1 requests, each costing m + 1 picodollars
        for n in range(m + 1):
            record = _record(n, latency=50.0 * (m + 1))
            record.update(model=f"model-{m:02d}", cost=f"{(m + 1) / 10**12:.12f}",
                          tags={"team": "a"} if n % 2 else {})
            records.append(record)
    _segment(home, "0", records)
    conn = store.connect(home)
    store.index_all(conn, home)
    overview = queries.overview(conn, "1h", "model", {})
    groups = {g["name"]: g for g in overview["series"]["groups"]}
    assert list(groups) == [f"model-{m:02d}" for m in range(11, 1, -1)] + ["(other)"]
    other = groups["(other)"]
    assert sum(other["requests"]) == 1 + 2  # models 0 and 1
    assert sum(sum(g["requests"]) for g in groups.values()) == len(records) == 78
    p50 = next(p for p in other["latency_p50_ms"] if p is not None)
    assert 50 / store.RATIO <= p50 <= 100 * store.RATIO
    by_team = queries.overview(conn, "1h", "tag:team", {})["series"]["groups"]
    tagged = sum(1 for r in records if r["tags"])
    assert {g["name"]: sum(g["requests"]) for g in by_team} == \
        {"a": tagged, "(untagged)": len(records) - tagged}
    assert [m["name"] for m in overview["top"]["models"]] == \
        [f"model-{m:02d}" for m in range(11, 1, -1)]
