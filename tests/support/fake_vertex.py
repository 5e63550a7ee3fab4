"""Loopback Google: an OAuth token endpoint and a Vertex AI that trusts only its tokens.

`FakeGoogleOAuth` verifies what Google verifies of a service account's JWT-bearer grant: the
RS256 signature against the public half of a key it knows (a test RSA key), the issuer, the
cloud-platform scope, the audience and the times. It answers with a random access token that
lasts `expires_in` seconds; `hold()` makes it keep token requests waiting until `release()`.
`FakeVertex` accepts only a token that endpoint issued and that has not expired, and answers
Gemini (`publishers/google`) and Claude (`publishers/anthropic`) calls as Vertex does.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from tests.support.fake_upstream import FakeUpstream, Seen
from tests.support.loopback import CatchAllFake, LoopbackServer

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
VERTEX_USAGE = {"promptTokenCount": 50, "candidatesTokenCount": 20, "totalTokenCount": 85,
                "cachedContentTokenCount": 10, "thoughtsTokenCount": 15,
                "trafficType": "ON_DEMAND"}


def service_account_key(token_uri: str, project: str = "steward-test") -> dict[str, str]:
    """A service-account key file's contents with a freshly generated RSA key."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": project,
            "private_key_id": secrets.token_hex(20), "private_key": pem,
            "client_email": f"steward@{project}.iam.gserviceaccount.com",
            "client_id": "1" + "0" * 20, "token_uri": token_uri,
            "auth_uri": "https://accounts.google.com/o/oauth2/auth"}


def public_pem(key: dict[str, str]) -> str:
    private = serialization.load_pem_private_key(key["private_key"].encode(), password=None)
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


@dataclass
class Issued:
    token: str
    client_email: str
    expires_at: float


@dataclass
class FakeGoogleOAuth:
    expires_in: int = 3600
    port: int = 0
    accounts: dict[str, str] = field(default_factory=dict)  # client_email -> public PEM
    issued: list[Issued] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    waiting: int = 0  # token requests held by hold()
    _open: threading.Event = field(default_factory=threading.Event)
    _server: LoopbackServer | None = None

    @property
    def token_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def start(self) -> FakeGoogleOAuth:
        self._open.set()
        app = web.Application()
        app.router.add_post("/token", self.token)
        self._server = LoopbackServer(app, self.port, "fake-google-oauth")
        self.port = self._server.start()
        return self

    def stop(self) -> None:
        self._open.set()
        if self._server is not None:
            self._server.stop()

    def new_key(self) -> dict[str, str]:
        key = service_account_key(self.token_uri)
        self.accounts[key["client_email"]] = public_pem(key)
        return key

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def valid(self, token: str) -> bool:
        now = time.time()
        return any(i.token == token and now < i.expires_at for i in self.issued)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not self._open.is_set():
            self.waiting += 1
            await asyncio.to_thread(self._open.wait)
            self.waiting -= 1
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self._refuse("unsupported_grant_type", "Invalid grant_type")
        assertion = str(form.get("assertion", ""))
        try:
            unverified = jwt.decode(assertion, verify=False)
            claims = jwt.decode(assertion, certs=self.accounts[unverified["iss"]],
                                audience=GOOGLE_TOKEN_AUDIENCE)
        except (ValueError, KeyError) as exc:
            return self._refuse("invalid_grant", f"Invalid JWT Signature. ({exc})")
        if CLOUD_PLATFORM not in str(claims.get("scope", "")).split():
            return self._refuse("invalid_scope", "the cloud-platform scope is missing")
        token = "ya29.fake-" + secrets.token_urlsafe(32)
        self.issued.append(Issued(token, claims["iss"], time.time() + self.expires_in))
        return web.json_response({"access_token": token, "expires_in": self.expires_in,
                                  "token_type": "Bearer"})

    def _refuse(self, error: str, description: str) -> web.Response:
        self.refused.append(error)
        return web.json_response({"error": error, "error_description": description},
                                 status=400)


@dataclass
class FakeVertex(CatchAllFake):
    oauth: FakeGoogleOAuth
    port: int = 0
    requests: list[Seen] = field(default_factory=list)
    _content: FakeUpstream = field(default_factory=FakeUpstream)  # its response builders
    _server: LoopbackServer | None = None

    name = "fake-vertex"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(Seen.of(request, body))
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not self.oauth.valid(auth[7:]):
            return google_error(401, "UNAUTHENTICATED", "Request had invalid authentication "
                                "credentials. Expected OAuth 2 access token, login cookie or "
                                "other valid authentication credential.")
        head, _, verb = request.path.rpartition(":")
        parts = head.split("/")
        # /{v}/projects/{p}/locations/{l}/publishers/{publisher}/models/{model}
        if len(parts) != 10 or parts[2] != "projects" or parts[6] != "publishers":
            return google_error(404, "NOT_FOUND", f"{request.path} not found")
        publisher, model = parts[7], parts[9]
        payload: dict[str, Any] = json.loads(body) if body else {}
        content = self._content
        if publisher == "google":
            if verb == "countTokens":
                return web.json_response({"totalTokens": 50})
            if verb == "streamGenerateContent":
                chunks = content.gemini_chunks(model)
                chunks[-1]["usageMetadata"] = VERTEX_USAGE
                if request.query.get("alt") == "sse":
                    return await content.sse(request, [(None, json.dumps(c)) for c in chunks], "")
                return await content.json_array(request, chunks)
            if verb == "generateContent":
                return web.json_response({**content.gemini_response(model),
                                          "usageMetadata": VERTEX_USAGE,
                                          "createTime": "2026-11-28T15:00:00Z"})
        if publisher == "anthropic" and verb in ("rawPredict", "streamRawPredict"):
            # The SDK names the version (vertex-2023-10-16 in older ones, a date in 2.14).
            if not isinstance(payload.get("anthropic_version"), str) or (
                    "model" in payload and model != "count-tokens"):
                return web.json_response({"type": "error", "error": {
                    "type": "invalid_request_error",
                    "message": "anthropic_version is required; the model goes in the URL"}},
                    status=400)
            if model == "count-tokens":
                return web.json_response({"input_tokens": 42})
            answered = {**payload, "model": model.replace("@", "-")}
            if verb == "streamRawPredict":
                events = content.anthropic_events(answered)
                events = [(e, d.replace('"msg_fake"', '"msg_vrtx_fake"')) for e, d in events]
                return await content.sse(request, events, "")
            return web.json_response({**content.anthropic_message(answered),
                                      "id": "msg_vrtx_fake"})
        return google_error(404, "NOT_FOUND", f"Publisher model {model}:{verb} not found")


def google_error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": status, "message": message, "status": code}},
                             status=status)


def write_key(path: Path, key: dict[str, str]) -> Path:
    path.write_text(json.dumps(key))
    return path
