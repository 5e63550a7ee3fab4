"""Properties of what goes upstream, for any headers and any path a caller can send."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote_to_bytes, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from steward.config import ProviderConfig
from steward.errors import GatewayError
from steward.proxy.forwarding import (
    HOP_BY_HOP,
    MAJORDOMO,
    filter_accept_encoding,
    find_gateway_key,
    split_headers,
    strip_gateway_keys,
    upstream_url,
)
from steward.proxy.routing import Router

PROPERTY = settings(max_examples=500, deadline=None)
PROVIDERS = {
    "openai": ProviderConfig(format="openai", base_url="https://api.openai.com/v1"),
    "anthropic": ProviderConfig(format="anthropic", base_url="https://api.anthropic.com"),
    "gemini": ProviderConfig(format="gemini",
                             base_url="https://generativelanguage.googleapis.com"),
    "local": ProviderConfig(format="openai", base_url="http://127.0.0.1:8001"),
}
ROUTER = Router(PROVIDERS)

TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)
HEADER_NAME = (st.sampled_from(sorted(HOP_BY_HOP)).map(bytes.decode)
               | TOKEN.map(lambda t: MAJORDOMO.decode() + t)
               | st.sampled_from(["x-majordomo-key", "x-majordomo-provider", "authorization",
                                  "x-api-key", "x-goog-api-key", "accept-encoding",
                                  "content-type", "x-foo"])
               | TOKEN).map(str.encode)
GATEWAY_KEY = TOKEN.map(lambda t: "mdm_sk_" + t)
# Arbitrary bytes, and gateway keys as an SDK sends them (bare, after "Bearer ", anywhere).
HEADER_VALUE = (st.binary(max_size=40)
                | st.tuples(st.sampled_from(["", "Bearer ", "bearer  ", "x "]), GATEWAY_KEY,
                            st.sampled_from(["", " ", ",x"])).map("".join).map(str.encode)
                ).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b""))
HEADERS = st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=25)


def utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def connection_named(headers: list[tuple[bytes, bytes]]) -> set[str]:
    return {v.strip().lower().decode("latin-1") for n, val in headers if n == b"connection"
            for v in val.split(b",")}


@PROPERTY
@given(HEADERS, st.integers(0, 40), st.integers(1, 64))
def test_no_majordomo_or_hop_by_hop_header_is_ever_forwarded(
        headers: list[tuple[bytes, bytes]], max_tags: int, max_tag_bytes: int) -> None:
    try:
        split = split_headers(headers, max_tags, max_tag_bytes)
    except GatewayError as err:  # tag limits, a repeated key, non-UTF-8 bytes: each named
        assert err.status == 400
        repeated = [n for n, _ in headers if n in (b"x-majordomo-key", b"x-majordomo-provider")]
        if "more than once" in err.message:
            assert len(repeated) != len(set(repeated))
            return
        if "not UTF-8" in err.message:
            assert any(not utf8(v) for n, v in headers  # tag values included
                       if n not in (b"x-majordomo-key", b"x-majordomo-provider"))
            return
        assert "limits.max_tags" in err.message
        tags = {n for n, _ in headers
                if n.startswith(MAJORDOMO) and n not in (b"x-majordomo-key",
                                                         b"x-majordomo-provider",
                                                         b"x-majordomo-request-id")}
        assert len(tags) > max_tags or any(
            len(v) > max_tag_bytes for n, v in headers if n in tags)
        return
    hop = {h.decode() for h in HOP_BY_HOP} | connection_named(headers)
    for name, value in split.forward:
        assert not name.startswith("x-majordomo-")
        assert name not in hop
        assert "mdm_sk_" not in value  # a gateway key never goes upstream, whatever the header
    # Everything else passes, in order, as text that encodes back to the same bytes
    # (accept-encoding only narrowed).
    expected = [(n.decode("latin-1"), v) for n, v in headers
                if not n.startswith(MAJORDOMO) and n.decode("latin-1") not in hop
                and b"mdm_sk_" not in v]
    assert [n for n, _ in split.forward] == [n for n, _ in expected]
    assert [v.encode() for n, v in split.forward if n != "accept-encoding"] == [
        v for n, v in expected if n != "accept-encoding"]
    assert len(split.tags) <= max_tags


QUERY_PART = (st.text("abcxyz=&%+2Fe_-", max_size=12)
              | GATEWAY_KEY.map(lambda k: "key=" + k)
              | GATEWAY_KEY.map(lambda k: "key=" + quote(k, safe=""))
              | GATEWAY_KEY.map(lambda k: "k=" + "".join(f"%{b:02X}" for b in k.encode())))


@PROPERTY
@given(st.lists(QUERY_PART, max_size=6).map("&".join).map(str.encode))
def test_no_gateway_key_is_forwarded_in_the_query(query: bytes) -> None:
    kept = strip_gateway_keys(query)
    # Decoded as the upstream decodes it, nothing left holds a key ...
    assert not any("mdm_sk_" in k + v for k, v in parse_qsl(kept.decode("latin-1"),
                                                             keep_blank_values=True))
    assert b"mdm_sk_" not in kept
    # ... and every other parameter keeps its bytes, in order.
    assert kept == b"&".join(p for p in query.split(b"&") if p in kept.split(b"&"))
    assert set(query.split(b"&")) - set(kept.split(b"&")) == {
        p for p in query.split(b"&") if b"mdm_sk_" in unquote_to_bytes(p.replace(b"+", b" "))}


@PROPERTY
@given(HEADERS, st.lists(QUERY_PART, max_size=4).map("&".join).map(str.encode))
def test_the_presented_gateway_key_is_one_the_request_carries(
        headers: list[tuple[bytes, bytes]], query: bytes) -> None:
    """X-Majordomo-Key wins; else an SDK credential header or key= carrying a gateway key."""
    found = find_gateway_key(headers, query)
    explicit = [v for n, v in headers if n == b"x-majordomo-key"]
    if explicit:
        assert found == explicit[0].decode("latin-1").strip()
    elif found is not None:
        assert found.startswith("mdm_sk_")
        carried = [v for n, v in headers if n in (b"authorization", b"x-api-key",
                                                  b"x-goog-api-key")]
        assert any(found.encode() in v for v in carried) or ("key", found) in parse_qsl(
            query.decode("latin-1"))
    else:
        assert not any(v.strip().removeprefix(b"Bearer ").strip().startswith(b"mdm_sk_")
                       for n, v in headers if n in (b"authorization", b"x-api-key",
                                                    b"x-goog-api-key"))


@given(st.binary(max_size=60))
def test_accept_encoding_offers_only_what_steward_decodes(value: bytes) -> None:
    for part in filter_accept_encoding(value).split(","):
        assert part.split(";")[0].strip().lower() in ("gzip", "deflate", "identity")


PATH_CHARS = "/abcv1:.%@?#\\;=&+ ~-_2eEfF0"
RAW_PATHS = st.one_of(
    st.text(PATH_CHARS, max_size=40).map(lambda p: ("/" + p).encode()),
    st.sampled_from(["/v1/chat/completions", "/v1/messages", "/v1beta/models/g:generateContent",
                     "//evil.example/v1/chat/completions", "/@evil.example/x",
                     "/v1/models/a%2F..%2F:generateContent"]).map(str.encode),
    st.binary(max_size=40).map(lambda p: b"/" + p))
PROVIDER_HEADER = st.none() | st.sampled_from(["openai", " Gemini ", "LOCAL", "evil.example",
                                               "http://evil.example", "anthropic"]) | TOKEN


@PROPERTY
@given(st.sampled_from(["GET", "POST", "DELETE"]), RAW_PATHS, PROVIDER_HEADER,
       st.binary(max_size=30).filter(lambda q: b"#" not in q))
def test_no_request_steers_the_upstream_host(method: str, raw_path: bytes, provider: str | None,
                                             query: bytes) -> None:
    path = unquote_to_bytes(raw_path).decode("latin-1")  # what the ASGI server hands over
    try:
        upstream, route = ROUTER.resolve(method, path, provider)
    except GatewayError as err:
        assert err.status in (400, 404)
        return
    assert upstream in ROUTER.upstreams.values()
    if provider is not None:
        assert upstream.name == provider.strip().lower()
    target = upstream_url(upstream.base_url, raw_path, path, route.upstream_path, query)
    base = urlsplit(upstream.base_url)
    assert target.startswith(upstream.base_url + "/")
    sent = URL(target, encoded=True)  # how the upstream client reads it
    assert (sent.scheme, sent.host, sent.port) == (base.scheme, base.hostname,
                                                   base.port or {"https": 443, "http": 80}[
                                                       base.scheme])


@pytest.mark.parametrize("raw", [b"/v1/chat/completions", b"/v1/x%2Fy"])
def test_percent_escapes_reach_the_upstream_as_sent(raw: bytes) -> None:
    path = unquote_to_bytes(raw).decode()
    upstream, route = ROUTER.resolve("POST", path, "openai")
    target = upstream_url(upstream.base_url, raw, path, route.upstream_path, b"")
    assert target == "https://api.openai.com/v1" + raw.decode()[3:]
