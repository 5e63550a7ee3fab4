"""Running the gateway under Hypercorn on uvloop."""

from __future__ import annotations

import logging
import os

from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets

from .app import create_app
from .config import Config
from .errors import StewardError

log = logging.getLogger("steward")


def hypercorn_config(config: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{config.server.host}:{config.server.port}"]
    hc.worker_class = "uvloop"
    hc.workers = config.server.workers
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.keep_alive_timeout = 75.0  # SDK clients keep connections open between calls
    hc.graceful_timeout = 30.0
    hc.application_path = "steward.app:create_app()"
    return hc


def listen(hc: HypercornConfig) -> Sockets:
    """Bind and listen before start-up, so a port in use fails at once with one line, and
    connections made while the gateway starts wait in the backlog instead of being refused."""
    try:
        sockets = hc.create_sockets()
    except OSError as exc:
        raise StewardError(f"cannot listen on {hc.bind[0]}: {exc.strerror or exc} "
                           "(is another Steward running? change server.port)") from None
    for sock in sockets.insecure_sockets:
        sock.listen(hc.backlog)
    return sockets


def serve(config: Config) -> None:
    """Block serving until SIGINT/SIGTERM."""
    hc = hypercorn_config(config)
    sockets = listen(hc)
    if config.server.workers == 1:
        import uvloop
        from hypercorn.asyncio.run import worker_serve
        from hypercorn.utils import wrap_app

        app = wrap_app(create_app(config), hc.wsgi_max_body_size, "asgi")
        uvloop.run(worker_serve(app, hc, sockets=sockets))
        return
    from hypercorn.run import run

    for sock in sockets.insecure_sockets:
        sock.close()
    os.environ["STEWARD_HOME"] = str(config.home)
    code = run(hc)
    if code != 0:
        raise StewardError(f"a worker exited with status {code}; see the log above")
