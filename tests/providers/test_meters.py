"""Each format's meter reads exact usage from the fake upstream's bodies, in every split."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steward.providers import FORMATS
from steward.providers.base import DecodingMeter, Route
from steward.providers.usage import Reading, Usage
from tests.providers.test_streams import split_bytes, splits
from tests.support.fake_upstream import FakeUpstream

fake = FakeUpstream()
CHAT = Usage(25, 12, 5, 0, None, None, 4, None)
RESPONSES = Usage(30, 20, 10, 0, None, None, 8, None)
ANTHROPIC = Usage(540, 15, 200, 300, 100, 200, None, None)
GEMINI = Usage(50, 35, 10, 0, None, None, 15, 0)


def sse(events: list[tuple[str | None, str]]) -> bytes:
    return b"".join(((f"event: {e}\n" if e else "") + f"data: {d}\n\n").encode()
                    for e, d in events)


def array(elements: list[Any]) -> bytes:
    return ("[" + ",\r\n".join(json.dumps(e) for e in elements) + "]").encode()


CASES = [
    ("openai", Route("chat/completions", "/chat/completions"), "text/event-stream",
     sse(fake.chat_events({"model": "gpt-4o", "stream_options": {"include_usage": True}})),
     CHAT, "gpt-4o-2024-08-06"),
    ("openai", Route("chat/completions", "/chat/completions"), "text/event-stream",
     sse(fake.chat_events({"model": "gpt-4o"})), Usage(), "gpt-4o-2024-08-06"),
    ("openai", Route("chat/completions", "/chat/completions"), "application/json",
     json.dumps(fake.chat_completion({"model": "gpt-4o"})).encode(), CHAT, "gpt-4o-2024-08-06"),
    ("openai", Route("responses", "/responses"), "text/event-stream",
     sse(fake.responses_events({"model": "o3"})), RESPONSES, "o3-2024-08-06"),
    ("openai", Route("responses", "/responses"), "application/json",
     json.dumps(fake.responses_object({"model": "o3"})).encode(), RESPONSES, "o3-2024-08-06"),
    ("openai", Route("embeddings", "/embeddings"), "application/json",
     json.dumps(fake.embeddings({"model": "text-embedding-3-small"})).encode(),
     Usage(8, 0, 0, 0, None, None, 0, None), "text-embedding-3-small"),
    ("anthropic", Route("messages", "/v1/messages"), "text/event-stream",
     sse(fake.anthropic_events({"model": "claude-sonnet-4-5"})), ANTHROPIC,
     "claude-sonnet-4-5-2024-08-06"),
    ("anthropic", Route("messages", "/v1/messages"), "application/json",
     json.dumps(fake.anthropic_message({"model": "claude-sonnet-4-5"})).encode(), ANTHROPIC,
     "claude-sonnet-4-5-2024-08-06"),
    ("gemini", Route("streamGenerateContent", "/x"), "text/event-stream",
     sse([(None, json.dumps(c)) for c in fake.gemini_chunks("gemini-2.5-flash")]), GEMINI,
     "gemini-2.5-flash"),
    ("gemini", Route("streamGenerateContent", "/x"), "application/json",
     array(fake.gemini_chunks("gemini-2.5-flash")), GEMINI, "gemini-2.5-flash"),
    ("gemini", Route("generateContent", "/x"), "application/json",
     json.dumps(fake.gemini_response("gemini-2.5-pro")).encode(), GEMINI, "gemini-2.5-pro"),
]


@pytest.mark.parametrize(("fmt", "route", "content_type", "body", "usage", "model"), CASES,
                         ids=[f"{c[0]}-{c[1].endpoint}-{c[2].split('/')[1]}-{i}"
                              for i, c in enumerate(CASES)])
def test_usage_is_exact_in_every_split(fmt: str, route: Route, content_type: str, body: bytes,
                                       usage: Usage, model: str | None) -> None:
    for pieces in splits(body):
        meter = FORMATS[fmt].meter(route, 200, content_type)
        for piece in pieces:
            meter.feed(piece)
        reading = meter.finish()
        assert reading.usage == usage
        assert reading.response_model == model
        assert reading.error is None


def test_gzip_bodies_are_decoded_for_accounting() -> None:
    body = gzip.compress(json.dumps(fake.chat_completion({"model": "gpt-4o"})).encode())
    meter = DecodingMeter(FORMATS["openai"].meter(Route("chat/completions", "/c"), 200,
                                                  "application/json"), "gzip")
    for i in range(0, len(body), 7):
        meter.feed(body[i:i + 7])
    assert meter.finish().usage == CHAT


def test_invalid_gzip_leaves_usage_unknown_and_says_so() -> None:
    meter = DecodingMeter(FORMATS["openai"].meter(Route("chat/completions", "/c"), 200,
                                                  "application/json"), "gzip")
    meter.feed(b"definitely not gzip")
    reading = meter.finish()
    assert reading.usage == Usage()
    assert "decompressed" in (reading.error or "")


@pytest.mark.parametrize("fmt", ["openai", "anthropic", "gemini"])
def test_error_responses_are_recorded_with_the_upstream_message(fmt: str) -> None:
    body = FORMATS[fmt].error_body(429, "slow down")
    meter = FORMATS[fmt].meter(Route("x", "/x"), 429, "application/json")
    meter.feed(body)
    reading = meter.finish()
    assert reading.error == "upstream returned 429: slow down"
    assert reading.usage == Usage()


def test_error_shapes() -> None:
    assert json.loads(FORMATS["openai"].error_body(401, "m")) == {
        "error": {"message": "m", "type": "authentication_error", "param": None,
                  "code": "steward_401"}}
    assert json.loads(FORMATS["anthropic"].error_body(413, "m")) == {
        "type": "error", "error": {"type": "request_too_large", "message": "m"}}
    assert json.loads(FORMATS["gemini"].error_body(404, "m")) == {
        "error": {"code": 404, "message": "m", "status": "NOT_FOUND"}}


# -- properties: a response cut anywhere, in any split ---------------------------------------

def read(fmt: str, route: Route, content_type: str, pieces: list[bytes], status: int = 200
         ) -> Reading:
    meter = FORMATS[fmt].meter(route, status, content_type)
    for piece in pieces:
        meter.feed(piece)
    return meter.finish()


def complete_events(body: bytes, content_type: str) -> list[int]:
    """Where each complete event (an SSE event, an array element, the whole JSON) ends."""
    if content_type == "text/event-stream":
        ends, at = [], body.find(b"\n\n")
        while at >= 0:
            ends.append(at + 2)
            at = body.find(b"\n\n", at + 2)
        return ends
    if body[:1] == b"[":
        return [i + 1 for i in range(len(body))
                if body[i:i + 3] == b"},\r" or body[i:i + 2] == b"}]"] + [len(body)]
    return [len(body)]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CASES), st.data())
def test_a_cut_response_records_what_the_last_complete_event_said(case: tuple,
                                                                  data: st.DataObject) -> None:
    fmt, route, content_type, body, usage, model = case
    cut = data.draw(st.integers(0, len(body)))
    _, pieces = data.draw(split_bytes(st.just(body[:cut])))
    reading = read(fmt, route, content_type, pieces)
    assert reading == read(fmt, route, content_type, [body[:cut]])  # the split never matters
    # Providers report running counts (Anthropic's message_start, every Gemini chunk): what a
    # cut response records is what the last complete event said, or nothing; never a guess.
    seen = [read(fmt, route, content_type, [body[:end]]).usage
            for end in complete_events(body, content_type) if end <= cut]
    assert reading.usage == (seen[-1] if seen else Usage())
    assert read(fmt, route, content_type, [body]).usage == usage
    assert reading.response_model in (None, model)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(FORMATS)), st.sampled_from(["text/event-stream",
                                                          "application/json", ""]),
       st.sampled_from([200, 400, 500]), st.sampled_from(["streamGenerateContent", "x"]),
       split_bytes(st.binary(max_size=400)))
def test_any_bytes_never_raise_and_never_invent_counts(fmt: str, content_type: str,
                                                       status: int, endpoint: str,
                                                       case: tuple[bytes, list[bytes]]) -> None:
    _, pieces = case
    reading = read(fmt, Route(endpoint, "/x"), content_type, pieces, status)
    for value in reading.usage.as_dict().values():
        assert value is None or (isinstance(value, int) and not isinstance(value, bool))
    if status != 200:
        assert reading.error is not None and reading.usage == Usage()


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000])
def test_json_nested_too_deep_is_unknown_usage_not_a_crash(body: bytes) -> None:
    reading = read("openai", Route("chat/completions", "/c"), "application/json", [body])
    assert reading.usage == Usage()
    assert reading.error == "usage_unreadable: the response body does not parse as JSON"
