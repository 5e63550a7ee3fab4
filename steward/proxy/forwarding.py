"""What of a caller's request goes upstream: its headers minus Steward's own and hop-by-hop
ones, and its path and query under a configured base URL, never a host of the caller's choosing.

Pure functions over bytes, so the properties the proxy promises are tested on any input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from steward.errors import GatewayError
from steward.providers import CREDENTIAL_HEADERS, CREDENTIAL_PARAMS
from steward.providers.base import rewrite_query
from steward.secrets.gateway_keys import KEY_PREFIX

HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host", b"content-length",
    b"expect", b"proxy-connection",
})
MAJORDOMO = b"x-majordomo-"
GATEWAY_KEY = KEY_PREFIX.encode()
DECODABLE = {"gzip", "deflate", "identity"}

# "..", encoded ".", "/", "\\" or NUL, and raw control characters. An encoded "/" is refused
# unless the format routed to says it is its own (Bedrock's ARN model ids).
UNSAFE_PATH = re.compile(rb"(^|/)\.\.(/|$)|%2e|%2f|%5c|%00|[\x00-\x1f\x7f]", re.IGNORECASE)
UNSAFE_BUT_SLASH = re.compile(rb"(^|/)\.\.(/|$)|%2e|%5c|%00|[\x00-\x1f\x7f]", re.IGNORECASE)
UNSAFE_PATH_MESSAGE = ("the path contains '..', an encoded '.', '/' or '\\', or a control "
                       "character; LLM API paths never do")


@dataclass(slots=True)
class SplitHeaders:
    """The request's headers, sorted into what is forwarded and what is Steward's."""

    forward: list[tuple[str, str]] = field(default_factory=list)
    key: str | None = None
    provider: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


def filter_accept_encoding(value: bytes) -> str:
    """Keep only codings Steward can read for accounting (gzip, deflate); the caller's client
    can decode every coding it offered, so narrowing the offer is safe."""
    kept = [part.decode("ascii").strip() for part in value.split(b",")
            if part.isascii() and part.split(b";")[0].strip().decode().lower() in DECODABLE]
    return ", ".join(kept) or "identity"


def split_headers(raw: list[tuple[bytes, bytes]], max_tags: int, max_tag_bytes: int
                  ) -> SplitHeaders:
    """Header names arrive lower-cased (ASGI). X-Majordomo-* never goes upstream."""
    out = SplitHeaders()
    drop: set[bytes] = set()
    for name, value in raw:
        if name == b"connection":  # headers it names are hop-by-hop too
            drop.update(v.strip().lower() for v in value.split(b","))
    for name, value in raw:
        if name.startswith(MAJORDOMO):
            tag = name[len(MAJORDOMO):].decode("latin-1")
            if tag in ("key", "provider"):
                if getattr(out, tag) is not None:  # which one was meant is anyone's guess
                    raise GatewayError(400, f"X-Majordomo-{tag.title()} was sent more than "
                                       "once; send it once")
                setattr(out, tag, value.decode("latin-1").strip() if tag == "key"
                        else value.decode("latin-1"))
            elif tag != "request-id":
                new = tag not in out.tags
                if (new and len(out.tags) >= max_tags) or len(value) > max_tag_bytes:
                    raise GatewayError(400, f"too many or too large X-Majordomo-* tags: at "
                                       f"most {max_tags} tags of {max_tag_bytes} bytes each "
                                       "(limits.max_tags, limits.max_tag_bytes)")
                try:
                    out.tags[tag] = value.decode("utf-8")
                except UnicodeDecodeError:  # recorded as replacement characters it would lie
                    raise GatewayError(400, f"the X-Majordomo-{tag.title()} header holds bytes "
                                       "that are not UTF-8; tag values must be UTF-8 text"
                                       ) from None
        elif name in HOP_BY_HOP or name in drop or GATEWAY_KEY in value:
            continue  # a gateway key never leaves Steward, in any header, for any format
        elif name == b"accept-encoding":
            out.forward.append(("accept-encoding", filter_accept_encoding(value)))
        else:
            out.forward.append((name.decode("latin-1"), _forwardable(name, value)))
    return out


def _forwardable(name: bytes, value: bytes) -> str:
    """The value as text the upstream client encodes back to the very same bytes (UTF-8)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise GatewayError(400, f"the {name.decode('latin-1')} header holds bytes that are not "
                           "UTF-8; Steward forwards header values byte for byte only when they "
                           "are ASCII or UTF-8") from None


def find_gateway_key(raw: list[tuple[bytes, bytes]], query: bytes) -> str | None:
    """The gateway key a request presents: X-Majordomo-Key (the first), else an SDK credential
    header or a `key=` query parameter carrying one (an app that sets only base_url and
    api_key). Read before routing, so an unauthenticated request decides nothing else."""
    found = None
    for name, value in raw:
        if name == b"x-majordomo-key":
            return value.decode("latin-1").strip()
        # An SDK configured with api_key=<gateway key> puts it in its format's credential
        # header, or (Gemini) in a credential query parameter.
        if found is None and name in CREDENTIAL_HEADERS and GATEWAY_KEY in value:
            token = value.strip()
            token = token[7:].strip() if token[:7].lower() == b"bearer " else token
            if token.startswith(GATEWAY_KEY):
                found = token.decode("latin-1")
    if found is None and query:
        values = rewrite_query(query, CREDENTIAL_PARAMS, None)[0]
        found = next((k for k in values if k.startswith(KEY_PREFIX)), None)
    return found


def strip_gateway_keys(query: bytes) -> bytes:
    """The query without any parameter that holds a gateway key (decoded as the upstream
    decodes it); the other parameters keep their bytes as sent."""
    if GATEWAY_KEY not in query and b"%" not in query:
        return query
    kept = [pair for pair in query.split(b"&")
            if KEY_PREFIX not in unquote_plus(pair.decode("latin-1"), encoding="latin-1")]
    return b"&".join(kept)


def raw_upstream_path(raw_path: bytes, path: str, upstream_path: str) -> str:
    """The route's upstream path, taken from the bytes the caller sent (percent-escapes kept)."""
    prefix = path[:len(path) - len(upstream_path)] if path.endswith(upstream_path) else ""
    raw = raw_path.decode("latin-1")
    return raw[len(prefix):] if raw.startswith(prefix) and upstream_path else upstream_path


def upstream_url(base_url: str, raw_path: bytes, path: str, upstream_path: str,
                 query: bytes) -> str:
    """The configured base URL plus the caller's path and query: the host is the base's."""
    tail = raw_upstream_path(raw_path, path, upstream_path)
    if not tail.startswith("/"):
        tail = "/" + tail  # so nothing the caller sends can extend the base URL's authority
    target = base_url + tail
    return target + "?" + query.decode("latin-1") if query else target
