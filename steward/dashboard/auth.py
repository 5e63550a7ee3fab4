"""The admin token guard: off loopback (or with [dashboard] require_token) every dashboard
page, /api/ and /static/ request needs an admin token, as a bearer token or through the
session cookie that `POST /login` sets.

The cookie holds no token: it is `<token name>.<issued at>.<HMAC>` under a random key kept in
the dashboard store, over the token's hash too, so it stops working when the token is revoked
and after SESSION_SECONDS. /healthz, /readyz, /metrics and /flush never ask for a token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from quart import Quart, Response, redirect, request

from steward.dashboard import pages, tokens
from steward.dashboard.context import Dashboard

COOKIE = "steward_session"
SESSION_SECONDS = 12 * 3600
OPEN = frozenset({"/healthz", "/readyz", "/metrics", "/flush", "/login"})


def error(status: int, message: str, kind: str) -> Response:
    response = Response(json.dumps({"error": {"message": message, "type": kind}}),
                        status=status, content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def _sign(key: bytes, name: str, issued: int, token_hash: str) -> str:
    return hmac.new(key, f"{name}.{issued}.{token_hash}".encode(), hashlib.sha256).hexdigest()


def session_value(dashboard: Dashboard, name: str, now: float) -> str:
    issued = int(now)
    token_hash = dashboard.admin_tokens()[name]
    return f"{name}.{issued}.{_sign(dashboard.session_key(), name, issued, token_hash)}"


def check_session(dashboard: Dashboard, value: str, now: float) -> str | None:
    """The token name a cookie stands for, while that token is in force and the cookie new."""
    parts = value.split(".")  # token names may hold dots; the last two parts are ours
    if len(parts) < 3:
        return None
    name, issued_text, signature = ".".join(parts[:-2]), parts[-2], parts[-1]
    if not issued_text.isdigit() or not 0 <= now - int(issued_text) < SESSION_SECONDS:
        return None
    token_hash = dashboard.admin_tokens().get(name)
    if token_hash is None:
        return None
    expected = _sign(dashboard.session_key(), name, int(issued_text), token_hash)
    return name if hmac.compare_digest(expected, signature) else None


def authenticate(dashboard: Dashboard, authorization: str, cookie: str | None) -> str | None:
    """Blocking (may reload the tokens): the token name, or None."""
    scheme, _, credential = authorization.partition(" ")
    if scheme.lower() == "bearer" and credential.strip():
        return tokens.match(dashboard.admin_tokens(), credential.strip())
    if cookie:
        return check_session(dashboard, cookie, time.time())
    return None


def install(app: Quart, dashboard: Dashboard) -> None:
    @app.before_request
    async def _guard() -> Any:
        path = request.path
        if path in OPEN or not dashboard.requires_token:
            return None
        name = await dashboard.run(authenticate, dashboard,
                                   request.headers.get("Authorization", ""),
                                   request.cookies.get(COOKIE))
        if name is not None:
            return None
        if path.startswith("/api/"):
            return error(401, "an admin token is required: send `Authorization: Bearer "
                         "<token>` (create one with `steward admin token create NAME`)",
                         "authentication_error")
        response = redirect("/login", 303)
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.post("/login")
    async def _login() -> Any:
        form = await request.form
        presented = (form.get("token") or "").strip()
        name = await dashboard.run(lambda: tokens.match(dashboard.admin_tokens(), presented)
                                   if presented else None)
        if name is None:
            return await pages.login_page("That token is not valid (unknown or revoked).",
                                          status=401)
        value = await dashboard.run(session_value, dashboard, name, time.time())
        response = redirect("/", 303)
        response.set_cookie(COOKIE, value, max_age=SESSION_SECONDS, path="/", httponly=True,
                            samesite="Strict")
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.route("/logout", methods=["GET", "POST"])
    async def _logout() -> Any:
        response = redirect("/login", 303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="Strict")
        response.headers["Cache-Control"] = "no-store"
        return response
