"""One budget, two nodes, one real PostgreSQL: however the callers fall on the nodes, settled
spend never passes the budget, and demand past it leaves less than one request unspent."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.support.daemon import Daemon, cli, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import Postgres, require_postgres
from tests.support.waiting import wait_for

MASTER_KEY = "7b" * 32


@pytest.fixture(scope="module")
def nodes(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[tuple[Daemon, Daemon, str, str]]:
    pg = Postgres(require_postgres()).init()
    daemons: list[Daemon] = []
    try:
        for name in ("budget-a", "budget-b"):
            home = tmp_path_factory.mktemp(name) / "home"
            env = {**provider_env(upstream.url), "STEWARD_MASTER_KEY": MASTER_KEY,
                   "STEWARD_DATABASE__URL": pg.url(), "STEWARD_SERVER__NODE_NAME": name,
                   "STEWARD_BUDGET_SYNC_SECONDS": "0.1"}
            cli("init", home=home, env=env)
            daemons.append(Daemon(home, env=env))
        a, b = daemons
        made = json.loads(cli("keys", "add", "shared-team", "--json", home=a.home,
                              env=a.env).stdout)
        model = f"shared-model-{uuid.uuid4().hex[:8]}"
        # $0.01 a request at most ($1000/M output, max_tokens=10), exactly that when it is used.
        cli("pricing", "set", model, "--input", "0", "--output", "1000", home=a.home, env=a.env)
        cli("budgets", "set", "key:shared-team", "0.10", "--per", "day", home=b.home,
            env=b.env)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Daemon.start, daemons))
        yield a, b, made["key"], model
    finally:
        for daemon in daemons:
            daemon.stop()
        pg.destroy()


def test_two_nodes_never_spend_more_than_one_budget(nodes: tuple[Daemon, Daemon, str, str],
                                                    upstream: FakeUpstream) -> None:
    a, b, key, model = nodes

    async def run() -> list[Any]:
        clients = [openai.AsyncOpenAI(base_url=node.url + "/v1", api_key="sk-test",
                                      max_retries=0, timeout=60,
                                      default_headers={"X-Majordomo-Key": key,
                                                       "x-fake-behavior": "completion-tokens:10"})
                   for node in (a, b)]
        try:
            return await asyncio.gather(
                *(clients[n % 2].chat.completions.create(
                    model=model, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
                  for n in range(40)), return_exceptions=True)
        finally:
            for client in clients:
                await client.close()

    results = asyncio.run(run())
    served = sum(1 for r in results if not isinstance(r, BaseException))
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert served + len(refused) == 40, results
    assert 9 <= served <= 10  # never past $0.10, and less than one request's cost left over
    assert sum(1 for seen in upstream.requests if model.encode() in seen.body) == served

    def spent() -> Decimal | None:
        rows = json.loads(cli("budgets", "list", "--json", home=a.home, env=a.env).stdout)
        row = rows[0]
        return Decimal(row["spent"]) if row["reserved"] == "0" else None

    total = wait_for(lambda: spent() == Decimal(served) / 100 and spent(), timeout=15)
    assert total <= Decimal("0.10")
    records = [r for node in (a, b) for r in node.records() if r.get("model") == model]
    assert {r["node"] for r in records} == {"budget-a", "budget-b"}  # both took requests
    assert all(r["error"] == f"budget_exceeded:key:{r['api_key_id']}"
               for r in records if r["status"] == 429)
    assert sum(Decimal(r["cost"]) for r in records if r["cost"]) == total
