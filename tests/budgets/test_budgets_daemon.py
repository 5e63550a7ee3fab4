"""Budgets and rate limits through the real daemon, driven by the OpenAI SDK: a budget holds
exactly under concurrency, refusals reach nothing upstream, every way a request can end gives
its reservation back, and a restart keeps what was spent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.support.daemon import Daemon, cli, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

# $1000 per million output tokens and nothing for input: a request with max_tokens=10 may
# cost $0.01 at most, and costs exactly that when the upstream reports 10 output tokens.
OUTPUT_PER_MILLION = "1000"


class Setup:
    def __init__(self, home: Path, daemon: Daemon, upstream: FakeUpstream):
        self.home, self.daemon, self.upstream = home, daemon, upstream
        self.clients: list[openai.AsyncOpenAI] = []

    def key(self, name: str) -> tuple[str, str]:
        """A new gateway key: (the secret, its id)."""
        made = json.loads(cli("keys", "add", name, "--json", home=self.home).stdout)
        return made["key"], made["id"]

    def model(self) -> str:
        """A model of its own per test, so the fake's log tells this test's requests apart."""
        name = f"budget-model-{uuid.uuid4().hex[:8]}"
        cli("pricing", "set", name, "--input", "0", "--output", OUTPUT_PER_MILLION,
            home=self.home)
        return name

    def budgets(self) -> dict[str, dict[str, Any]]:
        rows = json.loads(cli("budgets", "list", "--json", home=self.home).stdout)
        return {row["stored_scope"]: row for row in rows}

    def forwarded(self, model: str) -> int:
        # The fake is shared with other tests, some of which send bodies that are not JSON.
        return sum(1 for seen in self.upstream.requests if model.encode() in seen.body)

    def run(self, coroutine: Any) -> Any:
        """asyncio.run, closing the SDK clients it made inside the same loop."""
        async def main() -> Any:
            try:
                return await coroutine
            finally:
                clients, self.clients = self.clients, []
                for client in clients:
                    await client.close()
        return asyncio.run(main())

    def client(self, key: str, behavior: str = "completion-tokens:10",
               timeout: float = 30) -> openai.AsyncOpenAI:
        self.clients.append(self._client(key, behavior, timeout))
        return self.clients[-1]

    def _client(self, key: str, behavior: str, timeout: float) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.daemon.url + "/v1", api_key="sk-test",
                                  max_retries=0, timeout=timeout,
                                  default_headers={"X-Majordomo-Key": key,
                                                   "x-fake-behavior": behavior})

    def records(self, key_id: str) -> list[dict[str, Any]]:
        return [r for r in self.daemon.records() if r.get("api_key_id") == key_id]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
          ) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("budgets") / "home"
    init_home(home)
    # Budgets set while it runs reach it within the key refresh (made short here).
    env = {**provider_env(upstream.url), "STEWARD_KEY_REFRESH_SECONDS": "0.2",
           "STEWARD_BUDGET_SYNC_SECONDS": "0.1"}
    daemon = Daemon(home, env=env).start()
    yield Setup(home, daemon, upstream)
    daemon.stop()


async def ask(client: openai.AsyncOpenAI, model: str, stream: bool = False) -> Any:
    messages: Any = [{"role": "user", "content": "hi"}]
    if not stream:
        return await client.chat.completions.create(model=model, max_tokens=10,
                                                    messages=messages)
    chunks = await client.chat.completions.create(
        model=model, max_tokens=10, messages=messages, stream=True,
        stream_options={"include_usage": True})
    return [chunk async for chunk in chunks]


def test_fifty_at_once_against_ten_requests_of_budget(setup: Setup) -> None:
    key, key_id = setup.key("team-fifty")
    model = setup.model()
    cli("budgets", "set", "key:team-fifty", "0.10", "--per", "day", home=setup.home)
    wait_for(lambda: _budget_seen(setup, key_id), timeout=10)

    async def run() -> list[Any]:
        client = setup.client(key)
        return await asyncio.gather(*(ask(client, model) for _ in range(50)),
                                    return_exceptions=True)

    results = setup.run(run())
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert len(ok) == 10, results
    assert len(refused) == 40
    assert "budget exceeded for key:team-fifty" in str(refused[0])
    assert refused[0].response.headers.get("retry-after", "").isdigit()
    assert refused[0].response.headers.get("x-should-retry") == "false"  # hours away
    assert setup.forwarded(model) == 10  # the refused never reached the upstream
    wait_for(lambda: setup.budgets()[f"key:{key_id}"]["spent"] == "0.1", timeout=10)
    row = setup.budgets()[f"key:{key_id}"]
    assert (row["remaining"], row["reserved"]) == ("0", "0")
    records = wait_for(lambda: len(setup.records(key_id)) == 50 and setup.records(key_id),
                       timeout=10)
    assert sum(Decimal(r["cost"]) for r in records if r["cost"]) == Decimal("0.1")
    errors = [r["error"] for r in records if r["status"] == 429]
    assert errors == [f"budget_exceeded:key:{key_id}"] * 40


def _budget_seen(setup: Setup, key_id: str) -> bool:
    metrics = httpx.get(setup.daemon.admin_url + "/metrics", timeout=10).text
    return f'steward_budget_limit_usd{{scope="key:{key_id}"}}' in metrics


def test_every_way_a_request_ends_gives_its_reservation_back(setup: Setup) -> None:
    key, key_id = setup.key("team-ends")
    model = setup.model()
    cli("budgets", "set", "key:team-ends", "0.02", "--per", "month", home=setup.home)
    wait_for(lambda: _budget_seen(setup, key_id), timeout=10)

    async def failing() -> None:
        with pytest.raises(openai.RateLimitError):  # the fake's own 429, relayed
            await ask(setup.client(key, "status:429"), model)
        with pytest.raises(openai.APIError):  # the stream breaks after its first event
            await ask(setup.client(key, "reset"), model, stream=True)
        with pytest.raises(openai.APITimeoutError):  # the caller gives up and goes away
            await ask(setup.client(key, "hold", timeout=1), model)

    setup.run(failing())
    wait_for(lambda: len(setup.records(key_id)) == 3, timeout=15)
    wait_for(lambda: setup.budgets()[f"key:{key_id}"]["reserved"] == "0", timeout=10)
    assert setup.budgets()[f"key:{key_id}"]["spent"] == "0"

    async def spend_it_all() -> list[Any]:
        client = setup.client(key)
        first = [await ask(client, model), await ask(client, model, stream=True)]
        with pytest.raises(openai.RateLimitError, match="budget exceeded"):
            await ask(client, model)
        return first

    setup.run(spend_it_all())
    wait_for(lambda: setup.budgets()[f"key:{key_id}"]["spent"] == "0.02", timeout=10)


def test_requests_per_minute(setup: Setup) -> None:
    key, key_id = setup.key("team-rpm")
    probe, _ = setup.key("probe-rpm")
    model = setup.model()
    cli("limits", "set", "key:team-rpm", "--rpm", "3", home=setup.home)
    cli("limits", "set", "key:probe-rpm", "--rpm", "1", home=setup.home)
    listed = json.loads(cli("limits", "list", "--json", home=setup.home).stdout)
    assert {"scope": "key:team-rpm", "stored_scope": f"key:{key_id}", "rpm": 3,
            "tpm": None} in listed

    async def run() -> openai.RateLimitError:
        prober = setup.client(probe)
        for _ in range(500):  # the second limit, set last, is in force: so is the first
            try:
                await ask(prober, model)
            except openai.RateLimitError:
                break
        client = setup.client(key)
        for _ in range(3):
            await ask(client, model)
        with pytest.raises(openai.RateLimitError) as caught:
            await ask(client, model)
        return caught.value

    before = setup.forwarded(model)
    err = setup.run(run())
    assert setup.forwarded(model) - before >= 3
    assert sum(1 for r in setup.upstream.requests[-3:] if model.encode() in r.body) == 3
    wait = int(err.response.headers["retry-after"])
    assert 55 <= wait <= 60
    assert "rate limit exceeded for key:team-rpm: 3 requests per minute" in str(err)
    record = wait_for(lambda: [r for r in setup.records(key_id) if r["status"] == 429],
                      timeout=10)[-1]
    assert record["error"] == f"rate_limited:key:{key_id}"
    assert len(setup.records(key_id)) == 4


def test_metrics_show_spend_and_remaining(setup: Setup) -> None:
    key, key_id = setup.key("team-metrics")
    model = setup.model()
    cli("budgets", "set", "key:team-metrics", "1", "--per", "week", home=setup.home)
    wait_for(lambda: _budget_seen(setup, key_id), timeout=10)
    setup.run(ask(setup.client(key), model))

    def figures() -> dict[str, float]:
        text = httpx.get(setup.daemon.admin_url + "/metrics", timeout=10).text
        wanted = f'{{scope="key:{key_id}"}}'
        return {line.split("{")[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if wanted in line}

    wait_for(lambda: figures().get("steward_budget_spent_usd") == 0.01, timeout=10)
    got = figures()
    assert got["steward_budget_limit_usd"] == 1.0
    assert got["steward_budget_remaining_usd"] == 0.99


def test_a_restart_keeps_what_was_spent(setup: Setup) -> None:
    key, key_id = setup.key("team-restart")
    model = setup.model()
    cli("budgets", "set", "key:team-restart", "0.03", "--per", "total", home=setup.home)
    wait_for(lambda: _budget_seen(setup, key_id), timeout=10)
    setup.run(ask(setup.client(key), model))
    setup.run(ask(setup.client(key), model))
    setup.daemon.stop()
    assert setup.budgets()[f"key:{key_id}"]["spent"] == "0.02"  # settled on the way out
    setup.daemon.start()

    async def after() -> None:
        client = setup.client(key)
        await ask(client, model)
        with pytest.raises(openai.RateLimitError, match=r"does not reset"):
            await ask(client, model)

    setup.run(after())


def test_two_workers_share_one_budget_exactly(tmp_path: Path, upstream: FakeUpstream) -> None:
    """Two worker processes, each spending from its own lease: between them, exactly the
    budget, however the 50 connections fall on them."""
    home = tmp_path / "home"
    init_home(home)
    env = {**provider_env(upstream.url), "STEWARD_BUDGET_SYNC_SECONDS": "0.1"}
    daemon = Daemon(home, env=env, args=("--workers", "2"))
    setup = Setup(home, daemon, upstream)
    key, key_id = setup.key("team-two")
    model = setup.model()
    # Set before the start: each worker applies a change at its own refresh, so one set while
    # they run could meet a worker that has not applied it yet.
    cli("budgets", "set", "key:team-two", "0.10", "--per", "day", home=home)
    daemon.start()
    try:

        async def run() -> list[Any]:
            client = setup.client(key)
            return await asyncio.gather(*(ask(client, model) for _ in range(50)),
                                        return_exceptions=True)

        results = setup.run(run())
        assert sum(1 for r in results if not isinstance(r, BaseException)) == 10, results
        assert setup.forwarded(model) == 10
        assert len(daemon.workers()) == 2
        wait_for(lambda: setup.budgets()[f"key:{key_id}"]["spent"] == "0.1", timeout=10)
    finally:
        daemon.stop()


def test_a_database_out_of_reach_spends_only_what_is_held(setup: Setup) -> None:
    """The database locked by another writer (as good as down for a worker): a request that
    needs more than the worker holds is answered 503 at once after the top-up times out, and
    /readyz says budget syncs fail; once the database is back, requests pass again."""
    import sqlite3

    key, key_id = setup.key("team-offline")
    model = setup.model()
    cli("budgets", "set", "key:team-offline", "1", "--per", "day", home=setup.home)
    wait_for(lambda: _budget_seen(setup, key_id), timeout=10)
    setup.run(ask(setup.client(key), model))
    # Idle, the worker gives its lease back within a sync or two.
    wait_for(lambda: setup.budgets()[f"key:{key_id}"]["reserved"] == "0"
             and _held(setup.home, key_id) == 0, timeout=10)
    blocker = sqlite3.connect(setup.home / "steward.db", timeout=10, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        async def refused() -> openai.APIStatusError:
            with pytest.raises(openai.APIStatusError) as caught:
                await ask(setup.client(key, timeout=60), model)
            return caught.value

        err = setup.run(refused())
        assert err.status_code == 503 and err.response.headers["retry-after"] == "1"
        assert "the database cannot be reached" in str(err)
        ready = wait_for(lambda: _degraded(setup), timeout=15)
        assert "locked" in ready["budgets"]["sync_error"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    setup.run(ask(setup.client(key), model))
    record = [r for r in setup.records(key_id) if r["status"] == 503][-1]
    assert record["error"] == f"budget_unavailable:key:{key_id}"


def _held(home: Path, key_id: str) -> int:
    import sqlite3

    with contextlib.closing(sqlite3.connect(home / "steward.db")) as conn:
        row = conn.execute("SELECT COALESCE(SUM(held_nusd), 0) FROM budget_leases "
                           "WHERE scope = ?", (f"key:{key_id}",)).fetchone()
    return int(row[0])


def _degraded(setup: Setup) -> dict[str, Any] | None:
    ready = httpx.get(setup.daemon.admin_url + "/readyz", timeout=10).json()
    return ready if "budget sync" in ready["degraded"] else None
