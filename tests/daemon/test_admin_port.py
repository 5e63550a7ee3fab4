"""The admin and public ports are split both ways: Steward's own routes are never served to
callers of the gateway, and proxy traffic never goes upstream from the admin port."""

from __future__ import annotations

import httpx

from tests.support.daemon import Daemon
from tests.support.fake_upstream import FakeUpstream

ADMIN_ROUTES = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics"),
                ("POST", "/flush")]
ADMIN_MARKS = ('"alive"', '"ready"', "steward_requests_total", '"uploading"')


def test_admin_routes_are_not_on_the_public_port(gateway: tuple[Daemon, str],
                                                 upstream: FakeUpstream) -> None:
    daemon, key = gateway
    for method, path in ADMIN_ROUTES:  # they answer on the admin port
        assert httpx.request(method, daemon.admin_url + path, timeout=10).status_code in (
            200, 202), path
    before = len(upstream.requests)
    for headers in ({}, {"X-Majordomo-Key": key}):
        for method, path in ADMIN_ROUTES:
            got = httpx.request(method, daemon.url + path, headers=headers, timeout=10)
            assert got.status_code in (401, 403, 404), (path, got.status_code, got.text)
            assert "error" in got.json(), got.text  # the proxy's refusal, in a provider shape
            assert not any(mark in got.text for mark in ADMIN_MARKS), (path, got.text)
    assert len(upstream.requests) == before


def test_proxy_traffic_is_not_served_on_the_admin_port(gateway: tuple[Daemon, str],
                                                       upstream: FakeUpstream, tag: str) -> None:
    daemon, key = gateway
    headers = {"X-Majordomo-Key": key, "Authorization": "Bearer sk-caller",
               "X-Majordomo-Test": tag}
    chat = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    # The same request the public port serves...
    assert httpx.post(daemon.url + "/v1/chat/completions", json=chat, headers=headers,
                      timeout=30).status_code == 200
    assert len([r for r in daemon.records() if r["tags"].get("test") == tag]) == 1
    before = len(upstream.requests)
    # ...is not served on the admin port, for any proxied path.
    for method, path, body in (("POST", "/v1/chat/completions", chat),
                               ("GET", "/v1/models", None),
                               ("POST", "/v1/messages", {"model": "claude-sonnet-4-5"}),
                               ("POST", "/v1beta/models/gemini-2.5-flash:generateContent", {})):
        got = httpx.request(method, daemon.admin_url + path, json=body, headers=headers,
                            timeout=10)
        assert got.status_code in (404, 405), (path, got.status_code)
        assert "x-majordomo-request-id" not in got.headers
    assert len(upstream.requests) == before
    assert len([r for r in daemon.records() if r["tags"].get("test") == tag]) == 1
