"""One pooled aiohttp client per provider, created at start-up.

aiohttp on uvloop costs a third to a fifth of httpx's CPU per proxied request here (see the
README's design notes), so it serves the hot path; httpx serves everything else.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - aiohttp needs it for the first URL; not on a request
import functools
from typing import Any

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from steward.config import LimitsConfig

# Headers aiohttp would otherwise invent: the upstream must see only what the caller sent.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")


def make_session(limits: LimitsConfig) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=limits.upstream_connections,
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Reads are bounded per request by the proxy (read_timeout, then stream limits).
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_timeout,
                                      sock_read=None),
        auto_decompress=False,  # relay the provider's bytes; accounting decodes its own copy
        cookie_jar=aiohttp.DummyCookieJar(),  # never carry one caller's cookies to another
        skip_auto_headers=_NO_AUTO_HEADERS,
        # Not trust_env: aiohttp would then look up the proxy and ~/.netrc in a thread on
        # every request (a quarter of a worker's CPU here), and add netrc credentials to what
        # should go upstream unchanged. egress_proxy() reads the environment once per host.
        trust_env=False,
    )


@functools.lru_cache(maxsize=256)
def _proxy_for(scheme: str, host: str) -> tuple[URL, aiohttp.BasicAuth | None] | None:
    try:
        return get_env_proxy_for_url(URL.build(scheme=scheme, host=host))
    except LookupError:  # no proxy for this scheme, or NO_PROXY names the host
        return None


def egress_proxy(url: URL) -> dict[str, Any]:
    """HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and the proxy's netrc credentials) for an upstream
    URL, as request arguments: read from the environment the first time a host is called, then
    from memory (the environment does not change under a running process)."""
    found = _proxy_for(url.scheme, url.host or "")
    return {} if found is None else {"proxy": found[0], "proxy_auth": found[1]}
