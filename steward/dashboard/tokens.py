"""Admin tokens: what the dashboard asks for when its listener is not on loopback.

Like gateway keys they are 256-bit random secrets, printed once and stored as a SHA-256 hash
in the gateway database (so PostgreSQL nodes share them). The dashboard checks a token against
an in-memory copy of the hashes, refreshed every few seconds, comparing in constant time.
"""

from __future__ import annotations

import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass

from steward.db import Connection, changed, transaction
from steward.errors import NotFoundError, StewardError
from steward.secrets.gateway_keys import hash_key

TOKEN_PREFIX = "stw_admin_"
DISPLAY_CHARS = len(TOKEN_PREFIX) + 5
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def hash_token(token: str) -> str:
    """Stored as gateway keys are: one way to keep a bearer secret."""
    return hash_key(token)


@dataclass(frozen=True)
class AdminToken:
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None = None
    last_used_at: float | None = None


def _row(row: sqlite3.Row) -> AdminToken:
    return AdminToken(row["name"], row["prefix"], row["created_at"], row["revoked_at"],
                      row["last_used_at"])


def create(conn: Connection, name: str) -> tuple[AdminToken, str]:
    """A new token; the plaintext is returned here and never stored."""
    if not _NAME.fullmatch(name):
        raise StewardError(f"token name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = AdminToken(name, plaintext[:DISPLAY_CHARS], time.time())
    try:
        with transaction(conn):
            conn.execute("INSERT INTO admin_tokens (name, prefix, token_hash, created_at) "
                         "VALUES (?, ?, ?, ?)",
                         (name, token.prefix, hash_token(plaintext), token.created_at))
            changed(conn, "keys")
    except sqlite3.IntegrityError:
        raise StewardError(f"an admin token named {name!r} already exists; pick another name "
                           "or revoke it first") from None
    return token, plaintext


def list_tokens(conn: Connection) -> list[AdminToken]:
    return [_row(r) for r in conn.execute("SELECT * FROM admin_tokens ORDER BY created_at")]


def revoke(conn: Connection, name: str) -> AdminToken:
    row = conn.execute("SELECT * FROM admin_tokens WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFoundError(f"no admin token named {name!r} (see `steward admin token list`)")
    if row["revoked_at"] is None:
        with transaction(conn):
            conn.execute("UPDATE admin_tokens SET revoked_at = ? WHERE name = ?",
                         (time.time(), name))
            changed(conn, "keys")
    return _row(conn.execute("SELECT * FROM admin_tokens WHERE name = ?", (name,)).fetchone())


def load_active(conn: Connection) -> dict[str, str]:
    """name -> hash of every token not revoked."""
    return {r["name"]: r["token_hash"] for r in
            conn.execute("SELECT name, token_hash FROM admin_tokens WHERE revoked_at IS NULL")}


def match(active: dict[str, str], presented: str) -> str | None:
    """The name of the token presented, or None; every stored hash is compared, in constant
    time, so the answer takes as long whichever one matches."""
    digest = hash_token(presented)
    found = None
    for name, stored in active.items():
        if hmac.compare_digest(stored, digest):
            found = name
    return found
