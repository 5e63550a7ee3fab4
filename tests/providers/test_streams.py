"""The incremental parsers give the same events for any split of the same bytes."""

from __future__ import annotations

import json
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steward.providers.streams import JsonArrayScanner, SSEParser

STREAM = (b": comment\r\n"
          b"event: first\r\ndata: {\"a\": 1}\r\n\r\n"
          b"data: line one\ndata: line two\n\n"
          b"event: third\rdata: x\r\r"
          b"data: [DONE]\n\n")
EXPECTED = [(b"first", b'{"a": 1}'), (b"message", b"line one\nline two"),
            (b"third", b"x"), (b"message", b"[DONE]")]


def fed(parser: SSEParser | JsonArrayScanner, pieces: list[bytes]) -> list:
    """Everything one parser yields for the pieces, fed in order."""
    return [out for piece in pieces for out in parser.feed(piece)]


def splits(data: bytes, seed: int = 7) -> list[list[bytes]]:
    """Whole, one byte at a time, and random cuts."""
    rng = random.Random(seed)
    out = [[data], [data[i:i + 1] for i in range(len(data))]]
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), k=min(5, len(data) - 1)))
        out.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)])
    return out


@pytest.mark.parametrize("pieces", splits(STREAM))
def test_sse_any_split(pieces: list[bytes]) -> None:
    assert fed(SSEParser(), pieces) == EXPECTED


def test_sse_event_without_blank_line_is_not_dispatched() -> None:
    assert SSEParser().feed(b"data: partial\n") == []


LONG = b"data: " + b"x" * 100
WITH_LONG = (b"event: first\r\ndata: {\"a\": 1}\r\n\r\n"
             b"event: long\ndata: kept?\n" + LONG + b"\r\ndata: after\n\n"
             b": " + b"c" * 100 + b"\r\r"
             b"data: " + b"y" * 40 + b"\ndata: " + b"z" * 40 + b"\n\n"
             b"data: [DONE]\n\n")


@pytest.mark.parametrize("pieces", splits(WITH_LONG))
def test_sse_lines_over_the_cap_are_skipped_with_their_event(pieces: list[bytes]) -> None:
    parser = SSEParser(max_line=64)
    assert fed(parser, pieces) == [(b"first", b'{"a": 1}'), (b"message", b"[DONE]")]
    assert parser.skipped == 3  # the long data line, the long comment, the 80 bytes of data


def test_sse_a_long_line_costs_linear_time_and_bounded_memory() -> None:
    parser = SSEParser(max_line=1 << 30)
    piece = b"x" * 65536
    started = time.thread_time()  # this thread's CPU time: other processes' load is not ours
    parser.feed(b"data: ")
    for _ in range(1024):  # 64 MiB without a newline
        assert parser.feed(piece) == []
    assert parser.feed(b"\n\n") == [(b"message", b"x" * (64 << 20))]
    assert time.thread_time() - started < 3  # quadratic concatenation took tens of seconds
    capped = SSEParser(max_line=1 << 20)
    for _ in range(64):
        capped.feed(piece)
    assert len(capped._buf) <= 1 << 20 and capped.skipped == 1


ARRAY_ELEMENTS = [{"text": "a \"quoted\" ] } [ {", "n": [1, 2, {"x": "\\"}]}, {"usage": 3}]
ARRAY = ("[" + ",\r\n".join(json.dumps(e) for e in ARRAY_ELEMENTS) + "]").encode()


@pytest.mark.parametrize("pieces", splits(ARRAY))
def test_json_array_any_split(pieces: list[bytes]) -> None:
    assert [json.loads(e) for e in fed(JsonArrayScanner(), pieces)] == ARRAY_ELEMENTS


def test_json_array_buffers_only_the_current_element() -> None:
    scanner = JsonArrayScanner()
    for _ in range(1000):
        scanner.feed(b'{"k": "' + b"v" * 100 + b'"},')
    assert len(scanner._buf) < 200


# -- properties: any bytes, any split ---------------------------------------------------------

PROPERTY = settings(max_examples=300, deadline=None)


@st.composite
def split_bytes(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> tuple[bytes, list[bytes]]:
    """Some bytes, and the same bytes cut at arbitrary points."""
    whole = draw(data)
    cuts = sorted(draw(st.lists(st.integers(0, len(whole)), max_size=12)))
    return whole, [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]


# Bytes that look like event streams often enough to reach every branch.
SSE_ISH = st.lists(st.sampled_from([b"data:", b"data: ", b"event: ", b":", b"\r", b"\n", b"\r\n",
                                    b"x", b"{}", b"\xff", b" ", b"id: 1"]),
                   max_size=60).map(b"".join) | st.binary(max_size=300)
ARRAY_ISH = st.lists(st.sampled_from([b"[", b"]", b"{", b"}", b'"', b"\\", b",", b"x", b"1",
                                      b"\xff", b" "]), max_size=80).map(b"".join) \
    | st.binary(max_size=300)


@PROPERTY
@given(split_bytes(SSE_ISH))
def test_sse_any_bytes_any_split_same_events(case: tuple[bytes, list[bytes]]) -> None:
    whole, pieces = case
    events = fed(SSEParser(), pieces)
    assert events == SSEParser().feed(whole)
    assert all(isinstance(e, bytes) and isinstance(d, bytes) for e, d in events)


@PROPERTY
@given(split_bytes(ARRAY_ISH))
def test_json_array_any_bytes_any_split_same_elements(case: tuple[bytes, list[bytes]]) -> None:
    whole, pieces = case
    elements = fed(JsonArrayScanner(), pieces)
    assert elements == JsonArrayScanner().feed(whole)
    assert all(e[:1] in (b"{", b"[") for e in elements)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=20)
OBJECTS = st.lists(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4), max_size=6)


@PROPERTY
@given(OBJECTS, st.data())
def test_json_array_of_objects_yields_each_exactly(objects: list[dict], data: st.DataObject
                                                   ) -> None:
    text = json.dumps(objects, ensure_ascii=data.draw(st.booleans()),
                      indent=data.draw(st.none() | st.integers(0, 2))).encode()
    _, pieces = data.draw(split_bytes(st.just(text)))
    assert [json.loads(e) for e in fed(JsonArrayScanner(), pieces)] == objects
