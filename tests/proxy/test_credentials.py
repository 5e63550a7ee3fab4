"""The credential a request goes upstream with, decided by one pure function."""

from __future__ import annotations

from urllib.parse import parse_qsl

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steward.errors import GatewayError
from steward.providers import FORMATS
from steward.providers.base import rewrite_query
from steward.proxy.credentials import upstream_credential

OPENAI, ANTHROPIC, GEMINI = FORMATS["openai"], FORMATS["anthropic"], FORMATS["gemini"]


class Stored:
    """The stored-key lookup, counting whether it was asked (asking marks a key as used)."""

    def __init__(self, value: str | None):
        self.value, self.asked = value, 0

    def __call__(self) -> str | None:
        self.asked += 1
        return self.value


def test_the_callers_own_credential_is_kept_when_allowed_and_the_store_is_not_asked() -> None:
    stored = Stored("sk-stored")
    headers = [("authorization", "Bearer sk-caller"), ("accept", "*/*")]
    assert upstream_credential(OPENAI, "openai", True, headers, b"a=1", stored) == (
        headers, b"a=1")
    assert stored.asked == 0


def test_without_a_caller_credential_the_stored_key_goes_in_the_formats_header() -> None:
    for fmt, header in ((OPENAI, ("authorization", "Bearer sk-s")),
                        (ANTHROPIC, ("x-api-key", "sk-s")), (GEMINI, ("x-goog-api-key", "sk-s"))):
        assert upstream_credential(fmt, fmt.name, True, [("accept", "*/*")], b"",
                                   Stored("sk-s")) == ([("accept", "*/*"), header], b"")


def test_when_callers_may_not_bring_their_own_every_copy_of_it_is_replaced() -> None:
    headers = [("x-api-key", "sk-caller"), ("authorization", "Bearer sk-caller")]
    out, _ = upstream_credential(ANTHROPIC, "anthropic", False, headers, b"", Stored("sk-s"))
    assert out == [("x-api-key", "sk-s")]
    out, query = upstream_credential(GEMINI, "gemini", False, [], b"alt=sse&key=sk-caller",
                                     Stored("sk-s"))
    assert (out, query) == ([("x-goog-api-key", "sk-s")], b"alt=sse")


def test_a_query_without_the_credential_parameter_is_kept_byte_for_byte() -> None:
    query = b"alt=sse&x=%7e%20a+b"
    assert upstream_credential(GEMINI, "gemini", False, [], query, Stored("k"))[1] == query


@pytest.mark.parametrize("allow", [True, False])
def test_no_usable_credential_is_a_401_that_says_what_to_do(allow: bool) -> None:
    caller = [] if allow else [("authorization", "Bearer sk-caller")]
    with pytest.raises(GatewayError) as err:
        upstream_credential(OPENAI, "openai", allow, caller, b"", Stored(None))
    assert err.value.status == 401
    assert "steward providers set openai" in err.value.message


@given(st.lists(st.tuples(st.sampled_from(["authorization", "x-api-key", "x-goog-api-key",
                                           "accept", "x-other"]), st.text(max_size=20))),
       st.sampled_from(sorted(n for n, f in FORMATS.items()  # signing formats inject none
                              if not f.caller_auth_headers)),
       st.lists(st.sampled_from([b"key=a", b"k%65y=b", b"alt=sse", b"%", b"key", b"="]))
       .map(b"&".join))
def test_a_refused_caller_credential_never_goes_upstream(headers: list[tuple[str, str]],
                                                         name: str, query: bytes) -> None:
    fmt = FORMATS[name]
    out, out_query = upstream_credential(fmt, name, False, headers, query, Stored("STORED"))
    names = {n.decode() for n in fmt.credential_headers}
    assert [v for n, v in out if n in names] == [fmt.credential_header("STORED")[1]]
    if fmt.credential_param:  # as the upstream decodes the query: percent-escapes too
        assert fmt.credential_param not in dict(parse_qsl(out_query.decode("latin-1")))


def test_rewriting_touches_the_query_only_when_a_credential_is_in_it() -> None:
    assert rewrite_query(b"alt=sse&x=%7e%20a+b", ("key",), None) == ([], b"alt=sse&x=%7e%20a+b")
    assert rewrite_query(b"k%65y=s&alt=sse", ("key",), "[R]") == (["s"], b"key=%5BR%5D&alt=sse")
