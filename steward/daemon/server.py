"""Running the gateway under Hypercorn on uvloop."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal

from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets

from steward.config import Config
from steward.daemon.app import create_app
from steward.daemon.metrics import MULTIPROCESS_DIR
from steward.daemon.supervisor import STOP_WORKER, InProcessReporter, Reporter, Supervisor
from steward.errors import StewardError

log = logging.getLogger("steward")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hypercorn_config(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    server = config.server
    hc.bind = [_address(server.host, server.port)]
    if server.admin_port:
        hc.bind.append(_address(server.admin_host, server.admin_port))
    hc.worker_class = "uvloop"
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.graceful_timeout = config.server.drain_timeout
    limits = config.limits
    # Idle connections, and callers trickling their request headers, are closed after this;
    # a request body that stops arriving gets 408 from the proxy.
    hc.keep_alive_timeout = limits.client_timeout
    # Let oversized headers reach Steward, which answers 431 in the provider's shape.
    hc.h11_max_incomplete_size = limits.max_header_bytes + limits.max_url_bytes + 16 * 1024
    return hc


def listen(hc: HypercornConfig) -> Sockets:
    """Bind and listen before start-up, so a port in use fails at once with one line, and
    connections made while the gateway starts wait in the backlog instead of being refused."""
    try:
        sockets = hc.create_sockets()
    except OSError as exc:
        raise StewardError(f"cannot listen on {' and '.join(hc.bind)}: {exc.strerror or exc} "
                           "(is another Steward running? change server.port or "
                           "server.admin_port)") from None
    for sock in sockets.insecure_sockets:
        sock.listen(hc.backlog)
    return sockets


async def serve_worker(config: Config, hc: HypercornConfig, sockets: Sockets,
                       reporter: Reporter) -> None:
    """Serve until SIGTERM (and, alone in the main process, SIGINT): drain gracefully, and a
    second signal exits at once. SIGHUP reloads."""
    from hypercorn.asyncio.run import worker_serve
    from hypercorn.utils import wrap_app

    asgi = create_app(config)
    gateway = asgi.gateway
    gateway.reporter = reporter
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def on_stop(reason: str) -> None:
        if stopping.is_set():
            log.warning("second %s: exiting now without draining", reason)
            os._exit(1)
        reporter.stop()  # STOPPING=1 the moment the signal arrives, before the drain
        gateway.draining()
        log.info("%s: no new connections; draining in-flight requests for up to %gs",
                 reason, config.server.drain_timeout)
        stopping.set()

    if isinstance(reporter, InProcessReporter):
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_stop, sig.name)
    else:
        # A worker stops when the main process says so (STOP_WORKER), never on a SIGTERM or
        # SIGINT sent to the whole group (systemd's KillMode=control-group, Ctrl-C, timeout):
        # worker_main ignores those, and the main process turns them into one orderly drain.
        # An orphan drains too.
        loop.add_signal_handler(STOP_WORKER, on_stop, "stop from the main process")
        parent = os.getppid()

        async def watch_parent() -> None:
            while os.getppid() == parent:
                await asyncio.sleep(1.0)
            log.error("the main process (pid %d) is gone: draining and exiting", parent)
            on_stop("orphaned")

        orphan_watch = asyncio.ensure_future(watch_parent())
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(gateway.reload()))
    try:
        await worker_serve(wrap_app(asgi, hc.wsgi_max_body_size, "asgi"), hc, sockets=sockets,
                           shutdown_trigger=stopping.wait)
    finally:
        if not isinstance(reporter, InProcessReporter):
            orphan_watch.cancel()


def serve(config: Config) -> None:
    """Block serving until SIGINT/SIGTERM. One worker serves in this process; several are
    child processes of a supervisor that alone speaks to systemd."""
    hc = hypercorn_config(config)
    sockets = listen(hc)
    if config.server.workers == 1:
        import uvloop

        uvloop.run(serve_worker(config, hc, sockets, InProcessReporter()))
        return
    # Metrics shared by the workers (they start after this, so they all see it); a new run
    # starts from zero, as a restarted single process does.
    shared = config.home / "metrics"
    shutil.rmtree(shared, ignore_errors=True)
    shared.mkdir(mode=0o700)
    os.environ[MULTIPROCESS_DIR] = str(shared)
    try:
        code = Supervisor(config, sockets).run()
    finally:
        for sock in sockets.insecure_sockets:
            sock.close()
    if code != 0:
        raise StewardError(f"Steward stopped with status {code}: a worker failed; see the log "
                           "lines above")
