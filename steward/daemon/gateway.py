"""The daemon's long-lived state: configuration, upstream pools, key index, spool, background
tasks. Built once per worker process; the proxy reads it, background tasks refresh it."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import sqlite3
import time
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any

import aiohttp

from steward import db
from steward.bodies.bucket import bucket_settings
from steward.bodies.journal import CaptureJournal
from steward.bodies.process import BodyProcess, Options
from steward.bodies.stores import BodyStore, LocalStore, StoreSettings, object_url, open_store
from steward.budgets import store as budget_store
from steward.budgets.governor import Governor
from steward.budgets.ledger import SYNC_SECONDS, Ledger, holder_name
from steward.config import Config, load_config
from steward.daemon import allocator, logs, telemetry
from steward.daemon.metrics import Metrics
from steward.daemon.state_sync import StateSync
from steward.daemon.supervisor import InProcessReporter, Reporter
from steward.dashboard.indexer import Indexer
from steward.errors import StewardError
from steward.home import Home
from steward.pricing import pricer as pricing
from steward.pricing.pricer import Pricer
from steward.proxy.pipeline import Proxy
from steward.proxy.routing import Router
from steward.proxy.upstream import make_session
from steward.records.formats import UPLOAD_TOKEN, make_uploader
from steward.records.spool import Spool
from steward.records.upload import Uploader
from steward.secrets import gateway_keys, master_key, provider_keys, upstream_auths
from steward.secrets.crypto import DecryptError, Vault
from steward.secrets.gateway_keys import KeyIndex
from steward.secrets.provider_keys import CredentialIndex

log = logging.getLogger("steward")

# Adds, revokes and expiries are seen within this (the promise is 5 s). Tests that must tell a
# SIGHUP's reload from the poll's set STEWARD_KEY_REFRESH_SECONDS to something long.
KEY_REFRESH_SECONDS = float(os.environ.get("STEWARD_KEY_REFRESH_SECONDS", "2"))
GAUGE_PUBLISH_SECONDS = 5.0
BODY_SWEEP_SECONDS = 3600.0  # several workers: how old another worker's gauges may be
# Signing credentials (tokens, the cloud SDKs' chains) are asked this often whether they need
# renewing; each renews itself well before it expires. The first refresh at load is bounded.
AUTH_REFRESH_SECONDS = float(os.environ.get("STEWARD_AUTH_REFRESH_SECONDS", "60"))
AUTH_LOAD_TIMEOUT = 20.0


class Gateway:
    def __init__(self, config: Config):
        self.config = config
        self.home = Home(config.home)
        self.router = Router(config.providers)
        self.keys = KeyIndex()
        self.credentials = CredentialIndex()
        self._auths: dict[upstream_auths.Ref, upstream_auths.Held] = {}
        self._auths_stale = True
        self._auths_lock = asyncio.Lock()
        self._vault: Vault | None = None
        meta = config.metadata
        self.spool = Spool(self.home.spool, config.fsync_interval,
                           meta.segment_max_bytes, meta.segment_max_age)
        self.uploader: Uploader | None = None
        self.telemetry: telemetry.Telemetry | None = None
        self.bodies: CaptureJournal | None = None  # the proxy's hand-off of bodies
        self.body_process: BodyProcess | None = None  # which builds and stores them
        self._body_settings: StoreSettings | None = None
        self._read_store: BodyStore | None = None
        self.sessions: dict[str, aiohttp.ClientSession] = {}
        self.proxy: Proxy | None = None
        self._db: db.Connection | None = None
        self.sync: StateSync | None = None  # PostgreSQL: changes pushed by the database
        self._generation = 0  # PostgreSQL: changes heard of, in place of SQLite's data_version
        self._data_version = -1
        self._prices_mtime = -1
        self._pricer: Pricer | None = None
        self.governor = Governor(Ledger(lambda: db.open_database(self.config),
                                        holder_name(config.server.node_name)),
                                 config.budgets.unpriced)
        self._definitions: tuple[dict, dict] | None = None  # loaded in a thread, applied here
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics = Metrics(self.gauges, lambda: self.governor.ledger.figures())
        self.ready = False
        self.reporter: Reporter = InProcessReporter()  # a worker of several gets its own
        self.dashboard_indexer = Indexer(self.home)  # the spool into the dashboard's store

    async def start(self) -> None:
        allocator.tune()
        if os.environ.get("STEWARD_ASYNCIO_DEBUG") == "1":
            # Every callback that holds the loop for 25 ms or more is logged: the test suite
            # runs its shared daemon this way and fails on any such line. 25 ms, not less: on
            # two cores shared with the test client, ordinary request steps (ending a request
            # that held a 30 MiB body, say) measured 11-12 ms in a clean CI run; a blocking
            # fsync, query or sleep still shows.
            loop = asyncio.get_running_loop()
            loop.set_debug(True)
            loop.slow_callback_duration = 0.025
        self._db = await asyncio.to_thread(db.open_database, self.config)
        self._vault, _ = await asyncio.to_thread(master_key.open_vault, self.config.home,
                                                 self._db)
        await self._refresh()
        self._open_sessions(self.config)
        body_tasks: list[Coroutine[Any, Any, None]] = []
        if self.config.bodies.enabled:
            settings = await asyncio.to_thread(bucket_settings, self.config, self._db,
                                               self._vault)
            self._body_settings = settings
            b = self.config.bodies
            # Only a local store is opened here (for its retention); the body writer process
            # opens the bucket's client.
            local = open_store(settings) if settings.url.startswith("file:") else None
            guard = local.root if isinstance(local, LocalStore) else \
                self.home.pending_bodies  # the only bodies written locally
            self.bodies = CaptureJournal(self.home.capture, object_url(settings.url),
                                         fsync_interval=self.config.bodies_fsync_interval,
                                         queue_bytes=b.queue_bytes, guard_dir=guard,
                                         min_free=b.min_free, status_path=self.home.bodies_status)
            self.body_process = BodyProcess(settings, Options(
                home=str(self.config.home), journal=str(self.home.capture), owner=os.getpid(),
                workers=b.workers, queue_bytes=b.queue_bytes,
                flush_interval=self.config.bodies_fsync_interval,
                log_format=self.config.server.log_format,
                drain=self.config.server.drain_timeout,
                formats=tuple({p.format for p in self.config.providers.values()})),
                self.bodies)
            await asyncio.to_thread(self.body_process.start)
            body_tasks = [self.bodies.run_fsync(), self.bodies.run_retry(),
                          self.bodies.watch_space(), self.body_process.watch()]
            if isinstance(local, LocalStore) and b.retention:
                body_tasks.append(self._sweep_bodies(local, b.retention))
        limits = self.config.limits
        self.proxy = Proxy(self.router, self.keys, self.credentials, self.sessions, self.spool,
                           self._pricer, self.bodies, self.metrics, limits)
        self.proxy.governor = self.governor
        await self.governor.ledger.sync()  # charges the leases of workers that died
        self.proxy.node = self.config.server.node_name
        self._tasks = [*(asyncio.create_task(t) for t in body_tasks),
                       asyncio.create_task(self._keep_keys_fresh()),
                       asyncio.create_task(self.spool.run_fsync()),
                       asyncio.create_task(self.spool.run_retry()),
                       asyncio.create_task(self._sync_budgets())]
        self._tasks.append(asyncio.create_task(self._report()))
        self._tasks.append(asyncio.create_task(self.dashboard_indexer.run()))
        if db.is_postgres(self._db):
            self.sync = StateSync(self._db.target, self._state_changed)  # type: ignore[union-attr]
            self._tasks.append(asyncio.create_task(self.sync.run()))
        self._tasks.append(asyncio.create_task(self._refresh_auths()))
        if self.config.pricing.refresh_interval > 0:
            self._tasks.append(asyncio.create_task(self._refresh_prices()))
        await self._start_uploader(self.config)
        await self._apply_telemetry(self.config)
        # Everything loaded so far (frameworks, SDKs, the price table) lives as long as the
        # process: out of the collector's reach, a full collection scans only what requests
        # made, instead of pausing the loop for tens of ms to walk it all again.
        gc.collect()
        gc.freeze()
        self.ready = True
        # The listener is bound before start-up begins; this says "serving" (READY=1 once
        # every worker has said it).
        self.reporter.beat(self.gauges())


    async def stop(self) -> None:
        """After in-flight requests have drained: flush bodies, the spool and key usage."""
        self.ready = False
        self.reporter.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(s.close() for s in self.sessions.values()))
        await self.governor.ledger.close()  # settled spend down, leases given back
        await self._stop_telemetry()
        if self.bodies is not None and self.body_process is not None:
            await self.bodies.drain()
            await self.bodies.sync()
            self.bodies.close()  # the last segment finished, for the body writer to let go
            await self.body_process.stop()
            await asyncio.to_thread(self.bodies.write_status)  # the final word
        await asyncio.to_thread(self._flush_last_used)
        await self.spool.sync()
        self.spool.close()
        if self._db is not None:
            self._db.close()
        self.metrics.worker_exiting()

    async def _refresh(self) -> None:
        """Keys, provider keys, prices and budgets from the database, then the cloud
        authenticators for credentials that changed."""
        await asyncio.to_thread(self._refresh_keys)
        await self._load_auths()
        if self._definitions is not None:
            self.governor.configure(*self._definitions)
            self._definitions = None

    async def _sync_budgets(self) -> None:
        """Settled spend to the database and leases resized, while any budget is in use."""
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            if self.governor.ledger.accounts or self.governor.ledger.budgets:
                await self.governor.ledger.sync()

    def _refresh_keys(self) -> None:
        """Reload keys, provider keys and prices when the CLI has changed them."""
        assert self._db is not None
        version = self._generation if db.is_postgres(self._db) else \
            self._db.execute("PRAGMA data_version").fetchone()[0]
        active = self.home.prices
        mtime = active.stat().st_mtime_ns if active.exists() else 0
        if version != self._data_version or mtime != self._prices_mtime:
            self._pricer = pricing.load_pricer(self.config.home, self._db)
            self._pricer.aliases = {(name, deployment): model for name, p
                                    in self.config.providers.items()
                                    for deployment, model in p.deployments}
            self._prices_mtime = mtime
            if self.proxy is not None:
                self.proxy.pricer = self._pricer
        if version != self._data_version:
            assert self._vault is not None
            self.keys.by_hash = gateway_keys.load_hashes(self._db)
            self._definitions = (budget_store.load_budgets(self._db),
                                 budget_store.load_limits(self._db))
            try:
                self.credentials.keys = provider_keys.load_all(self._db, self._vault)
            except DecryptError:  # the master key was rotated: find the new one
                self._vault, _ = master_key.open_vault(self.config.home, self._db)
                self.credentials.keys = provider_keys.load_all(self._db, self._vault)
            self._auths_stale = True
            self._data_version = version

    async def _state_changed(self, kinds: frozenset[str]) -> None:
        """PostgreSQL said `kinds` changed (or the node reconnected): reload now, off the
        event loop; a failure leaves the change counted for the next refresh to retry."""
        self._generation += 1
        try:
            await self._refresh()
            if "secrets" in kinds:
                await self._reload_secrets()
        except (sqlite3.Error, StewardError) as exc:
            log.error("could not reload %s from the database (will retry): %s",
                      ", ".join(sorted(kinds)), exc)

    async def _reload_secrets(self) -> None:
        """A new upload token (`upload set --token-stdin` on any node) or telemetry header:
        the uploader or exporter is replaced, as SIGHUP does for a changed steward.toml."""
        if self.uploader is not None:
            token = await asyncio.to_thread(provider_keys.get_secret, self._db, self._vault,
                                            UPLOAD_TOKEN)
            if token != self.uploader.token:
                await self._stop_uploader()
                await self._start_uploader(self.config)
                log.info("metadata upload token changed; uploading with the new one")
        await self._apply_telemetry(self.config)

    def _flush_last_used(self) -> None:
        if self._db is None:
            return
        used = self.keys.take_last_used()
        provider_used = self.credentials.take_last_used()
        try:
            if used:
                gateway_keys.record_last_used(self._db, used.items())
            if provider_used:
                provider_keys.record_last_used(self._db, provider_used.items())
        except sqlite3.Error:  # e.g. a full disk: keep the times for the next try
            for key_id, at in used.items():
                self.keys.last_used[key_id] = max(at, self.keys.last_used.get(key_id, at))
            for ref, at in provider_used.items():
                self.credentials.last_used[ref] = max(at, self.credentials.last_used.get(ref, at))
            raise

    def gauges(self) -> dict[str, float]:
        bodies = self.bodies.status() if self.bodies else {}
        upload = self.uploader.status if self.uploader else {}
        spool = self.spool.status()
        return {"requests_served": self.proxy.served if self.proxy else 0,
                "request_body_bytes_buffered": self.proxy.buffered_bytes if self.proxy else 0,
                "body_queue_depth": bodies.get("queued", 0),
                "body_queue_bytes": bodies.get("queued_bytes", 0),
                "bodies_pending_on_disk": bodies.get("pending", 0),
                "body_upload_failures": bodies.get("failures", 0),
                "spool_write_errors": self.spool.errors,
                "spool_held_records": spool["held_records"],
                "spool_records_lost": self.spool.lost,
                "bodies_held_in_memory": bodies.get("held", 0),
                "bodies_lost": bodies.get("lost", 0),
                "bodies_refused_low_space": bodies.get("refused_low_space", 0),
                "spool_backlog_bytes": upload.get("backlog_bytes", 0),
                # 1 in the one worker that holds the uploader lock: the sum is 1 when uploads
                # run, 0 when an upload URL is set and nobody could take the lock.
                "metadata_uploader_active": 1 if upload.get("lock_held") else 0,
                "metadata_upload_failures": upload.get("failures", 0),
                **({"database_connected": 1 if self.sync.connected else 0,
                    "database_outages": self.sync.outages} if self.sync else {})}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready to serve; degraded storage or upload is reported, not a failure."""
        bodies = self.bodies.status() if self.bodies else {"enabled": False}
        upload = dict(self.uploader.status) if self.uploader else {"enabled": False}
        degraded = []
        spool = self.spool.status()
        if (bodies.get("pending") or bodies.get("held") or bodies.get("failing")
                or bodies.get("refusing") or bodies.get("running") is False):
            degraded.append("body storage")
        if upload.get("last_error"):
            degraded.append("metadata upload")
        if spool["held_records"]:
            degraded.append("metadata spool")
        ledger = self.governor.ledger
        if ledger.sync_error:
            degraded.append("budget sync")
        database = self.sync.status() if self.sync else {"backend": "sqlite"}
        if self.sync is not None and not self.sync.connected:
            degraded.append("database")  # serving with what it has: still ready
        return self.ready, {"ready": self.ready, "degraded": degraded, "bodies": bodies,
                            "upload": upload, "spool": spool, "database": database,
                            "budgets": {"count": len(ledger.budgets),
                                        "sync_error": ledger.sync_error}}

    def body_store(self) -> BodyStore | None:
        """The store, for reading bodies back (the dashboard): opened on first use, in the
        caller's thread (a bucket's client takes a while); writing is the body writer
        process's. None when bodies are off."""
        if self._body_settings is None:
            return None
        if self._read_store is None:
            self._read_store = open_store(self._body_settings)
        return self._read_store

    async def _sweep_bodies(self, store: LocalStore, retention: float) -> None:
        """bodies.retention: whole days past it are deleted at start-up, then hourly."""
        while True:
            try:
                days, files = await asyncio.to_thread(store.sweep, retention, time.time())
                if days:
                    log.info("bodies.retention: deleted %d bodies in %d day directories older "
                             "than %gd", files, days, retention / 86400)
            except OSError as exc:
                log.error("bodies.retention: sweeping %s failed (will retry): %s", store.root,
                          exc)
            await asyncio.sleep(BODY_SWEEP_SECONDS)

    def _open_sessions(self, config: Config) -> None:
        """One connection pool per upstream."""
        self.sessions = {name: make_session(config.limits) for name in self.router.upstreams}

    async def _start_uploader(self, config: Config) -> None:
        """Upload metadata, with the stored token, when config names an endpoint."""
        if not config.metadata.upload_url:
            return
        token = await asyncio.to_thread(provider_keys.get_secret, self._db, self._vault,
                                        UPLOAD_TOKEN)
        self.uploader = make_uploader(config, token)
        self._upload_task = asyncio.create_task(self.uploader.run())
        self._tasks.append(self._upload_task)

    async def _stop_uploader(self) -> None:
        if self.uploader is None:
            return
        self._upload_task.cancel()
        with suppress(asyncio.CancelledError):
            await self._upload_task
        self._tasks.remove(self._upload_task)
        self.uploader = None

    async def _apply_telemetry(self, config: Config) -> None:
        """[telemetry] (or OTEL_EXPORTER_OTLP_*): spans and GenAI metrics, exported by this
        worker in the background; the proxy only hands each finished record over. A changed
        endpoint, header or sealed token makes a new exporter, which takes over at once; the old
        one then flushes what it holds."""
        settings = await asyncio.to_thread(telemetry.settings_for, config.telemetry, self._db,
                                           self._vault)
        old = self.telemetry
        if old is not None and old.settings == settings:
            return
        self.telemetry = None if settings is None else telemetry.Telemetry(settings, self.metrics)
        if self.telemetry is not None:
            self.telemetry.start()
        if self.proxy is not None:
            self.proxy.telemetry = self.telemetry
        if old is not None:
            await old.stop()

    async def _stop_telemetry(self) -> None:
        if self.telemetry is None:
            return
        if self.proxy is not None:
            self.proxy.telemetry = None
        old, self.telemetry = self.telemetry, None
        await old.stop()

    async def _report(self) -> None:
        """Every interval, from this event loop: "still answering", with this worker's figures
        (systemd's watchdog depends on it); shared metric gauges every few seconds."""
        published = 0.0
        while True:
            await asyncio.sleep(self.reporter.interval)
            self.reporter.beat(self.gauges())
            now = time.monotonic()
            if now - published >= GAUGE_PUBLISH_SECONDS:
                self.metrics.publish_gauges()
                published = now

    def draining(self) -> None:
        """SIGTERM: streams cut from now on are cut by the drain."""
        if self.proxy is not None:
            self.proxy.draining = self.config.server.drain_timeout

    async def reload(self) -> None:
        """SIGHUP: re-read steward.toml, keys, provider keys and prices; keep connections."""
        try:
            new = await asyncio.to_thread(load_config, self.config.home)
        except StewardError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        old = self.config
        if new.providers != old.providers or new.limits != old.limits:
            self.router = Router(new.providers)
            self._open_sessions(new)
            if self.proxy is not None:
                # Requests from now on use the new pools; each old pool closes when the last
                # request using it ends, so a stream in flight runs on undisturbed.
                self.proxy.configure(self.router, self.sessions, new.limits)
        if new.metadata != old.metadata and self._db is not None:
            await self._stop_uploader()  # releases the uploader lock for the new one
            await self._start_uploader(new)
        try:
            await self._apply_telemetry(new)
        except StewardError as exc:
            log.error("[telemetry] not reloaded, keeping the running exporter: %s", exc)
        logs.access_lines(new.server.access_log)  # applies at once; the rest of [server]
        restart_only = {"server": dataclasses.replace(new.server,  # needs a restart
                                                      access_log=old.server.access_log),
                        "bodies": new.bodies}
        for section, changed in restart_only.items():
            if changed != getattr(old, section):
                log.warning("[%s] changed: restart Steward to apply it", section)
        self.config = new
        self.governor.unpriced = new.budgets.unpriced
        self._data_version = self._prices_mtime = -1  # force a reload of keys and prices
        await self._refresh()
        log.info("configuration, keys and prices reloaded")

    async def _refresh_prices(self) -> None:
        """pricing.refresh_interval: fetch the table; a bad download keeps the last good one."""
        while True:
            await asyncio.sleep(self.config.pricing.refresh_interval)
            url = self.config.pricing.url
            try:
                table = await asyncio.to_thread(pricing.update_table, self.config.home, url)
                log.info("price table refreshed from %s (version %s)", url, table["version"])
            except StewardError as exc:
                log.error("price table refresh from %s failed, keeping the current one: %s",
                          url, exc)

    async def _keep_keys_fresh(self) -> None:
        while True:
            await asyncio.sleep(KEY_REFRESH_SECONDS)
            try:
                await asyncio.to_thread(self._flush_last_used)
            except sqlite3.Error as exc:
                log.warning("could not record when keys were last used (will retry): %s", exc)
            try:
                await self._refresh()
            except (sqlite3.Error, StewardError) as exc:
                log.error("could not refresh keys from the database: %s", exc)
            await self._load_auths()
            if self.bodies is not None:
                await asyncio.to_thread(self.bodies.write_status)

    async def _load_auths(self) -> None:
        """Authenticators for signing providers, after their credentials or configuration
        changed: new ones refresh (mint a token, resolve a chain) before they serve."""
        async with self._auths_lock:
            if not self._auths_stale:
                return
            self._auths_stale = False
            # In a thread: the first Bedrock credential imports botocore (a quarter second).
            new = await asyncio.to_thread(upstream_auths.build, self.config.providers,
                                          self.credentials.keys, self._auths)
            fresh = [held for ref, held in new.items() if self._auths.get(ref) is not held]
            if fresh:
                with suppress(TimeoutError):
                    async with asyncio.timeout(AUTH_LOAD_TIMEOUT):  # the background retries
                        await asyncio.gather(*(self._refresh_auth(ref, held) for ref, held
                                               in new.items() if held in fresh))
            self._auths = new
            self.credentials.auths = {ref: held.auth for ref, held in new.items()}

    async def _refresh_auth(self, ref: upstream_auths.Ref, held: upstream_auths.Held) -> None:
        try:
            await held.auth.refresh()
        except Exception as exc:  # the format's own error (a chain that resolves nothing…)
            log.error("%s credentials (%s) could not be refreshed, will retry in %gs: %s",
                      ref[0], "default" if ref[1] == provider_keys.DEFAULT_SCOPE else ref[1],
                      AUTH_REFRESH_SECONDS, exc)

    async def _refresh_auths(self) -> None:
        """Renew tokens and chain credentials before they expire, off the request path."""
        while True:
            await asyncio.sleep(AUTH_REFRESH_SECONDS)
            await asyncio.gather(*(self._refresh_auth(ref, held)
                                   for ref, held in list(self._auths.items())))
