"""Provider API keys (and other sealed secrets) stored encrypted in the gateway database.

The daemon decrypts them once into a CredentialIndex and refreshes it when the database
changes: no decryption or query per request.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from steward.db import transaction
from steward.errors import NotFoundError, StewardError
from steward.secrets.crypto import Vault

if TYPE_CHECKING:
    from steward.providers.base import UpstreamAuth

DEFAULT_SCOPE = "*"
PURPOSE = "provider-keys"


def _aad(provider: str, scope: str) -> str:
    return f"provider-key:{provider}:{scope}"


@dataclass(frozen=True)
class ProviderKeyInfo:
    provider: str
    scope: str
    last4: str
    created_at: float
    last_used_at: float | None


def set_key(conn: sqlite3.Connection, vault: Vault, provider: str, scope: str,
            api_key: str, shown: str | None = None) -> ProviderKeyInfo:
    """`shown`: what `providers list` shows instead of the last four characters (a cloud
    credential's access key id, not its JSON's closing brace)."""
    api_key = api_key.strip()
    if not api_key or any(c.isspace() for c in api_key):
        raise StewardError("the provider API key is empty or contains spaces")
    sealed = vault.seal(PURPOSE, api_key.encode(), _aad(provider, scope))
    info = ProviderKeyInfo(provider, scope, shown or api_key[-4:], time.time(), None)
    with transaction(conn):
        conn.execute(
            "INSERT INTO provider_keys (provider, scope, sealed, last4, created_at) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider, scope) DO UPDATE SET "
            "sealed = excluded.sealed, last4 = excluded.last4, created_at = excluded.created_at,"
            " last_used_at = NULL", (provider, scope, sealed, info.last4, info.created_at))
    return info


def list_keys(conn: sqlite3.Connection) -> list[ProviderKeyInfo]:
    rows = conn.execute("SELECT provider, scope, last4, created_at, last_used_at "
                        "FROM provider_keys ORDER BY provider, scope")
    return [ProviderKeyInfo(*row) for row in rows]


def remove_key(conn: sqlite3.Connection, provider: str, scope: str) -> None:
    with transaction(conn):
        gone = conn.execute("DELETE FROM provider_keys WHERE provider = ? AND scope = ?",
                            (provider, scope)).rowcount
    if not gone:
        raise NotFoundError(f"no stored {provider} key for "
                            f"{'the default scope' if scope == DEFAULT_SCOPE else scope}")


def load_all(conn: sqlite3.Connection, vault: Vault) -> dict[tuple[str, str], str]:
    rows = conn.execute("SELECT provider, scope, sealed FROM provider_keys")
    return {(p, s): vault.open(PURPOSE, blob, _aad(p, s)).decode() for p, s, blob in rows}


def record_last_used(conn: sqlite3.Connection, used: Iterable[tuple[tuple[str, str], float]]
                     ) -> None:
    with transaction(conn):
        conn.executemany("UPDATE provider_keys SET last_used_at = ? WHERE provider = ? AND "
                         "scope = ?", [(ts, p, s) for (p, s), ts in used])


# -- other sealed secrets (upload token, bucket credentials) --------------------------------


def set_secret(conn: sqlite3.Connection, vault: Vault, name: str, purpose: str,
               value: str) -> None:
    sealed = vault.seal(purpose, value.encode(), f"secret:{name}")
    with transaction(conn):
        conn.execute("INSERT INTO sealed_secrets (name, purpose, sealed, created_at) VALUES "
                     "(?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed, "
                     "purpose = excluded.purpose, created_at = excluded.created_at",
                     (name, purpose, sealed, time.time()))


def get_secret(conn: sqlite3.Connection, vault: Vault, name: str) -> str | None:
    row = conn.execute("SELECT purpose, sealed FROM sealed_secrets WHERE name = ?",
                       (name,)).fetchone()
    return vault.open(row[0], row[1], f"secret:{name}").decode() if row else None


def open_all(conn: sqlite3.Connection, vault: Vault) -> int:
    """Decrypt every sealed row (provider keys and other secrets); how many opened.

    Raises DecryptError naming the first row this vault cannot open: the check value alone
    proves the key is this home's, not that every row was sealed under it.
    """
    opened = len(load_all(conn, vault))
    for name, purpose, blob in conn.execute("SELECT name, purpose, sealed FROM sealed_secrets"):
        vault.open(purpose, blob, f"secret:{name}")
        opened += 1
    return opened


def reseal_all(conn: sqlite3.Connection, old: Vault, new: Vault) -> int:
    """Re-encrypt every secret under a new master key; the caller holds the transaction."""
    count = 0
    for provider, scope, blob in conn.execute(
            "SELECT provider, scope, sealed FROM provider_keys").fetchall():
        aad = _aad(provider, scope)
        conn.execute("UPDATE provider_keys SET sealed = ? WHERE provider = ? AND scope = ?",
                     (new.seal(PURPOSE, old.open(PURPOSE, blob, aad), aad), provider, scope))
        count += 1
    for name, purpose, blob in conn.execute(
            "SELECT name, purpose, sealed FROM sealed_secrets").fetchall():
        aad = f"secret:{name}"
        conn.execute("UPDATE sealed_secrets SET sealed = ? WHERE name = ?",
                     (new.seal(purpose, old.open(purpose, blob, aad), aad), name))
        count += 1
    return count


class CredentialIndex:
    """provider key per (provider, gateway key id), falling back to the provider default; for
    formats that sign requests, the authenticator built from it (steward.secrets.upstream_auths)."""

    def __init__(self, keys: dict[tuple[str, str], str] | None = None):
        self.keys = keys or {}
        self.auths: dict[tuple[str, str], UpstreamAuth] = {}
        self.last_used: dict[tuple[str, str], float] = {}

    def auth(self, provider: str, key_id: str, now: float) -> UpstreamAuth | None:
        for scope in (key_id, DEFAULT_SCOPE):
            auth = self.auths.get((provider, scope))
            if auth is not None:
                self.last_used[(provider, scope)] = now
                return auth
        return None

    def lookup(self, provider: str, key_id: str, now: float) -> str | None:
        for scope in (key_id, DEFAULT_SCOPE):
            value = self.keys.get((provider, scope))
            if value is not None:
                self.last_used[(provider, scope)] = now
                return value
        return None

    def take_last_used(self) -> dict[tuple[str, str], float]:
        used, self.last_used = self.last_used, {}
        return used
