"""The upstream-auth hook: a format that signs each request (as SigV4 does) or mints tokens (as
Vertex's OAuth does) gets its authenticator per provider and credential scope, refreshed at
load and in the background, applied over the exact URL and body bytes sent, and the caller's
own signing headers never go upstream.

The signing format is defined here alone and reaches the daemon through a `steward.formats`
entry point, as in test_toy_format.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from steward.config import ProviderConfig
from steward.errors import GatewayError
from steward.providers.base import Route, StreamReader, UpstreamAuth, WireFormat, scoped
from steward.providers.usage import Reading, Usage
from steward.proxy.credentials import unsigned_headers
from steward.secrets.provider_keys import CredentialIndex
from steward.secrets.upstream_auths import Broken, build
from tests.support.daemon import Daemon, cli, init_home
from tests.support.loopback import QuietHandler, installed_format, serving
from tests.support.waiting import wait_for

STORED_SECRET = "toysig-stored-secret-0001"
PER_KEY_SECRET = "toysig-per-key-secret-0002"
CHAIN_SECRET = "toysig-chain-secret-0003"


def signature(secret: str, method: str, url: str, body: bytes, token: str) -> str:
    message = f"{method}\n{url}\n{hashlib.sha256(body).hexdigest()}\n{token}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class ToySigner:
    """Signs with a secret; needs a token that only `refresh` mints (as an OAuth token)."""

    def __init__(self, secret: str | None):
        self.secret = secret
        self.minted = 0

    def apply(self, method: str, url: str, headers: list[tuple[str, str]],
              body: bytes | bytearray) -> list[tuple[str, str]]:
        if not self.minted or self.secret is None:
            raise GatewayError(503, "toysig: no token minted yet")
        token = str(self.minted)
        return [*headers, ("x-toysig-token", token),
                ("x-toysig-signature", signature(self.secret, method, url, bytes(body), token))]

    async def refresh(self) -> None:
        if self.secret is None:  # the "default chain": the environment, read off the loop
            self.secret = await asyncio.to_thread(os.environ.get, "TOYSIG_SECRET")
        self.minted += 1


class _Reader:
    def on_event(self, event: bytes, data: bytes, reading: Reading) -> None:
        pass

    def finish(self, reading: Reading) -> None:
        pass


class ToySigFormat(WireFormat):
    """`POST /toysig/v1/say`, signed; the caller's `Authorization` and `X-Toysig-Date` were
    meant for Steward's host and are dropped."""

    name = "toysig"
    credential_headers = (b"x-toysig-key",)
    caller_auth_headers = frozenset({b"authorization", b"x-toysig-date"})
    default_base_url = "http://127.0.0.1:9"
    paths_help = "Toysig: /toysig/v1/say"
    detection_rank = 6

    def owns(self, path: str) -> bool:
        return path.startswith("/toysig/")

    def classify(self, method: str, path: str) -> Route:
        if method == "POST" and path == "/toysig/v1/say":
            return Route(endpoint="say", upstream_path=path)
        return scoped("admin", path)

    def credential_header(self, api_key: str) -> tuple[str, str]:
        raise AssertionError("a signing format never injects a static key")

    def upstream_auth(self, provider: ProviderConfig, stored: str | None) -> UpstreamAuth:
        if stored is None:
            return ToySigner(None)
        try:
            return ToySigner(json.loads(stored)["secret"])
        except (ValueError, KeyError, TypeError):
            raise ValueError('expected {"secret": "…"}') from None

    def credential_from_text(self, text: str) -> tuple[str, str]:
        return text.strip(), text.strip()[-6:-2]

    def error_body(self, status: int, message: str) -> bytes:
        return json.dumps({"toysig_error": message}).encode()

    def read_json(self, obj: Any, reading: Reading) -> None:
        reading.usage = Usage(input_tokens=obj.get("in"), output_tokens=obj.get("out"))

    def stream_reader(self, route: Route) -> StreamReader:
        return _Reader()


FORMAT = ToySigFormat()


def test_signing_formats_drop_the_callers_signature_and_need_a_credential() -> None:
    headers = [("authorization", "AWS4 caller"), ("x-toysig-date", "now"),
               ("x-toysig-key", "k"), ("content-type", "application/json")]
    assert unsigned_headers(FORMAT, "toysig", headers, ToySigner("s")) == [
        ("content-type", "application/json")]
    with pytest.raises(GatewayError) as refused:
        unsigned_headers(FORMAT, "toysig", headers, None)
    assert refused.value.status == 401 and "steward providers set toysig" in refused.value.message


