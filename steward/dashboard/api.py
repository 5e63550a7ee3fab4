"""The dashboard's read-only JSON API (`/api/…`, documented in the README's Dashboard section).

Every answer carries `Cache-Control: no-store` (bodies must never sit in a browser's cache);
errors are `{"error": {"message", "type"}}`. Queries run in threads, off the event loop that
proxy traffic shares.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from quart import Blueprint, Response, current_app, request

from steward.dashboard import bodies_view, queries
from steward.dashboard.auth import error
from steward.dashboard.context import Dashboard

blueprint = Blueprint("dashboard_api", __name__, url_prefix="/api")


def _dashboard() -> Dashboard:
    return current_app.extensions["steward_dashboard"]


def _ok(body: Any) -> Any:
    return body


@blueprint.after_request
async def _no_store(response: Response) -> Response:
    """Every answer: bodies and figures must never sit in a browser's cache."""
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.errorhandler(queries.BadRequest)
async def _bad_request(exc: queries.BadRequest) -> Response:
    return error(400, str(exc), "invalid_request_error")


@blueprint.errorhandler(sqlite3.Error)
async def _store_error(exc: sqlite3.Error) -> Response:
    return error(503, f"the dashboard store cannot be read: {exc}", "api_error")


@blueprint.get("/overview")
async def overview() -> Any:
    d = _dashboard()
    range_name = request.args.get("range", "24h")
    group = request.args.get("group", "model")
    return _ok(await d.run(lambda: queries.overview(d.store(), range_name, group,
                                                    d.key_names())))


@blueprint.get("/requests")
async def requests() -> Any:
    d = _dashboard()
    params = dict(request.args)
    return _ok(await d.run(lambda: queries.requests(d.store(), params, d.key_names())))


@blueprint.get("/requests/<request_id>")
async def one_request(request_id: str) -> Any:
    d = _dashboard()
    found = await d.run(lambda: queries.record(d.store(), request_id, d.key_names()))
    if found is None:
        return error(404, f"no request {request_id} in the dashboard's store (it keeps "
                     "31 days of records)", "not_found_error")
    return _ok({"record": found})


@blueprint.get("/requests/<request_id>/body")
async def body(request_id: str) -> Any:
    d = _dashboard()
    found = await d.run(lambda: queries.record(d.store(), request_id, {}))
    if found is None:
        return error(404, f"no request {request_id} in the dashboard's store",
                     "not_found_error")
    # The store is opened on first use, in the worker thread (a bucket's client takes a while).
    return _ok(await d.run(lambda: bodies_view.view(d.home, d.gateway.body_store(), found)))


@blueprint.get("/filters")
async def filters() -> Any:
    d = _dashboard()
    return _ok(await d.run(lambda: queries.filters(d.store(), d.key_names())))


@blueprint.get("/health")
async def health() -> Any:
    d = _dashboard()
    return _ok(await d.run(_health, d))


def _health(d: Dashboard) -> dict[str, Any]:
    gateway = d.gateway
    ready, detail = gateway.readiness()
    upload = detail["upload"]
    spool = detail["spool"]
    bodies = detail["bodies"]
    pricer = gateway.proxy.pricer if gateway.proxy is not None else None
    prices = gateway.home.prices
    indexer = gateway.dashboard_indexer.status if gateway.dashboard_indexer else {}
    return {
        "ready": ready, "degraded": detail["degraded"],
        "spool": {"upload_enabled": upload.get("enabled", True),
                  "backlog_bytes": upload.get("backlog_bytes"),
                  "backlog_over_limit": upload.get("backlog_over_limit", False),
                  "last_upload_at": upload.get("last_success_at"),
                  "last_upload_attempt_at": upload.get("last_attempt_at"),
                  "last_upload_status": upload.get("last_status"),
                  "upload_error": upload.get("last_error"),
                  "upload_failures": upload.get("failures", 0),
                  "held_records": spool["held_records"], "lost_records": spool["lost_records"],
                  "write_errors": spool["write_errors"], "spool_error": spool["last_error"]},
        "bodies": {"enabled": bodies.get("enabled", True),
                   "destination": gateway.config.bodies_url() if bodies.get("enabled", True)
                   else None,
                   "queued": bodies.get("queued"), "queued_bytes": bodies.get("queued_bytes"),
                   "pending": bodies.get("pending"), "held": bodies.get("held"),
                   "failures": bodies.get("failures"), "failing": bodies.get("failing"),
                   "bucket_error": bodies.get("last_error"), "lost": bodies.get("lost"),
                   "refusing_low_space": bodies.get("refusing")},
        "pricing": {"version": pricer.version if pricer else None,
                    "source": "downloaded" if prices.exists() else "bundled",
                    "age_seconds": round(time.time() - prices.stat().st_mtime)
                    if prices.exists() else None},
        "workers": {"configured": gateway.config.server.workers, "pid": os.getpid(),
                    "requests_served": gateway.proxy.served if gateway.proxy else 0},
        "budgets": [{"scope": scope, "limit": f"{limit:.2f}", "spent": f"{spent:.6f}",
                     "remaining": f"{remaining:.6f}"}
                    for scope, (limit, spent, remaining)
                    in sorted(gateway.governor.ledger.figures().items())],
        "dashboard": {"indexing_here": indexer.get("lock_held", False),
                      "indexed": indexer.get("indexed", 0),
                      "last_indexed_at": indexer.get("last_indexed_at"),
                      "error": indexer.get("last_error")},
        "database": detail["database"],
    }
