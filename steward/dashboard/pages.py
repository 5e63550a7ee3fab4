"""The dashboard's HTML pages: small server-rendered shells whose JavaScript reads the JSON API.

Every number on a page comes from `/api/…` (steward/dashboard/api.py), so what a person sees
and what a script reads cannot disagree. Nothing is loaded from outside Steward: the chart
library is vendored under static/vendor/, and the Content-Security-Policy below keeps it that
way, and keeps prompt text (attacker-controlled) from ever running as script.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from quart import Blueprint, Response, render_template

from steward import __version__
from steward.records.record import FIELDS

UPLOT = "vendor/uplot-1.6.32"
STATIC = Path(__file__).parent / "static"

blueprint = Blueprint("dashboard_pages", __name__, static_folder="static",
                      static_url_path="/static", template_folder="templates")

# Same origin only; uPlot sizes its canvas through element styles, hence 'unsafe-inline' for
# styles (never for scripts).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Shells are tiny; no-store everywhere means a request's page is never kept by the browser.
    "Cache-Control": "no-store",
}


async def _page(template: str, page: str, status: int = 200, **context: Any) -> Response:
    html = await render_template(f"dashboard/{template}", page=page, version=__version__,
                                 uplot=UPLOT, **context)
    return Response(html, status=status, headers=SECURITY_HEADERS,
                    content_type="text/html; charset=utf-8")


@blueprint.get("/")
async def overview() -> Response:
    return await _page("overview.html", "overview", title="Overview")


@blueprint.get("/requests")
async def requests() -> Response:
    return await _page("requests.html", "requests", title="Requests")


@blueprint.get("/requests/<request_id>")
async def one_request(request_id: str) -> Response:
    return await _page("request.html", "request", title="Request", request_id=request_id,
                       fields=",".join(FIELDS))


@blueprint.get("/health")
async def health() -> Response:
    return await _page("health.html", "health", title="Health")


# The login page's stylesheet and icon, inlined (read once, at start-up): everything under
# /static/ needs the token the visitor has not given yet.
LOGIN_ASSETS = {"css": (STATIC / "dashboard.css").read_text(),
                "icon": "data:image/svg+xml," + quote((STATIC / "favicon.svg").read_text())}


async def login_page(error: str | None = None, status: int = 200) -> Response:
    """The login form; POST /login (auth.py) renders it again with `error` and 401."""
    return await _page("login.html", "login", status=status, title="Sign in", error=error,
                       **LOGIN_ASSETS)


@blueprint.get("/login")
async def login() -> Response:
    return await login_page()