def test_authenticators_are_built_per_scope_and_kept_while_their_inputs_hold(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("steward.providers.find", lambda name: FORMAT if name == "toysig"
                        else None)
    stored = ProviderConfig("toysig", "http://127.0.0.1:9")
    chain = ProviderConfig("toysig", "http://127.0.0.1:9", credentials="default")
    keys = {("sig", "*"): json.dumps({"secret": "a"}), ("sig", "key_1"): "not json",
            ("other", "*"): "plain-key", ("chain", "*"): json.dumps({"secret": "ignored"})}
    first = build({"sig": stored, "chain": chain, "other": ProviderConfig("openai", "http://x")},
                  keys, {})
    assert set(first) == {("sig", "*"), ("sig", "key_1"), ("chain", "*")}
    assert first[("chain", "*")].stored is None  # "default" serves the provider-wide scope
    broken = first[("sig", "key_1")].auth
    assert isinstance(broken, Broken)
    assert "steward providers set sig" in broken.message and "not json" not in broken.message

    again = build({"sig": stored, "chain": chain}, {**keys, ("sig", "key_1"): "{}"}, first)
    assert again[("sig", "*")] is first[("sig", "*")]  # unchanged: its token is kept
    assert again[("sig", "key_1")] is not first[("sig", "key_1")]

    index = CredentialIndex(keys)
    index.auths = {ref: held.auth for ref, held in again.items()}
    assert index.auth("sig", "key_1", 1.0) is again[("sig", "key_1")].auth
    assert index.auth("sig", "key_9", 2.0) is again[("sig", "*")].auth
    assert index.auth("nothing", "key_1", 3.0) is None


class _SigningUpstream(QuietHandler):
    seen: ClassVar[list[dict[str, Any]]] = []
    base: ClassVar[str] = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        url = self.base + self.path
        token = self.headers.get("x-toysig-token", "")
        given = self.headers.get("x-toysig-signature", "")
        signer = next((name for name, secret in (("stored", STORED_SECRET),
                                                 ("per-key", PER_KEY_SECRET),
                                                 ("chain", CHAIN_SECRET))
                       if hmac.compare_digest(given, signature(secret, "POST", url, body,
                                                               token))), None)
        headers = {k.lower(): v for k, v in self.headers.items()}
        _SigningUpstream.seen.append({"headers": headers, "signer": signer, "token": token})
        if signer is None:
            self.send(403, b'{"toysig_error": "signature does not match"}')
            return
        self.send(200, json.dumps({"said": signer, "in": 2, "out": 3}).encode())



@pytest.fixture
def signing_upstream() -> Iterator[str]:
    _SigningUpstream.seen = []
    with serving(_SigningUpstream) as server:
        _SigningUpstream.base = f"http://127.0.0.1:{server.server_address[1]}"
        yield _SigningUpstream.base


def plugin_env(tmp_path: Path, upstream: str) -> dict[str, str]:
    env = {**installed_format(tmp_path / "site", "toysig", "tests.proxy.test_upstream_auth"),
           "TOYSIG_SECRET": CHAIN_SECRET,
           "STEWARD_AUTH_REFRESH_SECONDS": "0.2"}
    for name, credentials in (("toysig", "stored"), ("toychain", "default"),
                              ("toynone", "stored")):
        prefix = f"STEWARD_PROVIDERS__{name.upper()}__"
        env |= {prefix + "FORMAT": "toysig", prefix + "BASE_URL": upstream,
                prefix + "CREDENTIALS": credentials}
    return env


def test_the_daemon_signs_each_request_with_the_credential_of_its_scope(
        tmp_path: Path, signing_upstream: str) -> None:
    home = tmp_path / "home"
    key = init_home(home)
    env = plugin_env(tmp_path, signing_upstream)
    other = cli("keys", "add", "per-key", home=home, env=env).stdout
    other_key = next(w for w in other.split() if w.startswith("mdm_sk_"))
    broken_key = next(w for w in cli("keys", "add", "broken2", home=home, env=env).stdout.split()
                      if w.startswith("mdm_sk_"))
    for args, value in ((("toysig",), {"secret": STORED_SECRET}),
                        (("toysig", "--for", "per-key"), {"secret": PER_KEY_SECRET})):
        cli("providers", "set", *args, "--api-key-stdin", home=home, env=env,
            input=json.dumps(value, separators=(",", ":")) + "\n")
    cli("providers", "set", "toysig", "--for", "broken2", "--api-key-stdin", home=home, env=env,
        input="not-a-json-document\n")
    daemon = Daemon(home, env=env).start()
    try:
        with httpx.Client(base_url=daemon.url, timeout=10) as client:
            def say(gateway_key: str, provider: str | None = None) -> httpx.Response:
                headers = {"X-Majordomo-Key": gateway_key, "Authorization": "AWS4 caller-sig",
                           "X-Toysig-Date": "20260101T000000Z"}
                if provider:
                    headers["X-Majordomo-Provider"] = provider
                return client.post("/toysig/v1/say?q=1", content=b'{"text": "hi"}',
                                   headers=headers)

            stored = say(key)
            assert stored.status_code == 200, stored.text
            assert stored.json()["said"] == "stored"
            first = _SigningUpstream.seen[-1]
            # Minted at load, before the first request; the caller's signature stayed behind.
            assert first["token"] != ""
            assert "authorization" not in first["headers"]
            assert "x-toysig-date" not in first["headers"]
            assert "x-majordomo-key" not in first["headers"]

            assert say(other_key).json()["said"] == "per-key"
            assert say(key, "toychain").json()["said"] == "chain"

            # Renewed in the background: later requests carry newer tokens.
            wait_for(lambda: say(key).status_code == 200
                     and int(_SigningUpstream.seen[-1]["token"]) > int(first["token"]), 10,
                     "a token refreshed by the background task")

            unusable = say(broken_key)
            assert unusable.status_code == 502
            message = unusable.json()["toysig_error"]
            assert "stored toysig credentials cannot be used" in message
            assert "steward providers set toysig" in message

            missing = say(key, "toynone")
            assert missing.status_code == 401
            assert "steward providers set toynone" in missing.json()["toysig_error"]
        records = {r["id"]: r for r in daemon.records()}
        record = records[stored.headers["x-majordomo-request-id"]]
        assert (record["provider"], record["status"], record["input_tokens"]) == (
            "toysig", 200, 2)
        assert records[unusable.headers["x-majordomo-request-id"]]["status"] == 502
        spool = "".join(p.read_text() for p in (home / "spool").glob("*.ndjson"))
        for secret in (STORED_SECRET, PER_KEY_SECRET, CHAIN_SECRET):
            assert secret not in spool and secret not in daemon.log()
    finally:
        daemon.stop()
