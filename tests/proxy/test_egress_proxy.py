"""Egress through an HTTP proxy: HTTP_PROXY / NO_PROXY are honoured, read once per host.

The proxy is a real forward proxy on loopback (absolute-form request lines, as aiohttp sends
them to a proxy); it forwards to the fake provider and notes what passed through it.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import openai
import pytest

from tests.support.daemon import Daemon, init_home, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.loopback import QuietHandler, serving


class ForwardProxy(QuietHandler):
    # method, absolute URL, Proxy-Authorization
    seen: ClassVar[list[tuple[str, str, str | None]]] = []

    def do_POST(self) -> None:
        target = urlsplit(self.path)
        assert target.scheme == "http" and target.hostname, self.path
        ForwardProxy.seen.append((self.command, self.path,
                                  self.headers.get("Proxy-Authorization")))
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("proxy-authorization", "proxy-connection", "host")}
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        conn.request(self.command, target.path + (f"?{target.query}" if target.query else ""),
                     body, headers)
        answer = conn.getresponse()
        self.send(answer.status, answer.read(), answer.getheader("Content-Type") or "")
        conn.close()


@pytest.fixture
def proxy() -> Iterator[str]:
    ForwardProxy.seen = []
    with serving(ForwardProxy) as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def chat(daemon: Daemon, key: str) -> str:
    client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk-caller",
                           default_headers={"X-Majordomo-Key": key}, max_retries=0)
    return client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content


@pytest.mark.parametrize("bypass", [False, True], ids=["via-proxy", "no-proxy"])
def test_upstream_calls_use_the_environment_proxy(tmp_path: Path, upstream: FakeUpstream,
                                                   proxy: str, bypass: bool) -> None:
    key = init_home(tmp_path)
    with_auth = proxy.replace("://", "://u:pw@")
    no_proxy = "127.0.0.1" if bypass else ""
    # Both spellings, the same: urllib lets an empty lower-case one cancel the other.
    # A netrc naming the upstream host is for the operator's own tools: nothing from it is
    # added to what Steward forwards (aiohttp's trust_env would add it, and then refuse the
    # caller's own Authorization header beside it).
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-secret\n")
    netrc.chmod(0o600)
    env = {**provider_env(upstream.url), "HTTP_PROXY": with_auth, "http_proxy": with_auth,
           "NO_PROXY": no_proxy, "no_proxy": no_proxy, "NETRC": str(netrc)}
    daemon = Daemon(tmp_path, env=env).start()
    try:
        for _ in range(3):
            assert chat(daemon, key)
    finally:
        daemon.stop()
    assert upstream.last().headers.get("Authorization") == "Bearer sk-caller"
    if bypass:
        assert ForwardProxy.seen == []
        return
    assert [(m, urlsplit(u).path) for m, u, _ in ForwardProxy.seen] == [
        ("POST", "/v1/chat/completions")] * 3
    assert {auth for _, _, auth in ForwardProxy.seen} == {"Basic dTpwdw=="}  # u:pw
