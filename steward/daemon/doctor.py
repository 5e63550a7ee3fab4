"""`steward doctor`: every way a deployment can be misconfigured, checked, with a fix for each."""

from __future__ import annotations

import os
import socket
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from steward import db, providers
from steward.bodies.bucket import bucket_settings, probe
from steward.bodies.stores import open_store
from steward.config import Config, ProviderConfig, load_config
from steward.errors import StewardError
from steward.home import Home
from steward.providers.base import WireFormat
from steward.records.formats import ENCODERS, UPLOAD_TOKEN
from steward.secrets import master_key, provider_keys
from steward.secrets.crypto import Vault

PROBE_KEY = "steward-doctor-probe"  # the Idempotency-Key of doctor's empty upload batch


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


DISK_WARN_USED = 0.80  # doctor warns past this much of the home's disk in use


def _check(name: str, fix: str, run: Callable[[], str]) -> Check:
    try:
        return Check(name, True, run())
    except (StewardError, OSError, sqlite3.Error, httpx.HTTPError) as exc:
        return Check(name, False, str(exc) or exc.__class__.__name__, fix)


def run_checks(home: Path) -> list[Check]:
    checks: list[Check] = []
    state: dict[str, object] = {}
    paths = Home(home)

    def config() -> str:
        state["config"] = load_config(home)
        return f"{paths.config} is valid"

    checks.append(_check("config valid", "fix the key named above with `steward config set`",
                         config))

    def writable() -> str:
        for directory in (home, paths.spool, paths.bodies):
            directory.mkdir(mode=0o700, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=directory):
                pass
        return f"{home}, {paths.spool.name}/ and {paths.bodies.name}/ are writable"

    checks.append(_check("home writable", f"give this user write access to {home}", writable))

    def schema() -> str:
        conn = sqlite3.connect(paths.db)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        finally:
            conn.close()
        if version != db.SCHEMA_VERSION:
            raise StewardError(f"schema version {version}, this Steward expects "
                               f"{db.SCHEMA_VERSION}")
        return f"schema version {version}"

    checks.append(_check("database schema current",
                         "run any steward command once (it migrates), or upgrade Steward", schema))

    def key() -> str:
        conn = db.connect(paths.db)
        state["conn"] = conn
        vault, found = master_key.open_vault(home, conn)
        state["vault"] = vault
        provider_keys.open_all(conn, vault)
        return f"from {found.store} ({found.detail}); it decrypts the database"

    checks.append(_check("master key available and correct", master_key.MISSING_HELP, key))

    def space() -> str:
        st = os.statvfs(home)
        used = 1 - st.f_bavail / st.f_blocks if st.f_blocks else 0.0
        free = f"{st.f_bavail * st.f_frsize / 2**30:.1f} GiB free"
        if used > DISK_WARN_USED:
            raise StewardError(f"the disk holding {home} is {used:.0%} full ({free})")
        return f"{used:.0%} used, {free}"

    checks.append(_check("disk space for the home", "free space, lower bodies.retention, or "
                         "move bodies to a bucket (`steward bucket set`)", space))

    cfg = state.get("config")
    conn = state.get("conn")
    vault = state.get("vault")
    if isinstance(cfg, Config) and isinstance(conn, sqlite3.Connection) and isinstance(vault,
                                                                                      Vault):
        checks += _service_checks(cfg, conn, vault)
        conn.close()
    return checks


