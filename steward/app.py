"""The ASGI application: proxy traffic goes straight to the raw handler; Quart owns the
lifespan and Steward's own routes under /_steward/.

Quart's routing and request objects cost ~0.2 ms per request, so they stay off the hot path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quart import Quart

from .config import Config, load_config
from .gateway import Gateway
from .home import require_home, resolve_home
from .proxy import Receive, Scope, Send

ADMIN_PREFIX = "/_steward/"


def create_app(config: Config | None = None) -> Any:
    """Also the Hypercorn application path for multi-worker runs (`steward.app:create_app()`),
    where each worker reads the home from $STEWARD_HOME."""
    if config is None:
        config = load_config(require_home(resolve_home(None)))
    gateway = Gateway(config)
    quart = Quart(__name__, root_path=str(Path(__file__).parent))
    quart.config["PROVIDE_AUTOMATIC_OPTIONS"] = False

    @quart.before_serving
    async def _start() -> None:
        await gateway.start()

    @quart.after_serving
    async def _stop() -> None:
        await gateway.stop()

    @quart.get(ADMIN_PREFIX + "health")
    async def _health() -> dict[str, Any]:
        served = gateway.proxy.served if gateway.proxy else 0
        return {"status": "ok", "requests_served": served}

    @quart.post(ADMIN_PREFIX + "flush")
    async def _flush() -> tuple[dict[str, Any], int]:
        """Wake the uploader now (used by `steward spool flush`)."""
        if gateway.uploader is None:
            return {"uploading": False}, 200
        gateway.uploader.wake.set()
        return {"uploading": True}, 202

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope["path"].startswith(ADMIN_PREFIX):
            assert gateway.proxy is not None, "lifespan startup has not run"
            await gateway.proxy(scope, receive, send)
        else:
            await quart(scope, receive, send)

    app.gateway = gateway  # type: ignore[attr-defined]
    return app
