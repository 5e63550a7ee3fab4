"""What a budget and a rate limit add to a request: the admit and settle stages alone, in
process, CPU time per request (`python bench/governor_cost.py`).

The pipeline calls Governor.admit before forwarding and Governor.settle when the record is
written; everything else a request does is the same with or without budgets. One budget and
one RPM/TPM limit on the request's key, the bundled price table, a chat body as the bench
sends it; the lease covers every request (the database is met only by the background sync).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from steward import db, providers  # noqa: E402
from steward.budgets import store  # noqa: E402
from steward.budgets.governor import Governor  # noqa: E402
from steward.budgets.ledger import Ledger  # noqa: E402
from steward.pricing import table  # noqa: E402
from steward.pricing.pricer import Pricer  # noqa: E402
from steward.providers.base import Route  # noqa: E402
from steward.proxy.exchange import Exchange  # noqa: E402
from steward.proxy.routing import Upstream  # noqa: E402
from steward.secrets.gateway_keys import GatewayKey  # noqa: E402

BODY = (b'{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello to the benchmark"}]}')
N = 20000


def exchange() -> Exchange:
    ex = Exchange(method="POST", path="/v1/chat/completions", query=b"")
    ex.key = GatewayKey(id="key_bench", name="bench", prefix="mdm_sk_x", tags={"team": "a"})
    ex.upstream = Upstream("openai", providers.FORMATS["openai"], "http://127.0.0.1:1/v1")
    ex.route = Route("chat", "/chat/completions")
    ex.request_model = "gpt-4o"
    return ex


async def per_request(governor: Governor, pricer: Pricer) -> float:
    record = {"cost": "0.00012", "input_tokens": 25, "output_tokens": 12}
    for _ in range(500):  # warm: the lease grows to what is in flight
        admission = await governor.admit(exchange(), BODY, pricer)
        if admission is not None:
            governor.settle(admission, record)  # type: ignore[arg-type]
    await governor.ledger.sync()
    exchanges = [exchange() for _ in range(N)]
    start = time.process_time()
    for ex in exchanges:
        admission = await governor.admit(ex, BODY, pricer)
        if admission is not None:
            governor.settle(admission, record)  # type: ignore[arg-type]
    return (time.process_time() - start) / N * 1000


async def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="steward-governor-"))
    path = home / "steward.db"
    conn = db.connect(path)
    store.set_budget(conn, "key:key_bench", store.parse_amount("1000000"), "month")
    store.set_limit(conn, "key:key_bench", 100_000_000, 10**12)
    budgets, limits = store.load_budgets(conn), store.load_limits(conn)
    pricer = Pricer(table.load(table.BUNDLED), "bundled")
    off = Governor(Ledger(lambda: db.connect(path), "bench:1"))
    on = Governor(Ledger(lambda: db.connect(path), "bench:2"))
    on.configure(budgets, limits)
    idle = await per_request(off, pricer) if off.active else 0.0
    governed = await per_request(on, pricer)
    await on.ledger.close()
    print(f"admit + settle per request, CPU: no budgets or limits {idle * 1000:.1f} µs "
          f"(the stage is skipped); one budget and one RPM/TPM limit {governed * 1000:.1f} µs "
          f"({N:,} requests)")


if __name__ == "__main__":
    asyncio.run(main())
