"""The authenticators of formats that sign requests or mint tokens (Bedrock's SigV4, Vertex's
OAuth): one per provider and credential scope, as CredentialIndex scopes static keys.

Built when credentials or the configuration change, keeping the ones whose inputs did not
(their minted tokens stay valid); the gateway awaits `refresh()` of new ones before they serve
and then drives every `refresh()` in the background, so no request waits on a credential.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

from steward import providers
from steward.config import ProviderConfig
from steward.errors import GatewayError
from steward.providers.base import UpstreamAuth
from steward.secrets.provider_keys import DEFAULT_SCOPE

log = logging.getLogger("steward")

Ref = tuple[str, str]  # (provider, scope)


@dataclass(frozen=True, eq=False)
class Held:
    """An authenticator and what it was built from (rebuilt only when these change)."""

    config: ProviderConfig
    stored: str | None  # None: the provider's default chain
    auth: UpstreamAuth


class Broken:
    """A stored credential the format cannot use: every request it would serve gets why (502),
    so the caller sees the operator's mistake, not a signature error from the cloud."""

    def __init__(self, message: str):
        self.message = message

    def apply(self, method: str, url: str, headers: list[tuple[str, str]],
              body: bytes | bytearray) -> list[tuple[str, str]]:
        raise GatewayError(502, self.message)

    async def refresh(self) -> None:
        return None


def build(configured: Mapping[str, ProviderConfig], keys: Mapping[Ref, str],
          current: Mapping[Ref, Held]) -> dict[Ref, Held]:
    """The authenticators for every signing provider's stored credentials (and its default
    chain when `credentials = "default"`, which then serves the provider-wide scope)."""
    out: dict[Ref, Held] = {}
    for name, config in configured.items():
        fmt = providers.find(config.format)
        if fmt is None or not fmt.caller_auth_headers:
            continue
        wanted: dict[str, str | None] = {scope: value for (provider, scope), value in keys.items()
                                         if provider == name}
        if config.credentials == "default":
            wanted[DEFAULT_SCOPE] = None
        for scope, stored in wanted.items():
            held = current.get((name, scope))
            if held is None or held.config != config or held.stored != stored:
                held = Held(config, stored, _make(name, config, stored))
            out[(name, scope)] = held
    return out


def _make(name: str, config: ProviderConfig, stored: str | None) -> UpstreamAuth:
    fmt = providers.find(config.format)
    assert fmt is not None
    try:
        auth = fmt.upstream_auth(config, stored)
    except ValueError as exc:
        message = (f"the stored {name} credentials cannot be used ({exc}): store them again "
                   f"with `steward providers set {name}`")
        log.error("%s", message)
        return Broken(message)
    if auth is None:
        return Broken(f"the {config.format} format gave no authenticator for {name}")
    return auth
