"""One pooled aiohttp client per provider, created at start-up.

aiohttp on uvloop costs a third to a fifth of httpx's CPU per proxied request here (see the
README's design notes), so it serves the hot path; httpx serves everything else.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401 - aiohttp needs it for the first URL; not on a request

import aiohttp

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
        trust_env=True,  # honour HTTPS_PROXY / NO_PROXY for egress proxies
    )
