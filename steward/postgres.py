"""PostgreSQL as the gateway database, shared by every node (database.url).

The data modules keep one dialect: they hand `?` placeholders (and `?1`-style numbered ones)
to a connection and catch sqlite3's exception classes. PgConnection takes that dialect,
maps it to psycopg's, and raises subclasses of the same exceptions, so gateway_keys,
provider_keys, pricer and master_key run unchanged on either backend. The few differences
that are not in a single statement (schema types, BEGIN IMMEDIATE, schema version, change
notification) are here and in steward/db.py.

Changes are announced on one channel: every state-changing transaction bumps its kind's row in
steward_changes and NOTIFYs the kind; PostgreSQL delivers the notification when (and only if)
the transaction commits. A node LISTENs in the background (steward/daemon/state_sync.py) and
polls steward_changes as a safety net.
"""

from __future__ import annotations

import functools
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steward.errors import StewardError

CHANNEL = "steward_changes"
KINDS = ("keys", "provider_keys", "secrets", "pricing", "budgets")
# pg_advisory_lock key: "STEWARD1" as a big-endian 64-bit integer, the same on every node.
MIGRATION_LOCK = int.from_bytes(b"STEWARD1", "big")
CONNECT_TIMEOUT = 5  # seconds; a blackholed host must not hang start-up or a reload for long


class Unavailable(sqlite3.OperationalError, StewardError):
    """The database cannot be reached: one line naming it, never its password."""


class IntegrityError(sqlite3.IntegrityError):
    pass


class DatabaseError(sqlite3.DatabaseError):
    pass


@dataclass(frozen=True)
class Target:
    """A PostgreSQL URL, the password (from the URL or database.password_file), and a name
    safe to print."""

    url: str
    password: str | None
    name: str  # host:port/dbname

    @classmethod
    def from_config(cls, url: str, password_file: str = "") -> Target:
        from psycopg.conninfo import conninfo_to_dict

        try:
            parts = conninfo_to_dict(url)
        except Exception:  # the parser's message may quote the URL, password and all
            raise StewardError("database.url: not a valid PostgreSQL URL (expected "
                               "postgresql://user@host:port/dbname)") from None
        name = (f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}/"
                f"{parts.get('dbname') or parts.get('user') or ''}")
        password = None
        if password_file:
            try:
                password = Path(password_file).read_text().rstrip("\r\n")
            except OSError as exc:
                raise StewardError(f"database.password_file {password_file}: cannot read it "
                                   f"({exc.strerror})") from None
        return cls(url, password, name)

    def scrub(self, text: str) -> str:
        """An error message without the password, whatever the driver put in it."""
        for secret in filter(None, (self.password, _url_password(self.url))):
            text = text.replace(secret, "****")
        return text

    def describe(self, exc: BaseException) -> str:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return self.scrub(first)

    def connect_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT, "autocommit": True,
                                "application_name": "steward"}
        if self.password is not None:
            args["password"] = self.password
        return args


def _url_password(url: str) -> str | None:
    match = re.match(r"[a-z]+://[^:@/]*:([^@/]*)@", url)
    found = re.search(r"[?&]password=([^&]*)", url)
    return (match.group(1) if match else None) or (found.group(1) if found else None)


@functools.lru_cache(maxsize=256)
def translate(sql: str) -> tuple[str, bool]:
    """sqlite3's placeholders to psycopg's: `?` -> %s, `?N` -> %(pN)s (named: True)."""
    sql = sql.replace("%", "%%")
    if re.search(r"\?\d", sql):
        return re.sub(r"\?(\d+)", r"%(p\1)s", sql), True
    return sql.replace("?", "%s"), False


def _named(params: Sequence[Any]) -> dict[str, Any]:
    return {f"p{i}": value for i, value in enumerate(params, 1)}


class Row(tuple):  # type: ignore[type-arg]
    """A row read by position or by column name, as sqlite3.Row is."""

    names: dict[str, int] = {}  # noqa: RUF012 - each query's subclass sets its own

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            key = self.names[key]
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self.names)


def _row_factory(cursor: Any) -> Any:
    names = {column.name: i for i, column in enumerate(cursor.description or ())}
    row_type = type("Row", (Row,), {"names": names})
    return lambda values: row_type(values)


