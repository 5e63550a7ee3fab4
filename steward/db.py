"""The gateway database: SQLite with numbered migrations tracked in PRAGMA user_version, or
PostgreSQL shared by several nodes (database.url; steward/postgres.py maps the dialect).

Only the CLI and background tasks touch it; the request path reads in-memory copies.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from steward.errors import StewardError

if TYPE_CHECKING:
    from steward.config import Config
    from steward.postgres import PgConnection

# Either backend: PgConnection takes sqlite3's placeholders and raises its exception classes.
Connection: TypeAlias = "sqlite3.Connection | PgConnection"

MIGRATIONS: list[str] = [
    # 1: gateway keys, stored as a SHA-256 of a 256-bit random secret.
    """
    CREATE TABLE gateway_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        tags TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        last_used_at REAL
    );
    """,
    # 2: encrypted secrets and a check value for the master key.
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE provider_keys (
        provider TEXT NOT NULL,
        scope TEXT NOT NULL,            -- '*' for the provider default, else a gateway key id
        sealed BLOB NOT NULL,
        last4 TEXT NOT NULL,
        created_at REAL NOT NULL,
        last_used_at REAL,
        PRIMARY KEY (provider, scope)
    );
    CREATE TABLE sealed_secrets (
        name TEXT PRIMARY KEY,          -- e.g. 'upload-token', 'bucket-credentials'
        purpose TEXT NOT NULL,
        sealed BLOB NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 3: price overrides, in US dollars per million tokens as people quote them.
    """
    CREATE TABLE pricing_overrides (
        model TEXT PRIMARY KEY,
        input TEXT NOT NULL,
        output TEXT NOT NULL,
        cache_read TEXT,
        cache_write TEXT,
        cache_write_1h TEXT,
        created_at REAL NOT NULL
    );
    """,
    # 4: what a gateway key may call beyond inference (JSON list of scopes); existing keys
    # get none, so an upgrade never widens what a key reaches.
    """
    ALTER TABLE gateway_keys ADD COLUMN scopes TEXT NOT NULL DEFAULT '[]';
    """,
    # 5: a UUID per gateway key (Majordomo's records carry key ids as UUIDs); keys made before
    # it get a stable one derived from their old id, which stays their primary key. A key may
    # also name the Majordomo API key it stands for.
    """
    ALTER TABLE gateway_keys ADD COLUMN uuid TEXT;
    ALTER TABLE gateway_keys ADD COLUMN majordomo_key_id TEXT;
    UPDATE gateway_keys SET uuid = steward_legacy_key_uuid(id) WHERE uuid IS NULL;
    CREATE UNIQUE INDEX gateway_keys_uuid ON gateway_keys (uuid);
    """,
    # 6: budgets and rate limits (steward/budgets/store.py owns these tables). Amounts are
    # whole nanodollars, so every sum is exact; a lease is what one worker may spend.
    """
    CREATE TABLE budgets (
        scope TEXT PRIMARY KEY,
        amount_nusd BIGINT NOT NULL,
        period TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE budget_spend (
        scope TEXT NOT NULL,
        period_start TEXT NOT NULL,
        spent_nusd BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (scope, period_start)
    );
    CREATE TABLE budget_leases (
        holder TEXT NOT NULL,
        scope TEXT NOT NULL,
        period_start TEXT NOT NULL,
        held_nusd BIGINT NOT NULL,
        reserved_nusd BIGINT NOT NULL DEFAULT 0,
        renewed_at REAL NOT NULL,
        PRIMARY KEY (holder, scope, period_start)
    );
    CREATE TABLE rate_limits (
        scope TEXT PRIMARY KEY,
        rpm INTEGER,
        tpm BIGINT,
        created_at REAL NOT NULL
    );
    """,
    # 7: admin tokens for the dashboard (steward/dashboard/tokens.py), stored as SHA-256.
    """
    CREATE TABLE admin_tokens (
        name TEXT PRIMARY KEY,
        prefix TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL,
        last_used_at REAL
    );
    """,
]

# Fixed forever: the UUIDs of keys migrated by step 5 must not change between machines or runs.
_LEGACY_KEY_NAMESPACE = uuid.UUID("6f1c2a3e-5b7d-4e8f-9a0b-1c2d3e4f5a6b")


def legacy_key_uuid(key_id: str) -> str:
    """The UUID a key made before UUIDs gets: the same for the same id, wherever it migrates."""
    return str(uuid.uuid5(_LEGACY_KEY_NAMESPACE, key_id))

SCHEMA_VERSION = len(MIGRATIONS)


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating with 0600 if new) and migrate to the current schema."""
    new = not path.exists()
    if new:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    try:
        conn = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.create_function("steward_legacy_key_uuid", 1, legacy_key_uuid, deterministic=True)
        migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        raise StewardError(f"{path}: cannot open the gateway database ({exc})") from None
    return conn


def open_home(home: Path, env: Any = None) -> Connection:
    """This home's gateway database, migrated: PostgreSQL when database.url is set, else the
    home's SQLite file."""
    from steward.config import load_config

    return open_database(load_config(home, env))


def open_database(config: Config) -> Connection:
    from steward.home import Home

    if not config.database.url:
        return connect(Home(config.home).db)
    return connect_postgres(config.database.url, config.database.password_file)


def connect_postgres(url: str, password_file: str = "") -> Connection:
    from steward import postgres

    conn = postgres.PgConnection(postgres.Target.from_config(url, password_file))
    try:
        postgres.migrate(conn, MIGRATIONS, _fill_legacy_uuids)
    except BaseException:
        conn.close()
        raise
    return conn


def is_postgres(conn: Connection) -> bool:
    return getattr(conn, "dialect", "sqlite") == "postgresql"


def schema_version(conn: Connection) -> int:
    if is_postgres(conn):
        from steward import postgres

        return postgres.schema_version(conn)  # type: ignore[arg-type]
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _fill_legacy_uuids(conn: Connection) -> None:
    """Migration 5 where the database cannot call Python: the same UUIDs, computed here."""
    for (key_id,) in conn.execute("SELECT id FROM gateway_keys WHERE uuid IS NULL").fetchall():
        conn.execute("UPDATE gateway_keys SET uuid = ? WHERE id = ?",
                     (legacy_key_uuid(key_id), key_id))


def changed(conn: Connection, kind: str) -> None:
    """Inside a write transaction: tell running nodes that `kind` of state changed. SQLite
    nodes notice by themselves (PRAGMA data_version); PostgreSQL nodes are notified on
    commit."""
    if is_postgres(conn):
        from steward import postgres

        postgres.announce(conn, kind)  # type: ignore[arg-type]


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StewardError(f"{path}: schema version {version} is newer than this Steward "
                           f"understands ({SCHEMA_VERSION}); upgrade Steward")
    for number in range(version, SCHEMA_VERSION):
        with transaction(conn):
            _run_script(conn, MIGRATIONS[number])
            conn.execute(f"PRAGMA user_version = {number + 1}")


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    for statement in filter(str.strip, script.split(";")):
        conn.execute(statement)


def get_meta(conn: Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(conn: Connection, key: str, value: str) -> None:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                 "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))


class transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any exception."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def __enter__(self) -> Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type else "COMMIT")
