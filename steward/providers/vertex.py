"""Google Vertex AI: Gemini and Claude under a Google Cloud project, with Steward's OAuth token.

Paths, forwarded as sent (`v1` or `v1beta1`):
- Gemini: `/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent`,
  `:streamGenerateContent` (SSE with `?alt=sse`, else a streamed JSON array), `:countTokens`;
  Gemini's body, usage and meters (gemini.py).
- Claude: `…/publishers/anthropic/models/{m}:rawPredict` and `:streamRawPredict`, and
  `…/models/count-tokens:rawPredict`; Anthropic's Messages body (with `anthropic_version`, the
  model in the path) and meters (anthropic.py).
The host follows the location in the path (`{location}-aiplatform.googleapis.com`; `global`:
`aiplatform.googleapis.com`; `us`/`eu`: `aiplatform.{us|eu}.rep.googleapis.com`) unless
providers.vertex.base_url names one. Upstream, every request carries an OAuth access token
minted from the stored service-account key (or Application Default Credentials), renewed in
the background well before it expires: a request never waits on Google's token endpoint.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from steward.errors import GatewayError, StewardError
from steward.providers.anthropic import FORMAT as ANTHROPIC
from steward.providers.base import Meter, Route, StreamReader, WireFormat, scoped
from steward.providers.gemini import FORMAT as GEMINI
from steward.providers.streams import MAX_SSE_LINE
from steward.providers.usage import Reading

if TYPE_CHECKING:
    from steward.config import ProviderConfig

log = logging.getLogger("steward.vertex")

DEFAULT_BASE_URL = "https://{location}-aiplatform.googleapis.com"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
_CALL = re.compile(r"/(?:v1|v1beta1)/projects/[^/]+/locations/[^/]+/publishers/"
                   r"(google|anthropic)/models/([^/:]+):([A-Za-z]+)")
_LOCATION = re.compile(r"/(?:v1|v1beta1)/projects/[^/]+/locations/([^/]+)/")
# A location becomes part of a host name: nothing but a region's letters, digits and dashes.
_VALID_LOCATION = re.compile(r"[a-z][a-z0-9-]{0,62}")
GEMINI_METHODS = frozenset({"generateContent", "streamGenerateContent", "countTokens"})
CLAUDE_METHODS = frozenset({"rawPredict", "streamRawPredict"})
CLAUDE_ENDPOINTS = frozenset({*CLAUDE_METHODS, "count-tokens"})
# First path segment after locations/{l}/ -> scope; anything else on the host is admin.
_SCOPES = {"batchPredictionJobs": "batches", "tuningJobs": "fine_tuning"}


def host_for(location: str) -> str:
    if location == "global":
        return "https://aiplatform.googleapis.com"
    if location in ("us", "eu"):
        return f"https://aiplatform.{location}.rep.googleapis.com"
    return DEFAULT_BASE_URL.replace("{location}", location)


class VertexFormat(WireFormat):
    name = "vertex"
    # Callers' own Google credentials: never forwarded (Steward's token replaces them), and
    # searched for a gateway key sent as the SDK's token.
    credential_headers = (b"authorization",)
    caller_auth_headers: ClassVar[frozenset[bytes]] = frozenset(
        {b"authorization", b"x-goog-api-key", b"x-goog-user-project"})
    default_base_url = DEFAULT_BASE_URL
    paths_help = ("Vertex AI: /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:"
                  "generateContent, …/publishers/anthropic/models/{m}:rawPredict")
    detection_rank = 12
    price_providers = ("vertex_ai-language-models", "vertex_ai", "vertex_ai-anthropic_models")
    price_prefix = "vertex_ai"

    def owns(self, path: str) -> bool:
        return path.startswith(("/v1/projects/", "/v1beta1/projects/"))

    def classify(self, method: str, path: str) -> Route:
        call = _CALL.fullmatch(path)
        if call is not None and method == "POST":
            publisher, model, verb = call.groups()
            if publisher == "google" and verb in GEMINI_METHODS:
                return Route(endpoint=verb, upstream_path=path, model=model)
            if publisher == "anthropic" and verb in CLAUDE_METHODS:
                if model == "count-tokens":  # the model is in the body
                    return Route(endpoint="count-tokens", upstream_path=path)
                return Route(endpoint=verb, upstream_path=path, model=model)
        location = _LOCATION.match(path)
        rest = path[location.end():] if location else ""
        return scoped(_SCOPES.get(rest.split("/", 1)[0], "admin"), path)

    def upstream_base(self, base_url: str, route: Route, query: bytes) -> str:
        if "{location}" not in base_url:
            return base_url
        found = _LOCATION.match(route.upstream_path)
        if found is None:
            return host_for("global")
        if not _VALID_LOCATION.fullmatch(found.group(1)):
            raise GatewayError(400, f"{found.group(1)!r} is not a Vertex AI location (such as "
                               "us-central1, europe-west4 or global)")
        return host_for(found.group(1))

    def upstream_auth(self, provider: ProviderConfig, stored: str | None) -> VertexAuth:
        return VertexAuth(None if stored is None else parse_key(stored))

    def credential_from_text(self, text: str) -> tuple[str, str]:
        info = parse_key(text)
        return json.dumps(info, separators=(",", ":")), str(info.get("private_key_id", ""))[-4:]

    def check_credentials(self, provider: ProviderConfig, stored: str | None) -> str:
        """Mints a token: proves the key (or ADC) and Google's token endpoint."""
        auth = VertexAuth(None if stored is None else parse_key(stored))
        try:
            _, expires = auth.mint()
        except Exception as exc:  # google-auth's many errors, each said in one line
            raise StewardError(f"cannot mint a Google access token from {auth.source}: "
                               f"{_describe(exc)}") from None
        return (f"minted an access token from {auth.source} (valid for "
                f"{max(0, expires - time.time()) / 60:.0f} min)")

    def error_body(self, status: int, message: str) -> bytes:
        return GEMINI.error_body(status, message)  # Vertex answers in Google's shape

    def _inner(self, route: Route) -> WireFormat:
        return ANTHROPIC if route.endpoint in CLAUDE_ENDPOINTS else GEMINI

    def is_stream(self, route: Route, content_type: str) -> bool:
        return self._inner(route).is_stream(route, content_type)

    def read_json(self, obj: Any, reading: Reading) -> None:
        (GEMINI if "usageMetadata" in obj or "candidates" in obj else ANTHROPIC).read_json(
            obj, reading)

    def stream_reader(self, route: Route) -> StreamReader:
        return self._inner(route).stream_reader(route)

    def meter(self, route: Route, status: int, content_type: str,
              max_line: int = MAX_SSE_LINE) -> Meter:
        return self._inner(route).meter(route, status, content_type, max_line)


