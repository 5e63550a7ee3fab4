"""Gateway keys: issued once, stored as a hash, checked from an in-memory index.

Keys are 256-bit random secrets, so a plain SHA-256 is the right hash: there is nothing for a
slow password hash to protect against, and the request path stays at one hash + one dict lookup.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field

from steward.db import Connection, changed, transaction
from steward.errors import NotFoundError, StewardError
from steward.ids import uuid7

KEY_PREFIX = "mdm_sk_"
DISPLAY_CHARS = 12  # "mdm_sk_" + 5 characters of the secret: enough to tell keys apart
# Every key may call its provider's inference endpoints; these reach further into the
# operator's provider account, each only when the key was created with it (--allow).
SCOPES = {
    "files": "file uploads and storage (OpenAI /v1/files and /v1/uploads, Anthropic /v1/files, "
             "Gemini files)",
    "batches": "batch jobs (OpenAI /v1/batches, Anthropic /v1/messages/batches, Gemini "
               "batches and batchGenerateContent)",
    "fine_tuning": "fine-tuning jobs (OpenAI /v1/fine_tuning, Gemini tunedModels)",
    "admin": "anything else on the provider's API: organization and project administration, "
             "model deletion, vector stores, assistants, threads, cached contents…",
}


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class GatewayKey:
    id: str
    name: str
    prefix: str
    tags: dict[str, str] = field(default_factory=dict)
    created_at: float = 0.0
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    scopes: frozenset[str] = frozenset()  # beyond inference, from SCOPES
    uuid: str = ""  # UUIDv7 for new keys; keys older than UUIDs keep their old id beside it
    majordomo_key_id: str | None = None  # the Majordomo API key this key stands for

    def status(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def _row_to_key(row: sqlite3.Row) -> GatewayKey:
    return GatewayKey(
        id=row["id"], name=row["name"], prefix=row["prefix"], tags=json.loads(row["tags"]),
        created_at=row["created_at"], expires_at=row["expires_at"],
        revoked_at=row["revoked_at"], last_used_at=row["last_used_at"],
        scopes=frozenset(json.loads(row["scopes"])),
        uuid=row["uuid"], majordomo_key_id=row["majordomo_key_id"],
    )


def parse_uuid(text: str, what: str) -> str:
    """A UUID in its canonical 36-character form, the only one Majordomo's records accept."""
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise StewardError(f"{what} {text!r} is not a UUID "
                           "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)") from None


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_scopes(values: Iterable[str]) -> frozenset[str]:
    """`--allow files,batches` (repeatable) -> the scopes, each one checked."""
    scopes = {s.strip().lower() for v in values for s in v.split(",") if s.strip()}
    unknown = sorted(scopes - SCOPES.keys())
    if unknown:
        raise StewardError(f"--allow: unknown scope {unknown[0]!r}; valid: "
                           f"{', '.join(SCOPES)} (inference is always allowed)")
    return frozenset(scopes)


def add_key(conn: Connection, name: str, tags: dict[str, str] | None = None,
            expires_in: float | None = None, scopes: Iterable[str] = (),
            majordomo_key_id: str | None = None) -> tuple[GatewayKey, str]:
    """Create a key; the plaintext is returned here and never stored."""
    if not _NAME.fullmatch(name):
        raise StewardError(f"key name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    allowed = parse_scopes(scopes)
    plaintext = generate_key()
    now = time.time()
    key = GatewayKey(
        id="key_" + secrets.token_hex(6), name=name, prefix=plaintext[:DISPLAY_CHARS],
        tags=dict(tags or {}), created_at=now,
        expires_at=now + expires_in if expires_in is not None else None, scopes=allowed,
        uuid=str(uuid7()), majordomo_key_id=majordomo_key_id and parse_uuid(
            majordomo_key_id, "--majordomo-key-id"),
    )
    try:
        with transaction(conn):
            conn.execute(
                "INSERT INTO gateway_keys (id, name, prefix, key_hash, tags, created_at,"
                " expires_at, scopes, uuid, majordomo_key_id)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key.id, key.name, key.prefix, hash_key(plaintext), json.dumps(key.tags),
                 key.created_at, key.expires_at, json.dumps(sorted(allowed)), key.uuid,
                 key.majordomo_key_id),
            )
            changed(conn, "keys")
    except sqlite3.IntegrityError:
        raise StewardError(f"a key named {name!r} already exists; pick another name") from None
    return key, plaintext


def list_keys(conn: Connection) -> list[GatewayKey]:
    return [_row_to_key(r) for r in conn.execute("SELECT * FROM gateway_keys ORDER BY created_at")]


def find_key(conn: Connection, id_or_name: str) -> GatewayKey:
    row = conn.execute("SELECT * FROM gateway_keys WHERE id = ?1 OR uuid = lower(?1) OR name = ?1",
                       (id_or_name,)).fetchone()
    if row is None:
        raise NotFoundError(f"no gateway key with id, UUID or name {id_or_name!r} "
                            "(see `steward keys list`)")
    return _row_to_key(row)


def revoke_key(conn: Connection, id_or_name: str) -> GatewayKey:
    key = find_key(conn, id_or_name)
    if key.revoked_at is None:
        with transaction(conn):
            conn.execute("UPDATE gateway_keys SET revoked_at = ? WHERE id = ?",
                         (time.time(), key.id))
            changed(conn, "keys")
    return find_key(conn, key.id)


def load_hashes(conn: Connection) -> dict[str, GatewayKey]:
    """hash -> key for every key that is not revoked (expiry is checked per request)."""
    rows = conn.execute("SELECT * FROM gateway_keys WHERE revoked_at IS NULL")
    return {r["key_hash"]: _row_to_key(r) for r in rows}


def record_last_used(conn: Connection, used: Iterable[tuple[str, float]]) -> None:
    with transaction(conn):
        conn.executemany(
            "UPDATE gateway_keys SET last_used_at = ?2 WHERE id = ?1 "
            "AND (last_used_at IS NULL OR last_used_at < ?2)", list(used))


class KeyIndex:
    """The daemon's view of valid keys: swapped whole on refresh, read without locks."""

    def __init__(self, by_hash: dict[str, GatewayKey] | None = None):
        self.by_hash: dict[str, GatewayKey] = by_hash or {}
        self.last_used: dict[str, float] = {}

    def authenticate(self, presented: str, now: float) -> GatewayKey | None:
        key = self.by_hash.get(hash_key(presented))
        if key is None or (key.expires_at is not None and key.expires_at <= now):
            return None
        self.last_used[key.id] = now
        return key

    def take_last_used(self) -> dict[str, float]:
        used, self.last_used = self.last_used, {}
        return used
