"""Where the 256-bit master key lives, and finding it again.

Resolution order, first match wins:
1. $STEWARD_MASTER_KEY (hex or base64);
2. the systemd credential $CREDENTIALS_DIRECTORY/steward-master-key;
3. the OS keyring (service "steward", one entry per home);
4. <home>/master.key (0600), only when chosen or when no keyring works.

A keyring backend that cannot store (fail, null) or would prompt for a password (encrypted
file keyrings) counts as no keyring: a daemon must never block on a prompt. Keyring calls also
run under a timeout, so a wedged D-Bus cannot hang start-up.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from steward import db
from steward.errors import StewardError
from steward.files import write_atomic
from steward.home import Home
from steward.secrets.crypto import Vault

log = logging.getLogger("steward")

SERVICE = "steward"
CREDENTIAL_NAME = "steward-master-key"
PENDING_SUFFIX = "#pending"
KEYRING_TIMEOUT = 5.0
_CHECK_META = "master_key_check"
_STORE_META = "master_key_store"
# Backends that cannot hold a secret, or that ask a person for a password.
_UNUSABLE = ("keyring.backends.fail", "keyring.backends.null", "keyrings.cryptfile",
             "keyrings.alt.file")

T = TypeVar("T")


class MasterKeyError(StewardError):
    pass


@dataclass(frozen=True)
class MasterKey:
    key: bytes
    store: str  # env | credential | keyring | file
    detail: str

    def __repr__(self) -> str:  # never print the key, even by accident
        return f"MasterKey(store={self.store!r}, detail={self.detail!r})"


def parse_key(raw: bytes | str, where: str) -> bytes:
    """64 hex digits, base64 of 32 bytes, or 32 raw bytes (a binary credential file)."""
    if isinstance(raw, bytes) and len(raw) == 32:
        return raw
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    text = text.strip()
    try:
        if len(text) == 64:
            return bytes.fromhex(text)
        decoded = base64.b64decode(text, validate=True)
        if len(decoded) == 32:
            return decoded
    except (ValueError, binascii.Error):
        pass
    raise MasterKeyError(f"{where}: not a 256-bit key (expected 64 hex digits or base64 of "
                         "32 bytes)")


def _with_timeout(call: Callable[[], T], what: str) -> T:
    """A keyring call that can neither hang nor escape as a traceback."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(call).result(timeout=KEYRING_TIMEOUT)
    except concurrent.futures.TimeoutError:
        raise MasterKeyError(f"the OS keyring did not answer within {KEYRING_TIMEOUT:g}s "
                             f"({what})") from None
    except Exception as exc:
        if exc.__class__.__name__ == "PasswordDeleteError":
            raise
        raise MasterKeyError(f"the OS keyring failed while {what}: {exc}") from None
    finally:
        pool.shutdown(wait=False)


def keyring_backend() -> tuple[Any | None, str]:
    """The usable keyring backend, or None and why not."""
    try:
        import keyring
        from keyring.backends.chainer import ChainerBackend
    except Exception as exc:  # an unimportable backend plugin must not stop the daemon
        return None, f"keyring unavailable ({exc.__class__.__name__})"
    try:
        chosen = _with_timeout(keyring.get_keyring, "choosing a backend")
    except MasterKeyError as exc:
        return None, str(exc)
    backends = chosen.backends if isinstance(chosen, ChainerBackend) else [chosen]
    usable = [b for b in backends if not type(b).__module__.startswith(_UNUSABLE)]
    if not usable:
        names = ", ".join(f"{type(b).__module__}.{type(b).__name__}" for b in backends)
        return None, f"no usable keyring backend (found: {names or 'none'})"
    backend = usable[0]
    return backend, f"{type(backend).__module__}.{type(backend).__name__}"


def _keyring_get(backend: Any, username: str) -> str | None:
    return _with_timeout(lambda: backend.get_password(SERVICE, username), "reading the key")


def _keyring_set(backend: Any, username: str, value: str) -> None:
    _with_timeout(lambda: backend.set_password(SERVICE, username, value), "storing the key")


def _keyring_delete(backend: Any, username: str) -> None:
    import keyring.errors

    with contextlib.suppress(keyring.errors.PasswordDeleteError):
        _with_timeout(lambda: backend.delete_password(SERVICE, username), "deleting a key")


def _write_key_file(path: Path, key: bytes) -> None:
    write_atomic(path, (key.hex() + "\n").encode())


def find(home: Path, env: Mapping[str, str] | None = None) -> MasterKey | None:
    """The master key from the first store that has one, or None."""
    env = os.environ if env is None else env
    if env.get("STEWARD_MASTER_KEY"):
        return MasterKey(parse_key(env["STEWARD_MASTER_KEY"], "$STEWARD_MASTER_KEY"), "env",
                         "$STEWARD_MASTER_KEY")
    if env.get("CREDENTIALS_DIRECTORY"):
        path = Path(env["CREDENTIALS_DIRECTORY"]) / CREDENTIAL_NAME
        if path.exists():
            return MasterKey(parse_key(path.read_bytes(), str(path)), "credential", str(path))
    backend, why = keyring_backend()
    if backend is not None:
        try:
            stored = _keyring_get(backend, str(home))
        except MasterKeyError as exc:
            log.warning("%s; trying %s", exc, Home(home).master_key)
            stored = None
        if stored:
            return MasterKey(parse_key(stored, f"keyring entry {SERVICE}/{home}"), "keyring",
                             why)
    path = Home(home).master_key
    if path.exists():
        return MasterKey(parse_key(path.read_bytes(), str(path)), "file", str(path))
    return None