def _service_checks(cfg: Config, conn: sqlite3.Connection, vault: Vault) -> list[Check]:
    checks = []
    if cfg.bodies.enabled:
        def bucket() -> str:
            result = probe(open_store(bucket_settings(cfg, conn, vault)))
            if not result.ok:
                raise StewardError(f"{result.step} failed: {result.detail}")
            return result.detail

        checks.append(_check("bucket write/read/delete",
                             "check `steward bucket show` and the bucket's permissions", bucket))
    if cfg.metadata.upload_url:
        def upload() -> str:
            # The probe is an empty batch in the configured format: zero records, so a
            # collector has nothing to store, under one fixed Idempotency-Key so one that
            # logs batches keeps at most one. Only an answer the uploader itself would take
            # as success (2xx; exactly 200 for majordomo) proves URL and token work.
            token = provider_keys.get_secret(conn, vault, UPLOAD_TOKEN)
            encode, accepted = ENCODERS[cfg.metadata.format]
            body, headers = encode(b"")
            headers |= {"Idempotency-Key": PROBE_KEY, "X-Steward-Probe": "doctor"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = httpx.post(cfg.metadata.upload_url, content=body, headers=headers,
                                  timeout=10)
            if response.status_code in (401, 403):
                raise StewardError(f"the endpoint refused the token ({response.status_code})"
                                   if token else f"the endpoint wants a token "
                                   f"({response.status_code}) and none is stored")
            if not accepted(response.status_code):
                raise StewardError(f"{cfg.metadata.upload_url} answered "
                                   f"{response.status_code} to an empty batch; the uploader "
                                   "would not count that as accepted")
            return (f"{cfg.metadata.upload_url} accepted an empty batch "
                    f"({response.status_code})" + (" with the stored token" if token else ""))

        checks.append(_check("upload endpoint reachable, token accepted",
                             "check metadata.upload_url, then `steward upload set URL "
                             "--token-stdin` with a valid token", upload))

    def ports() -> str:
        notes = []
        for host, port in ((cfg.server.host, cfg.server.port),
                           (cfg.server.admin_host, cfg.server.admin_port)):
            if not port:
                continue
            if _steward_answers(cfg):
                notes.append(f"{host}:{port} is in use by a running Steward")
                continue
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            with socket.socket(family) as probe_socket:
                probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe_socket.bind((host, port))
                except OSError as exc:
                    raise StewardError(f"{host}:{port}: {exc.strerror}") from None
            notes.append(f"{host}:{port} is free")
        return "; ".join(notes)

    checks.append(_check("ports free", "stop what holds the port or change server.port / "
                         "server.admin_port", ports))
    stored = provider_keys.load_all(conn, vault)
    for name, provider in cfg.providers.items():
        fmt = providers.find(provider.format)
        if fmt is not None and fmt.caller_auth_headers:  # clouds: a signed call, if configured
            checks += _signing_check(name, provider, fmt, stored)
            continue

        def reach(url: str = provider.base_url) -> str:
            # Any HTTP answer proves DNS, TCP and TLS work; the status does not matter here.
            response = httpx.get(url, timeout=5, follow_redirects=False)
            return f"{url} answered ({response.status_code})"

        checks.append(_check(f"provider {name} reachable",
                             f"check DNS, egress firewall or HTTPS_PROXY for "
                             f"{provider.base_url}, or fix providers.{name}.base_url", reach))
    return checks


def _signing_check(name: str, provider: ProviderConfig, fmt: WireFormat,
                   stored: dict[tuple[str, str], str]) -> list[Check]:
    """A provider that signs (Bedrock) is checked with its provider-wide credential (or, with
    only per-key ones, the first), by one signed call; without any it serves nothing and is
    not checked."""
    mine = sorted((scope, value) for (p, scope), value in stored.items() if p == name)
    if provider.credentials == "default":
        value: str | None = None
    elif mine:
        value = dict(mine).get(provider_keys.DEFAULT_SCOPE, mine[0][1])
    else:
        return []
    source = "the default credential chain" if value is None else "the stored credentials"

    def signed() -> str:
        try:
            return fmt.check_credentials(provider, value)
        except ValueError as exc:
            raise StewardError(f"{source} cannot be used: {exc}") from None

    return [_check(f"provider {name} credentials accepted",
                   f"store working credentials with `steward providers set {name}` (or fix "
                   f"providers.{name}.region / base_url)", signed)]


def _steward_answers(cfg: Config) -> bool:
    if not cfg.server.admin_port:
        return False
    try:
        url = f"http://{cfg.server.admin_host}:{cfg.server.admin_port}/healthz"
        return httpx.get(url, timeout=1).json().get("status") == "alive"
    except (httpx.HTTPError, ValueError):
        return False