FORMAT = VertexFormat()


def parse_key(text: str) -> dict[str, Any]:
    """A service-account key file's JSON, checked for what minting needs (no secret in the
    message)."""
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError("not JSON: expected a Google service-account key file") from None
    if not isinstance(info, dict) or info.get("type") != "service_account":
        raise ValueError('not a service-account key: expected "type": "service_account" (from '
                         "`gcloud iam service-accounts keys create`)")
    missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
    if missing:
        raise ValueError(f"the service-account key lacks {', '.join(missing)}")
    return info


class VertexAuth:
    """An OAuth access token for Vertex, held in memory and renewed in the background.

    `refresh` runs google-auth's blocking refresh in a thread once half the token's life has
    passed; `apply` only reads the token it left. A token is not used in its last tenth of
    life (at most its last minute), so one that expires in flight is never sent."""

    RENEW_AFTER = 0.5  # of a token's lifetime

    def __init__(self, info: dict[str, Any] | None,
                 clock: Callable[[], float] = time.time) -> None:
        self._info = info  # None: Application Default Credentials
        self._clock = clock
        self._credentials: Any = None
        self._transport: Any = None
        self._token: str | None = None
        self._usable_until = 0.0
        self._renew_at = 0.0
        self._lock: asyncio.Lock | None = None
        self.last_error: str | None = None

    @property
    def source(self) -> str:
        return ("application default credentials" if self._info is None
                else f"service account {self._info.get('client_email')}")

    def apply(self, method: str, url: str, headers: list[tuple[str, str]],
              body: bytes | bytearray) -> list[tuple[str, str]]:
        token = self._token
        if token is None or self._clock() >= self._usable_until:
            why = f" (last attempt: {self.last_error})" if self.last_error else ""
            raise GatewayError(503, "Steward has no valid Google access token for Vertex AI "
                               f"yet from {self.source}{why}; it keeps trying in the "
                               "background. Check the key with `steward doctor`.",
                               headers={"Retry-After": "1"})
        return [*(h for h in headers if h[0].lower() != "authorization"),
                ("authorization", f"Bearer {token}")]

    async def refresh(self) -> None:
        if self._token is not None and self._clock() < self._renew_at:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._token is not None and self._clock() < self._renew_at:
                return  # renewed while this call waited
            started = self._clock()
            try:
                token, expiry = await asyncio.to_thread(self.mint)
            except Exception as exc:  # google-auth raises many kinds; keep the last token
                self.last_error = _describe(exc)
                log.error("Vertex AI: could not mint an access token from %s (will retry): %s",
                          self.source, self.last_error)
                return
            lifetime = max(expiry - started, 1.0)
            self._token, self.last_error = token, None
            self._usable_until = expiry - min(60.0, lifetime / 10)
            self._renew_at = started + lifetime * self.RENEW_AFTER

    def mint(self) -> tuple[str, float]:
        """Blocking: a new token and when it expires (epoch seconds). For threads only."""
        import google.auth
        import google.auth.transport.requests
        from google.oauth2 import service_account

        if self._credentials is None:
            if self._info is None:
                self._credentials, _ = google.auth.default(scopes=list(SCOPES))
            else:
                self._credentials = service_account.Credentials.from_service_account_info(
                    self._info, scopes=list(SCOPES))
            self._transport = google.auth.transport.requests.Request()
        self._credentials.refresh(self._transport)
        expiry = self._credentials.expiry  # naive UTC
        expires = (expiry.replace(tzinfo=UTC) if expiry is not None
                   else datetime.now(UTC)).timestamp()
        return self._credentials.token, expires


def _describe(exc: Exception) -> str:
    """google-auth's message (the token endpoint's error, e.g. invalid_grant), one line."""
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    text = " ".join(first.split())[:300]
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__