def create(home: Path, store: str = "auto") -> tuple[MasterKey, str]:
    """A new key in the best store available (or the one asked for); returns it and a note."""
    key = os.urandom(32)
    path = Home(home).master_key
    if store in ("auto", "keyring"):
        backend, why = keyring_backend()
        if backend is not None:
            try:
                _keyring_set(backend, str(home), key.hex())
                return MasterKey(key, "keyring", why), f"stored in the OS keyring ({why})"
            except MasterKeyError as exc:
                backend, why = None, str(exc)
        if store == "keyring":
            raise MasterKeyError(f"--key-store keyring: {why}")
        note = (f"WARNING: {why}; the master key is in {path} (0600). Anyone who "
                "can read that file can decrypt the stored provider keys. Prefer a keyring or, "
                "under systemd, LoadCredential= (see packaging/).")
    else:
        note = f"stored in {path} (0600), as chosen with --key-store file"
    _write_key_file(path, key)
    return MasterKey(key, "file", str(path)), note


MISSING_HELP = ("provide it as $STEWARD_MASTER_KEY, as the systemd credential "
                f"{CREDENTIAL_NAME}, in the OS keyring, or in {Home(Path('<home>')).master_key}")


def open_vault(home: Path, conn: db.Connection,
               env: Mapping[str, str] | None = None) -> tuple[Vault, MasterKey]:
    """The vault for this home, after checking the key against the database's check value."""
    expected = db.get_meta(conn, _CHECK_META)
    if expected is None:
        raise MasterKeyError(f"{home} has no master key yet: run `steward init --home {home}`")
    master = find(home, env)
    if master is None:
        raise MasterKeyError(f"the master key for {home} is missing: {MISSING_HELP}")
    vault = Vault(master.key)
    if vault.check_value() != expected:
        promoted = _finish_interrupted_rotation(home, conn, master, expected)
        if promoted is None:
            raise MasterKeyError(f"the master key from {master.detail} does not match {home}'s "
                                 f"database (wrong key, or another home's): {MISSING_HELP}")
        vault, master = promoted
    else:
        _discard_pending(home, master)
    return vault, master


def ensure(home: Path, conn: db.Connection, store: str = "auto"
           ) -> tuple[MasterKey, str | None]:
    """At `steward init`: create the key if this home has none; say where it is."""
    if db.get_meta(conn, _CHECK_META) is not None:
        _, master = open_vault(home, conn)
        return master, None
    master = find(home)
    note = None
    if master is None:
        master, note = create(home, store)
    with db.transaction(conn):
        db.set_meta(conn, _CHECK_META, Vault(master.key).check_value())
        db.set_meta(conn, _STORE_META, master.store)
    return master, note or f"using the existing key from {master.detail}"


# -- rotation -------------------------------------------------------------------------------


def _pending_key(home: Path, master: MasterKey) -> bytes | None:
    if master.store == "keyring":
        backend, _ = keyring_backend()
        stored = _keyring_get(backend, str(home) + PENDING_SUFFIX) if backend else None
        return parse_key(stored, "pending keyring entry") if stored else None
    path = Home(home).master_key_new
    return parse_key(path.read_bytes(), str(path)) if path.exists() else None


def _discard_pending(home: Path, master: MasterKey) -> None:
    if master.store == "keyring":
        backend, _ = keyring_backend()
        if backend is not None and _keyring_get(backend, str(home) + PENDING_SUFFIX):
            _keyring_delete(backend, str(home) + PENDING_SUFFIX)
    elif master.store == "file":
        Home(home).master_key_new.unlink(missing_ok=True)


def _promote(home: Path, master: MasterKey, new: bytes) -> MasterKey:
    if master.store == "keyring":
        backend, why = keyring_backend()
        _keyring_set(backend, str(home), new.hex())
        _keyring_delete(backend, str(home) + PENDING_SUFFIX)
        return MasterKey(new, "keyring", why)
    os.replace(Home(home).master_key_new, Home(home).master_key)
    return MasterKey(new, "file", str(Home(home).master_key))


def _finish_interrupted_rotation(home: Path, conn: db.Connection, master: MasterKey,
                                 expected: str) -> tuple[Vault, MasterKey] | None:
    """The database was re-encrypted but the new key not yet promoted: promote it now."""
    if master.store not in ("keyring", "file"):
        return None
    pending = _pending_key(home, master)
    if pending is None or Vault(pending).check_value() != expected:
        return None
    log.warning("finishing an interrupted master key rotation for %s", home)
    promoted = _promote(home, master, pending)
    return Vault(promoted.key), promoted


def rotate(home: Path, conn: db.Connection,
           reseal: Callable[[db.Connection, Vault, Vault], int]) -> tuple[MasterKey, int]:
    """New key saved as pending, every secret re-sealed in one transaction, then promoted.

    Interrupted before the commit: the old key still opens everything and the pending key is
    discarded on next use. Interrupted after: the next open promotes the pending key.
    """
    old_vault, master = open_vault(home, conn)
    if master.store not in ("keyring", "file"):
        raise MasterKeyError(f"the master key comes from {master.detail}, which Steward cannot "
                             "write: put a new key there yourself after re-encrypting with a "
                             "keyring- or file-stored key")
    new = os.urandom(32)
    if master.store == "keyring":
        backend, _ = keyring_backend()
        _keyring_set(backend, str(home) + PENDING_SUFFIX, new.hex())
    else:
        _write_key_file(Home(home).master_key_new, new)
    new_vault = Vault(new)
    with db.transaction(conn):
        count = reseal(conn, old_vault, new_vault)
        db.set_meta(conn, _CHECK_META, new_vault.check_value())
        db.changed(conn, "provider_keys")
        db.changed(conn, "secrets")
    return _promote(home, master, new), count
