"""Which provider credential a request goes upstream with: pure functions, tested on any input.

The caller's own credential is kept when it sent one and the provider allows that; otherwise
the stored key (for this gateway key, else the provider's default) replaces whatever the caller
sent, in the format's header. Gateway keys were removed from headers and query before this.
Formats that sign requests (`WireFormat.caller_auth_headers`) never forward the caller's
credentials: its signing headers are dropped and the request is signed just before it is sent.
"""

from __future__ import annotations

from collections.abc import Callable

from steward.errors import GatewayError
from steward.providers import WireFormat
from steward.providers.base import UpstreamAuth, rewrite_query

Headers = list[tuple[str, str]]


def upstream_credential(fmt: WireFormat, provider: str, allow_caller: bool, headers: Headers,
                        query: bytes, stored: Callable[[], str | None]
                        ) -> tuple[Headers, bytes]:
    """The headers and query to send upstream. `stored` is asked only when the stored key is
    needed (asking marks the key as used). 401 when neither credential may be used."""
    names = {n.decode() for n in fmt.credential_headers}
    params = (fmt.credential_param,) if fmt.credential_param else ()
    caller = any(name in names for name, _ in headers) or bool(
        params and rewrite_query(query, params, None)[0])
    if caller and allow_caller:
        return headers, query
    key = stored()
    if key is None:
        if caller:
            raise GatewayError(401, f"{provider} does not accept callers' own credentials here "
                               "(allow_caller_credentials = false) and no key is stored: run "
                               f"`steward providers set {provider}`")
        raise GatewayError(401, f"No {provider} API key: send your own in the "
                           f"{fmt.credential_headers[0].decode()} header, or have the operator "
                           f"store one with `steward providers set {provider}`.")
    if caller:
        headers = [(n, v) for n, v in headers if n not in names]
        query = rewrite_query(query, params, None)[1]
    return [*headers, fmt.credential_header(key)], query


def unsigned_headers(fmt: WireFormat, provider: str, headers: Headers,
                     auth: UpstreamAuth | None) -> Headers:
    """For a signing format: the caller's headers without its own credentials and signature
    (made for Steward's host, useless upstream and not to be leaked), ready for `auth.apply`.
    401 when no credential is configured for this request."""
    if auth is None:
        raise GatewayError(401, f"No {provider} credentials: have the operator store them with "
                           f"`steward providers set {provider}`, or set "
                           f"providers.{provider}.credentials = \"default\" to use the cloud "
                           "SDK's own credential chain.")
    drop = fmt.caller_auth_headers | set(fmt.credential_headers)
    return [(n, v) for n, v in headers if n.encode("latin-1") not in drop]
