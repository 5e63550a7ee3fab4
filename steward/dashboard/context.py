"""What the dashboard's handlers share: the gateway, read connections to the store, and
in-memory copies of key names and admin tokens, refreshed every few seconds.

Everything here blocks (SQLite, the gateway database) and runs in worker threads: the admin
listener shares the worker's event loop with proxy traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from steward import db
from steward.dashboard import store, tokens
from steward.secrets import gateway_keys

if TYPE_CHECKING:
    from steward.daemon.gateway import Gateway

T = TypeVar("T")
REFRESH_SECONDS = 2.0  # new and revoked admin tokens, renamed keys, take effect within this


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Dashboard:
    def __init__(self, gateway: Gateway):
        self.gateway = gateway
        self.home = gateway.home
        self._local = threading.local()
        self._lock = threading.Lock()
        self._db: db.Connection | None = None
        self._loaded_at = -REFRESH_SECONDS
        self._key_names: dict[str, str] = {}
        self._tokens: dict[str, str] = {}
        self._session_key: bytes | None = None

    @property
    def requires_token(self) -> bool:
        """Off loopback, always; on loopback when [dashboard] require_token says so."""
        server = self.gateway.config.server
        return self.gateway.config.dashboard.require_token or not is_loopback(server.admin_host)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(fn, *args)

    def store(self) -> sqlite3.Connection:
        """This thread's read connection to the store."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = store.connect(self.home)
        return conn

    def session_key(self) -> bytes:
        if self._session_key is None:
            self._session_key = bytes.fromhex(store.get_meta(self.store(), "session_key") or "")
        return self._session_key

    def _refresh(self) -> None:
        with self._lock:
            if time.monotonic() - self._loaded_at < REFRESH_SECONDS:
                return
            if self._db is None:
                self._db = db.open_database(self.gateway.config)
            try:
                self._key_names = {k.id: k.name for k in gateway_keys.list_keys(self._db)}
                self._tokens = tokens.load_active(self._db)
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None
                raise
            self._loaded_at = time.monotonic()

    def key_names(self) -> dict[str, str]:
        """Gateway key id -> name, revoked keys included (their records stay)."""
        self._refresh()
        return self._key_names

    def admin_tokens(self) -> dict[str, str]:
        """name -> hash of each admin token in force."""
        self._refresh()
        return self._tokens
