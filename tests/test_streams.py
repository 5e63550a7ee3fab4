"""The incremental parsers give the same events for any split of the same bytes."""

from __future__ import annotations

import json
import random

import pytest

from steward.streams import JsonArrayScanner, SSEParser

STREAM = (b": comment\r\n"
          b"event: first\r\ndata: {\"a\": 1}\r\n\r\n"
          b"data: line one\ndata: line two\n\n"
          b"event: third\rdata: x\r\r"
          b"data: [DONE]\n\n")
EXPECTED = [(b"first", b'{"a": 1}'), (b"message", b"line one\nline two"),
            (b"third", b"x"), (b"message", b"[DONE]")]


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
    parser = SSEParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    assert events == EXPECTED


def test_sse_event_without_blank_line_is_not_dispatched() -> None:
    assert SSEParser().feed(b"data: partial\n") == []


ARRAY_ELEMENTS = [{"text": "a \"quoted\" ] } [ {", "n": [1, 2, {"x": "\\"}]}, {"usage": 3}]
ARRAY = ("[" + ",\r\n".join(json.dumps(e) for e in ARRAY_ELEMENTS) + "]").encode()


@pytest.mark.parametrize("pieces", splits(ARRAY))
def test_json_array_any_split(pieces: list[bytes]) -> None:
    scanner = JsonArrayScanner()
    elements = [json.loads(e) for piece in pieces for e in scanner.feed(piece)]
    assert elements == ARRAY_ELEMENTS


def test_json_array_buffers_only_the_current_element() -> None:
    scanner = JsonArrayScanner()
    for _ in range(1000):
        scanner.feed(b'{"k": "' + b"v" * 100 + b'"},')
    assert len(scanner._buf) < 200
