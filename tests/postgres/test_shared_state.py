"""Two nodes sharing one real PostgreSQL: a change made with the CLI against either reaches the
other within a second, and both keep serving while the database is down."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.collector import Collector
from tests.support.daemon import Daemon, cli, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import PASSWORD, Postgres, require_postgres
from tests.support.waiting import wait_for

MASTER_KEY = "5e" * 32
PROPAGATION = 1.0  # the promise: a change reaches every node within a second
POLL_SECONDS = 10.0  # the safety net for lost notifications
UPLOAD_TOKEN = "upload-token-2"


@dataclass
class Cluster:
    pg: Postgres
    a: Daemon
    b: Daemon
    upstream: FakeUpstream
    collector: Collector  # wants a bearer token no node has until a test sets it

    def cli(self, *args: str, node: str = "a", input: str | None = None,
            check: bool = True) -> str:
        daemon = self.a if node == "a" else self.b
        result = cli(*args, home=daemon.home, env=daemon.env, input=input, check=check)
        return result.stdout + result.stderr


def _env(pg: Postgres, name: str, home: Path, upstream: FakeUpstream,
         collector: Collector) -> dict[str, str]:
    env = {**provider_env(upstream.url), "STEWARD_MASTER_KEY": MASTER_KEY,
           "STEWARD_SERVER__NODE_NAME": name, "STEWARD_ASYNCIO_DEBUG": "1",
           "STEWARD_METADATA__UPLOAD_URL": collector.url, "STEWARD_METADATA__INTERVAL": "200ms"}
    if name == "node-a":
        env["STEWARD_DATABASE__URL"] = pg.url()
    else:  # the other way operators keep the password out of the URL
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        (home / "db-password").write_text(PASSWORD + "\n")
        env["STEWARD_DATABASE__URL"] = pg.url(password=False)
        env["STEWARD_DATABASE__PASSWORD_FILE"] = str(home / "db-password")
    return env


@pytest.fixture(scope="module")
def cluster(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    pg = Postgres(require_postgres()).init()
    collector = Collector(token=UPLOAD_TOKEN).start()
    daemons = []
    try:
        for name in ("node-a", "node-b"):
            home = tmp_path_factory.mktemp(name)
            env = _env(pg, name, home, upstream, collector)
            cli("init", home=home, env=env)
            daemons.append(Daemon(home, env=env))
        with ThreadPoolExecutor(2) as pool:  # two nodes starting at once
            list(pool.map(Daemon.start, daemons))
        yield Cluster(pg, daemons[0], daemons[1], upstream, collector)
    finally:
        for daemon in daemons:
            daemon.stop()
        collector.stop()
        pg.destroy()


def _client(daemon: Daemon, key: str) -> openai.OpenAI:
    """The SDK as an application configures it: base_url and the gateway key as api_key."""
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key=key, max_retries=0, timeout=30)


def _chat(daemon: Daemon, key: str, tag: str = "") -> int:
    """The status the caller saw."""
    try:
        _client(daemon, key).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-Majordomo-Test": tag} if tag else None)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


def _new_key(cluster: Cluster, name: str, node: str = "a") -> str:
    out = cluster.cli("keys", "add", name, node=node)
    return next(line for line in out.splitlines() if line.startswith("mdm_sk_"))


def _within(condition: object, what: str) -> float:
    """Seconds until condition() holds; fails past the one-second promise."""
    start = time.monotonic()
    wait_for(condition, PROPAGATION, what)  # type: ignore[arg-type]
    return time.monotonic() - start


def _metric(daemon: Daemon, name: str) -> float:
    text = httpx.get(daemon.admin_url + "/metrics", timeout=10).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name)


def test_provider_key_set_once_is_injected_by_both(cluster: Cluster) -> None:
    cluster.cli("providers", "set", "openai", "--api-key-stdin", input="sk-shared-0001\n")
    key = _new_key(cluster, "injected")
    for daemon in (cluster.a, cluster.b):
        def injected(daemon: Daemon = daemon) -> bool:
            return (_chat(daemon, key) == 200 and cluster.upstream.last().headers.get(
                "Authorization") == "Bearer sk-shared-0001")
        _within(injected, f"{daemon.env['STEWARD_SERVER__NODE_NAME']} to inject the key")


def test_key_added_on_a_serves_on_b_and_revoked_on_b_is_refused_on_a(cluster: Cluster) -> None:
    cluster.cli("providers", "set", "openai", "--api-key-stdin", input="sk-shared-0001\n")
    key = _new_key(cluster, "travels", node="a")
    _within(lambda: _chat(cluster.b, key) == 200, "node B to accept a key added on A")
    cluster.cli("keys", "revoke", "travels", node="b")
    _within(lambda: _chat(cluster.a, key) == 401, "node A to refuse a key revoked on B")
    assert _chat(cluster.b, key) == 401


def test_price_override_set_once_bills_on_both(cluster: Cluster, tag: str) -> None:
    cluster.cli("providers", "set", "openai", "--api-key-stdin", input="sk-shared-0001\n")
    key = _new_key(cluster, "billed")
    cluster.cli("pricing", "set", "gpt-4o-2024-08-06", "--input", "1000", "--output", "2000",
                node="b")
    for daemon in (cluster.a, cluster.b):
        def overridden(daemon: Daemon = daemon) -> bool:
            mark = f"{tag}-{time.monotonic_ns()}"
            assert _chat(daemon, key, mark) == 200
            return daemon.record_tagged("test", mark)["pricing_status"] == "override"
        _within(overridden, "the override to bill")
        node = daemon.env["STEWARD_SERVER__NODE_NAME"]
        record = daemon.records()[-1]
        assert record["node"] == node
    cluster.cli("pricing", "unset", "gpt-4o-2024-08-06", node="a")


def test_database_down_nodes_serve_and_catch_up(cluster: Cluster, tag: str) -> None:
    cluster.cli("providers", "set", "openai", "--api-key-stdin", input="sk-shared-0001\n")
    key = _new_key(cluster, "outage")
    for daemon in (cluster.a, cluster.b):
        _within(lambda daemon=daemon: _chat(daemon, key) == 200, "the new key on both")
    cluster.pg.stop()
    try:
        for daemon in (cluster.a, cluster.b):
            wait_for(lambda d=daemon: _metric(d, "steward_database_connected") == 0, 10,
                     "the node to notice the database is down")
            before = len(daemon.records())
            for i in range(5):  # no request fails, every one is recorded
                assert _chat(daemon, key, f"{tag}-{i}") == 200
            wait_for(lambda d=daemon, n=before: len(d.records()) >= n + 5, 10,
                     "the records to spool")
            ready = httpx.get(daemon.admin_url + "/readyz", timeout=10)
            assert ready.status_code == 200, ready.text
            detail = ready.json()
            assert "database" in detail["degraded"]
            assert detail["database"]["connected"] is False
            assert detail["database"]["database"] == f"127.0.0.1:{cluster.pg.port}/steward"
            assert PASSWORD not in ready.text
            assert "is unreachable" in daemon.log()
            assert PASSWORD not in daemon.log()
        # A command while it is down: one line naming the database, never the password.
        down = cli("keys", "revoke", "outage", home=cluster.a.home, env=cluster.a.env,
                   check=False)
        assert down.returncode != 0 and len(down.stderr.strip().splitlines()) == 1
        assert f"127.0.0.1:{cluster.pg.port}/steward" in down.stderr
        assert PASSWORD not in down.stderr
        # Written while the nodes still cannot reach it (Unix socket only): no notification
        # reaches them, so only catching up on their return can apply it.
        cluster.pg.start(tcp=False)
        cli("keys", "revoke", "outage", home=cluster.a.home,
            env={**cluster.a.env, "STEWARD_DATABASE__URL": cluster.pg.socket_url()})
        assert _chat(cluster.a, key) == 200 and _chat(cluster.b, key) == 200
        cluster.pg.stop()
    finally:
        cluster.pg.start()
    _within(lambda: _chat(cluster.a, key) == 401 and _chat(cluster.b, key) == 401,
            "both nodes to refuse, within 1 s of the database's return, a key revoked "
            "while they could not reach it")
    # And a change made once it is back travels as usual.
    fresh = _new_key(cluster, "after-outage", node="b")
    _within(lambda: _chat(cluster.a, fresh) == 200, "node A to accept a key added after")
    for daemon in (cluster.a, cluster.b):
        assert _metric(daemon, "steward_database_connected") == 1


def test_node_with_another_master_key_refuses_to_start(cluster: Cluster, tmp_path: Path) -> None:
    env = {**cluster.a.env, "STEWARD_MASTER_KEY": "77" * 32}
    cli("init", home=tmp_path / "h", env={k: v for k, v in env.items()
                                          if k != "STEWARD_DATABASE__URL"})
    result = cli("run", home=tmp_path / "h", env=env, check=False)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "does not match" in result.stderr


def test_node_starting_while_database_is_down_exits_naming_it(cluster: Cluster,
                                                              tmp_path: Path) -> None:
    env = {**cluster.a.env,
           "STEWARD_DATABASE__URL": cluster.pg.url().replace(str(cluster.pg.port), "1")}
    cli("init", home=tmp_path / "h", env={k: v for k, v in env.items()
                                          if k != "STEWARD_DATABASE__URL"})
    result = cli("run", home=tmp_path / "h", env=env, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "127.0.0.1:1/steward" in result.stderr and PASSWORD not in result.stderr
    shown = cli("config", "show", home=tmp_path / "h", env=env).stdout
    assert PASSWORD not in shown and "127.0.0.1:1/steward" in shown


def test_a_lost_notification_is_caught_up_by_the_poll(cluster: Cluster) -> None:
    """A change whose NOTIFY never arrived (written here without one) is applied by the
    counters' poll, every 10 s."""
    cluster.cli("providers", "set", "openai", "--api-key-stdin", input="sk-shared-0001\n")
    key = _new_key(cluster, "lost")
    for daemon in (cluster.a, cluster.b):
        _within(lambda daemon=daemon: _chat(daemon, key) == 200, "the new key on both")
    cluster.pg.psql("UPDATE gateway_keys SET revoked_at = extract(epoch FROM now()) "
                    "WHERE name = 'lost'; UPDATE steward_changes "
                    "SET generation = generation + 1 WHERE kind = 'keys'")
    wait_for(lambda: _chat(cluster.a, key) == 401 and _chat(cluster.b, key) == 401,
             POLL_SECONDS + 2, "the poll to find the change")



def test_upload_token_set_once_is_used_by_both(cluster: Cluster, tag: str) -> None:
    """Batches refused for want of the token are set aside (a 401 is final), so each round
    sends new requests until both nodes' records are accepted."""
    cluster.cli("providers", "set", "openai", "--api-key-stdin", input="sk-shared-0001\n")
    key = _new_key(cluster, "uploaded")
    for daemon in (cluster.a, cluster.b):
        _within(lambda daemon=daemon: _chat(daemon, key) == 200, "the new key on both")
    cluster.cli("upload", "set", cluster.collector.url, "--token-stdin",
                input=UPLOAD_TOKEN + "\n", node="a")

    def both_uploaded() -> bool:
        seen = {str(r["node"]) for r in cluster.collector.accepted()
                if str(r["tags"].get("test", "")).startswith(tag)}
        for daemon in (cluster.a, cluster.b):
            node = daemon.env["STEWARD_SERVER__NODE_NAME"]
            if node not in seen:
                assert _chat(daemon, key, f"{tag}-{time.monotonic_ns()}") == 200
        return seen == {"node-a", "node-b"}
    # Within a second of the change, plus an upload interval.
    wait_for(both_uploaded, PROPAGATION + 1.0, "both nodes to upload with the token set once")
