"""Schema migrations on a real PostgreSQL: a fresh database and an upgrade from the previous
schema, each with two nodes starting at once (one migrates under the advisory lock, the other
waits and finds it done); a node older than the schema refuses in one line."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from steward import db, postgres
from steward.secrets.crypto import Vault
from tests.support.daemon import Daemon, cli, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.postgres import PASSWORD, Postgres, require_postgres
from tests.support.waiting import wait_for

MASTER_KEY = "a1" * 32


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    server = Postgres(require_postgres()).init()
    yield server
    server.destroy()


@pytest.fixture
def database(pg: Postgres) -> str:
    """A new, empty database on the shared server; its URL."""
    name = "t" + uuid.uuid4().hex[:12]
    pg.psql(f"CREATE DATABASE {name}", dbname="postgres")
    return pg.url(name)


def _env(url: str, upstream: FakeUpstream, node: str) -> dict[str, str]:
    return {**provider_env(upstream.url), "STEWARD_DATABASE__URL": url,
            "STEWARD_MASTER_KEY": MASTER_KEY, "STEWARD_SERVER__NODE_NAME": node}


def _serves(daemon: Daemon, key: str) -> bool:
    response = httpx.post(daemon.url + "/v1/chat/completions", timeout=30,
                          json={"model": "gpt-4o", "messages": []},
                          headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk"})
    return response.status_code == 200


def _start_both(homes: list[Path], envs: list[dict[str, str]]) -> list[Daemon]:
    daemons = [Daemon(home, env=env) for home, env in zip(homes, envs, strict=True)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Daemon.start, daemons))
    except BaseException:  # the one that did start is not left running
        for daemon in daemons:
            daemon.stop()
        raise
    return daemons


def _version(home: Path, env: dict[str, str]) -> int:
    shown = json.loads(cli("db", "migrate", "--json", home=home, env=env).stdout)
    assert shown["backend"] == "postgresql" and PASSWORD not in json.dumps(shown)
    return int(shown["schema_version"])


def test_fresh_database_two_nodes_at_once(database: str, upstream: FakeUpstream,
                                          tmp_path: Path) -> None:
    homes = [tmp_path / "a", tmp_path / "b"]
    envs = [_env(database, upstream, "a"), _env(database, upstream, "b")]
    with ThreadPoolExecutor(2) as pool:  # `steward init` on both at once
        inits = list(pool.map(lambda he: cli("init", home=he[0], env=he[1]),
                              zip(homes, envs, strict=True)))
    keys = [line for result in inits for line in result.stdout.splitlines()
            if line.startswith("mdm_sk_")]
    assert len(keys) == 1, [r.stdout for r in inits]  # one first key, shared by both
    daemons = _start_both(homes, envs)
    try:
        assert all(_serves(d, keys[0]) for d in daemons)
        assert _version(homes[0], envs[0]) == db.SCHEMA_VERSION
    finally:
        for daemon in daemons:
            daemon.stop()


def _previous_schema(url: str) -> tuple[str, str]:
    """The database as the last release left it, with one key in it; (key id, plaintext)."""
    conn = postgres.PgConnection(postgres.Target.from_config(url))
    try:
        postgres.migrate(conn, db.MIGRATIONS[:-1], db._fill_legacy_uuids)
        plaintext = "mdm_sk_" + "q" * 43
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)",
                     ("master_key_check", Vault(bytes.fromhex(MASTER_KEY)).check_value()))
        conn.execute("INSERT INTO gateway_keys (id, name, prefix, key_hash, created_at) "
                     "VALUES (?, ?, ?, ?, ?)", ("key_old000000001", "old", plaintext[:12],
                                                hashlib.sha256(plaintext.encode()).hexdigest(),
                                                1.0))
        columns = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'gateway_keys'").fetchall()}
        if "uuid" in columns:  # the previous schema already had UUIDs
            conn.execute("UPDATE gateway_keys SET uuid = ?",
                         (db.legacy_key_uuid("key_old000000001"),))
        assert postgres.schema_version(conn) == db.SCHEMA_VERSION - 1
    finally:
        conn.close()
    return "key_old000000001", plaintext


def test_upgrade_from_previous_schema_two_nodes_at_once(database: str, upstream: FakeUpstream,
                                                        tmp_path: Path) -> None:
    key_id, plaintext = _previous_schema(database)
    homes = [tmp_path / "a", tmp_path / "b"]
    envs = [_env(database, upstream, "a"), _env(database, upstream, "b")]
    for home, env in zip(homes, envs, strict=True):  # the nodes' homes, made before
        cli("init", home=home, env={k: v for k, v in env.items()
                                    if k != "STEWARD_DATABASE__URL"})
    # Hold the migration lock, as a node busy migrating would: both nodes must wait for it.
    holder = postgres.PgConnection(postgres.Target.from_config(database))
    holder.execute("SELECT pg_advisory_lock(?)", (postgres.MIGRATION_LOCK,))
    daemons = [Daemon(home, env=env) for home, env in zip(homes, envs, strict=True)]
    try:  # every daemon stopped, whatever fails
        with ThreadPoolExecutor(2) as pool:
            starts = [pool.submit(d.start) for d in daemons]
            try:
                wait_for(lambda: holder.execute(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                ).fetchone()[0] == 2, 30, "both nodes to wait for the migration lock")
                assert postgres.schema_version(holder) == db.SCHEMA_VERSION - 1
            finally:
                holder.execute("SELECT pg_advisory_unlock(?)", (postgres.MIGRATION_LOCK,))
                holder.close()
            for start in starts:
                start.result()
        assert all(_serves(d, plaintext) for d in daemons)
        assert _version(homes[1], envs[1]) == db.SCHEMA_VERSION
        listed = json.loads(cli("keys", "list", "--json", home=homes[0], env=envs[0]).stdout)
        old = next(k for k in listed if k["id"] == key_id)
        assert old["uuid"] == db.legacy_key_uuid(key_id)
    finally:
        for daemon in daemons:
            daemon.stop()


def test_node_older_than_the_schema_refuses_to_start(database: str, pg: Postgres,
                                                     upstream: FakeUpstream,
                                                     tmp_path: Path) -> None:
    env = _env(database, upstream, "a")
    cli("init", home=tmp_path / "a", env=env)
    pg.psql(f"UPDATE steward_schema SET version = {db.SCHEMA_VERSION + 1}",
            dbname=database.rsplit("/", 1)[1])
    result = cli("run", home=tmp_path / "a", env=env, check=False)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "newer than this Steward understands" in result.stderr
    assert PASSWORD not in result.stderr
