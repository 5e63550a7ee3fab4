"""The dashboard on the admin listener: pages (pages.py), their JSON API (api.py), the admin
token guard (auth.py), fed by the indexer (indexer.py) that keeps the store (store.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steward.daemon.gateway import Gateway


def install(quart_app: Any, gateway: Gateway) -> None:
    """Register the API and the token guard on the admin app (pages register here too)."""
    from steward.dashboard import api, auth, pages
    from steward.dashboard.context import Dashboard

    dashboard = Dashboard(gateway)
    quart_app.extensions["steward_dashboard"] = dashboard
    auth.install(quart_app, dashboard)
    quart_app.register_blueprint(api.blueprint)
    quart_app.register_blueprint(pages.blueprint)