class PgConnection:
    """One psycopg connection behind sqlite3.Connection's interface (what Steward uses of it).

    A broken connection (the server restarted, the network dropped) is replaced on the next
    statement outside a transaction, so a long-lived daemon connection heals by itself.
    """

    dialect = "postgresql"

    def __init__(self, target: Target):
        self.target = target
        self._conn: Any = None
        self._in_transaction = False
        self._lock = threading.RLock()
        self._connect()

    def _connect(self) -> None:
        import psycopg

        try:
            self._conn = psycopg.connect(self.target.url, row_factory=_row_factory,
                                         **self.target.connect_args())
        except psycopg.Error as exc:
            raise Unavailable(f"cannot reach the gateway database {self.target.name}: "
                              f"{self.target.describe(exc)}") from None

    def _error(self, exc: Exception) -> Exception:
        import psycopg

        detail = self.target.describe(exc)
        if isinstance(exc, psycopg.IntegrityError):
            return IntegrityError(detail)
        if isinstance(exc, psycopg.OperationalError) or self._conn is None or self._conn.broken:
            return Unavailable(f"the gateway database {self.target.name} is unavailable: "
                               f"{detail}")
        return DatabaseError(f"{self.target.name}: {detail}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        import psycopg

        verb = sql.strip().upper()
        if verb == "BEGIN IMMEDIATE":  # PostgreSQL's writers wait on row locks instead
            sql = verb = "BEGIN"
        # Without parameters psycopg sends the text as it is: no placeholders to map.
        text, named = translate(sql) if params else (sql, False)
        args = _named(params) if named else (params or None)
        ends = verb.startswith(("COMMIT", "ROLLBACK"))
        with self._lock:
            for attempt in (1, 2):
                if self._conn is None or self._conn.closed or self._conn.broken:
                    if self._in_transaction:
                        self._in_transaction = not ends
                        if verb.startswith("ROLLBACK"):
                            return None  # the server rolled it back when the link broke
                        raise Unavailable(f"the gateway database {self.target.name} went "
                                          "away during a transaction")
                    self._connect()
                try:
                    cursor = self._conn.execute(text, args)
                    break
                except psycopg.Error as exc:
                    # A connection that broke while idle (the server restarted): the statement
                    # never ran, so it is sent once more on a new connection.
                    if attempt == 1 and self._conn.broken and not self._in_transaction:
                        continue
                    if ends:
                        self._in_transaction = False
                    raise self._error(exc) from None
            if verb.startswith("BEGIN"):
                self._in_transaction = True
            elif ends:
                self._in_transaction = False
            return cursor

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        import psycopg

        text, named = translate(sql)
        with self._lock:
            if self._conn is None or self._conn.broken:
                if self._in_transaction:
                    raise Unavailable(f"the gateway database {self.target.name} went away "
                                      "during a transaction")
                self._connect()
            try:
                with self._conn.cursor() as cursor:
                    cursor.executemany(text, [_named(r) if named else r for r in rows])
            except psycopg.Error as exc:
                raise self._error(exc) from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


# -- schema ---------------------------------------------------------------------------------


def _pg_statement(statement: str) -> str:
    """SQLite's column types to PostgreSQL's (the migrations are written once, for both)."""
    statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
    statement = re.sub(r"\bBLOB\b", "BYTEA", statement)
    return re.sub(r"\bINTEGER PRIMARY KEY AUTOINCREMENT\b", "BIGSERIAL PRIMARY KEY", statement)


def migrate(conn: PgConnection, migrations: Sequence[str], fill_legacy_uuids: Any) -> None:
    """Bring the schema to len(migrations), one node at a time (pg_advisory_lock): the
    others wait, then find it done. A schema newer than this code refuses, in one line."""
    current = len(migrations)
    conn.execute("SELECT pg_advisory_lock(?)", (MIGRATION_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS steward_schema (version INTEGER NOT NULL)")
        conn.execute("CREATE TABLE IF NOT EXISTS steward_changes ("
                     "kind TEXT PRIMARY KEY, generation BIGINT NOT NULL DEFAULT 0)")
        row = conn.execute("SELECT version FROM steward_schema").fetchone()
        if row is None:
            conn.execute("INSERT INTO steward_schema (version) VALUES (0)")
        version = row[0] if row else 0
        if version > current:
            raise StewardError(f"the gateway database {conn.target.name} has schema version "
                               f"{version}, newer than this Steward understands ({current}); "
                               "upgrade Steward on this node")
        for number in range(version, current):
            conn.execute("BEGIN")
            try:
                for statement in filter(str.strip, migrations[number].split(";")):
                    if "steward_legacy_key_uuid(" in statement:
                        fill_legacy_uuids(conn)  # a Python function in SQLite; here, Python
                    else:
                        conn.execute(_pg_statement(statement))
                conn.execute("UPDATE steward_schema SET version = ?", (number + 1,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    finally:
        conn.execute("SELECT pg_advisory_unlock(?)", (MIGRATION_LOCK,))


def schema_version(conn: PgConnection) -> int:
    row = conn.execute("SELECT version FROM steward_schema").fetchone()
    return row[0] if row else 0


def announce(conn: PgConnection, kind: str) -> None:
    """Inside a write transaction: count the change and notify listeners on commit."""
    conn.execute("INSERT INTO steward_changes (kind, generation) VALUES (?, 1) "
                 "ON CONFLICT (kind) DO UPDATE SET generation = steward_changes.generation + 1",
                 (kind,))
    conn.execute("SELECT pg_notify(?, ?)", (CHANNEL, kind))


def generations(rows: Iterable[Sequence[Any]]) -> dict[str, int]:
    return {kind: int(generation) for kind, generation in rows}
