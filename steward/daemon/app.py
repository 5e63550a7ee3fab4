"""The ASGI application: proxy traffic goes straight to the raw handler; Quart owns the
lifespan and Steward's own routes (/healthz, /readyz, /metrics) on the admin port.

Quart's routing and request objects cost ~0.2 ms per request, so they stay off the hot path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from quart import Quart

from steward.config import Config, load_config
from steward.daemon.gateway import Gateway
from steward.dashboard import install as install_dashboard
from steward.home import require_home, resolve_home
from steward.proxy.pipeline import Receive, Scope, Send


def create_app(config: Config | None = None) -> Any:
    """The ASGI app for one worker; without a config, the home's ($STEWARD_HOME or default)."""
    if config is None:
        config = load_config(require_home(resolve_home(None)))
    gateway = Gateway(config)
    # No app-wide static folder: /static/ belongs to the dashboard's pages (their blueprint).
    quart = Quart(__name__, root_path=str(Path(__file__).parent), static_folder=None)
    quart.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @quart.before_serving
    async def _start() -> None:
        await gateway.start()

    @quart.after_serving
    async def _stop() -> None:
        await gateway.stop()

    @quart.get("/healthz")
    async def _healthz() -> dict[str, Any]:
        return {"status": "alive"}

    @quart.get("/readyz")
    async def _readyz() -> tuple[dict[str, Any], int]:
        ready, detail = gateway.readiness()
        return detail, 200 if ready else 503

    @quart.get("/metrics")
    async def _metrics() -> tuple[bytes, int, dict[str, str]]:
        return gateway.metrics.render(), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    @quart.post("/flush")
    async def _flush() -> tuple[dict[str, Any], int]:
        """Wake the uploader now (used by `steward spool flush`)."""
        if gateway.uploader is None:
            return {"uploading": False}, 200
        gateway.uploader.wake.set()
        return {"uploading": True}, 202

    install_dashboard(quart, gateway)
    admin_port = config.server.admin_port

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        """The admin port gets Steward's own routes; every other request is proxy traffic."""
        if scope["type"] == "http" and (scope.get("server") or (None, None))[1] != admin_port:
            assert gateway.proxy is not None, "lifespan startup has not run"
            await gateway.proxy(scope, receive, send)
        else:
            await quart(scope, receive, send)

    app.gateway = gateway  # type: ignore[attr-defined]
    return app
