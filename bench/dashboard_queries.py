"""`python bench/dashboard_queries.py [N] [--span 30d|1h]`: how long each dashboard API query
takes with N (default 1,000,000) requests in range.

Fills a dashboard store (steward/dashboard/store.py, in a temporary home under the current
directory, DASHBOARD_BENCH_DIR to choose another disk) with N synthetic records spread over
the last 30 days (or packed into the last hour with --span 1h: every range then holds all of
them), through the same insert and rollup code the indexer uses; then times every query the
API makes: the overview for each range and grouping, the request list with each filter and a
second page, the filter menus and one record. Prints the median of 5 runs per query in ms; the
target is 200 ms each.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from steward.dashboard import queries, store
from steward.home import Home
from steward.ids import uuid7
from steward.records.record import FIELDS, rfc3339

PROVIDERS = {"openai": ["gpt-4o", "gpt-4o-mini", "o3"],
             "anthropic": ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"],
             "gemini": ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.0-flash"],
             "bedrock": ["us.anthropic.claude-sonnet-4-5", "amazon.nova-pro", "meta.llama4"]}
KEYS = [f"key_{i:012x}" for i in range(50)]
TEAMS = [f"team-{i}" for i in range(8)]
FEATURES = [f"feature-{i}" for i in range(20)]
TARGET_MS = 200.0


def synthetic(rng: random.Random, ts: float) -> dict[str, Any]:
    provider = rng.choice(list(PROVIDERS))
    model = rng.choice(PROVIDERS[provider])
    stream = rng.random() < 0.4
    roll = rng.random()
    status = 200 if roll < 0.97 else 429 if roll < 0.99 else 500
    ok = status == 200
    input_tokens = int(rng.lognormvariate(6.5, 1.0)) if ok else None
    output_tokens = int(rng.lognormvariate(5.0, 1.0)) if ok else None
    latency = rng.lognormvariate(6.7, 0.8)
    tags = {"team": rng.choice(TEAMS)}
    if rng.random() < 0.5:
        tags["feature"] = rng.choice(FEATURES)
    record: dict[str, Any] = dict.fromkeys(FIELDS)
    key = rng.choice(KEYS)
    record.update(
        id=str(uuid7()), ts=rfc3339(ts), node="bench", api_key_id=key,
        api_key_uuid="01900000-0000-7000-8000-000000000000", provider=provider,
        format=provider, endpoint="chat/completions", method="POST",
        path="/v1/chat/completions", model=model, response_model=model, stream=stream,
        status=status, input_tokens=input_tokens, output_tokens=output_tokens,
        cache_read_tokens=(input_tokens or 0) // 4 if ok else None,
        cache_write_tokens=0 if ok else None, reasoning_tokens=0 if ok else None,
        latency_ms=round(latency, 3), ttft_ms=round(latency / 4, 3) if stream else None,
        tags=tags, error=None if ok else f"upstream returned {status}",
        body_ref=f"s3://bodies/steward/{key}/2026/11/28/{uuid7()}.json.gz",
        cost=f"{((input_tokens or 0) * 25 + (output_tokens or 0) * 100) / 10**7:.7f}"
        if ok else None, pricing_status="ok" if ok else "no_usage")
    return record


def fill(home: Home, n: int, span: float, now: float) -> float:
    conn = store.connect(home)
    rng = random.Random(18)
    started = time.monotonic()
    chunk = 50_000
    for first in range(0, n, chunk):
        # In time order, as the indexer meets them: chunk by chunk from the oldest.
        size = min(chunk, n - first)
        low = now - span + span * first / n
        times = sorted(low + rng.random() * span * size / n for _ in range(size))
        conn.execute("BEGIN IMMEDIATE")
        batch = store.Batch()
        for ts in times:
            store.insert(conn, batch, synthetic(rng, ts))
        batch.write(conn)
        conn.execute("COMMIT")
        print(f"\r  filled {first + len(times):,} of {n:,}", end="", flush=True)
    conn.execute("ANALYZE")
    conn.close()
    print()
    return time.monotonic() - started


def timed(fn: Any) -> tuple[float, float]:
    """Median wall and CPU milliseconds of 5 runs (CPU: what a busy machine's wait leaves)."""
    wall, cpu = [], []
    for _ in range(5):
        started, used = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - used) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--span", choices=("30d", "1h"), default="30d")
    args = parser.parse_args()
    span = queries.RANGES[args.span].span - 60
    root = Path(tempfile.mkdtemp(prefix="dashboard-bench-",
                                 dir=os.environ.get("DASHBOARD_BENCH_DIR", ".")))
    try:
        home = Home(root)
        now = time.time()
        print(f"{args.n:,} requests over the last {args.span}:")
        seconds = fill(home, args.n, span, now)
        size = sum(p.stat().st_size for p in root.iterdir())
        print(f"  {seconds:.0f} s to fill ({args.n / seconds:,.0f} records/s), "
              f"{size / 1024**2:,.0f} MiB on disk")
        conn = store.connect(home)
        names = {key: f"service-{i}" for i, key in enumerate(KEYS)}
        rows: list[tuple[str, tuple[float, float]]] = []
        for range_name in queries.RANGES:
            for group in ("model", "provider", "key", "tag:team"):
                rows.append((f"overview range={range_name} group={group}", timed(
                    lambda r=range_name, g=group: queries.overview(conn, r, g, names, now))))
        first = queries.requests(conn, {}, names)
        newest = first["requests"][0]
        filters: list[dict[str, str]] = [
            {}, {"key": "service-7"}, {"model": "o3"}, {"provider": "gemini"},
            {"status": "5xx"}, {"status": "429"}, {"tag": "team=team-3"},
            {"tag": "feature=feature-11", "provider": "openai"},
            {"from": str(now - 7200), "to": str(now - 3600)}, {"min_cost": "0.5"},
            {"min_latency_ms": "5000"}, {"cursor": first["next"]},
            {"limit": "200", "model": "gpt-4o", "status": "2xx"}]
        for params in filters:
            label = "&".join(f"{k}={v if k != 'cursor' else '(page 2)'}"
                             for k, v in params.items()) or "(no filter)"
            rows.append((f"requests {label}", timed(
                lambda p=params: queries.requests(conn, p, names))))
        rows.append(("filters", timed(lambda: queries.filters(conn, names, now))))
        rows.append(("one request", timed(lambda: queries.record(conn, newest["id"], names))))
        width = max(len(label) for label, _ in rows)
        print(f"  {'query':<{width}}  {'wall ms':>8}  {'CPU ms':>8}")
        for label, (wall, cpu) in rows:
            print(f"  {label:<{width}}  {wall:8.1f}  {cpu:8.1f}"
                  f"{'' if wall <= TARGET_MS else '  OVER'}")
        print(f"  slowest: {max(w for _, (w, _) in rows):.1f} ms wall, "
              f"{max(c for _, (_, c) in rows):.1f} ms CPU (target {TARGET_MS:.0f} ms); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
