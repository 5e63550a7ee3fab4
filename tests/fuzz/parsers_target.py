"""The fuzz target's logic and its seed corpus, without atheris, so pytest can replay the seeds.

An input is a 4-byte header (format, route, content type, number of cuts), then each cut as
two big-endian bytes, then the response bytes. The header is read from the front, so a seed
says plainly which format, route and meter it exercises (atheris' FuzzedDataProvider takes
integers from the end of the input, which made every seed land on the same two pairs).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from steward.providers import FORMATS
from steward.providers.base import Meter, Route, WireFormat
from steward.providers.bedrock import encode_message
from steward.providers.streams import JsonArrayScanner, SSEParser
from steward.providers.usage import Reading

FORMAT_NAMES = sorted(FORMATS)
ROUTES = [Route("chat/completions", "/chat/completions"), Route("responses", "/responses"),
          Route("messages", "/v1/messages"), Route("streamGenerateContent", "/x"),
          Route("converse-stream", "/x")]
CONTENT_TYPES = ["text/event-stream", "application/json", "application/vnd.amazon.eventstream"]
HEADER = 4
MAX_CUTS = 8


@dataclass(frozen=True)
class Case:
    fmt: WireFormat
    route: Route
    content_type: str
    whole: bytes
    parts: list[bytes]


def decode(raw: bytes) -> Case:
    head = raw[:HEADER].ljust(HEADER, b"\0")
    ncuts = head[3] % (MAX_CUTS + 1)
    body = raw[HEADER:]
    cut_bytes, data = body[:2 * ncuts], body[2 * ncuts:]
    cuts = sorted(min(int.from_bytes(cut_bytes[i:i + 2], "big") % 4097, len(data))
                  for i in range(0, len(cut_bytes) - 1, 2))
    parts = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return Case(FORMATS[FORMAT_NAMES[head[0] % len(FORMAT_NAMES)]], ROUTES[head[1] % len(ROUTES)],
                CONTENT_TYPES[head[2] % len(CONTENT_TYPES)], data, parts)


def meter_kind(fmt: WireFormat, meter: Meter) -> str:
    """Which usage-reading code a meter runs: the SSE meter wraps a per-format reader."""
    return f"{fmt.name}:{type(getattr(meter, '_reader', meter)).__name__}"


def check(raw: bytes) -> tuple[str, Reading]:
    """Nothing raises, and where the bytes are cut never changes what is read."""
    case = decode(raw)
    sse = SSEParser()
    assert [e for p in case.parts for e in sse.feed(p)] == SSEParser().feed(case.whole)
    scanner = JsonArrayScanner()
    assert [e for p in case.parts for e in scanner.feed(p)] == JsonArrayScanner().feed(case.whole)

    readings = []
    kind = ""
    for chunks in (case.parts, [case.whole]):
        meter = case.fmt.meter(case.route, 200, case.content_type)
        kind = meter_kind(case.fmt, meter)
        for chunk in chunks:
            meter.feed(chunk)
        readings.append(meter.finish())
    assert readings[0] == readings[1], readings
    for value in readings[0].usage.as_dict().values():
        assert value is None or type(value) is int
    return kind, readings[0]


def _sse(*events: tuple[str | None, object]) -> bytes:
    out = b""
    for event, data in events:
        out += (f"event: {event}\n" if event else "").encode()
        out += b"data: " + (data if isinstance(data, bytes) else json.dumps(data).encode())
        out += b"\n\n"
    return out


OPENAI_USAGE = {"prompt_tokens": 3, "completion_tokens": 2,
                "prompt_tokens_details": {"cached_tokens": 1}}
RESPONSES_USAGE = {"input_tokens": 7, "output_tokens": 4,
                   "output_tokens_details": {"reasoning_tokens": 1}}
ANTHROPIC_USAGE = {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 2}
GEMINI_USAGE = {"promptTokenCount": 4, "candidatesTokenCount": 2, "thoughtsTokenCount": 1}

CONVERSE_USAGE = {"inputTokens": 3, "outputTokens": 2, "cacheReadInputTokens": 4}
EVENT = {":message-type": "event", ":content-type": "application/json"}


def _frames(*events: tuple[str, object]) -> bytes:
    return b"".join(encode_message({**EVENT, ":event-type": kind}, json.dumps(obj).encode())
                    for kind, obj in events)


def _chunk(obj: object) -> tuple[str, object]:
    return "chunk", {"bytes": base64.b64encode(json.dumps(obj).encode()).decode()}


# Real response shapes, one per meter, so the fuzzer starts inside the usage-reading code.
SAMPLES = [
    _sse((None, {"model": "m", "choices": []}),
         (None, {"model": "m", "choices": [], "usage": OPENAI_USAGE}), (None, b"[DONE]")),
    _sse(("response.created", {"response": {"model": "r"}}),
         ("response.completed", {"response": {"model": "r", "usage": RESPONSES_USAGE}})),
    json.dumps({"model": "m", "usage": OPENAI_USAGE}).encode(),
    _sse(("message_start", {"message": {"model": "c", "usage": ANTHROPIC_USAGE}}),
         ("message_delta", {"usage": {"output_tokens": 9}})),
    json.dumps({"model": "c", "usage": ANTHROPIC_USAGE}).encode(),
    _sse((None, {"candidates": []}), (None, {"usageMetadata": GEMINI_USAGE,
                                             "modelVersion": "g"})),
    json.dumps({"usageMetadata": GEMINI_USAGE, "modelVersion": "g"}).encode(),
    b"[" + json.dumps({"candidates": []}).encode() + b",\n"
    + json.dumps({"usageMetadata": GEMINI_USAGE}).encode() + b"]",
    _frames(("messageStop", {"stopReason": "end_turn"}),
            ("metadata", {"usage": CONVERSE_USAGE})),
    _frames(_chunk({"type": "message_start", "message": {"model": "c",
                                                         "usage": ANTHROPIC_USAGE}}),
            _chunk({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": 5, "outputTokenCount": 1}})),
]


def seeds() -> Iterator[bytes]:
    """Every sample under every format, route and content type, whole and cut in three."""
    for f in range(len(FORMAT_NAMES)):
        for r in range(len(ROUTES)):
            for c in range(len(CONTENT_TYPES)):
                for sample in SAMPLES:
                    third = len(sample) // 3
                    yield bytes([f, r, c, 0]) + sample
                    yield (bytes([f, r, c, 2]) + third.to_bytes(2, "big")
                           + (2 * third).to_bytes(2, "big") + sample)


def seed(corpus: Path) -> None:
    corpus.mkdir(parents=True, exist_ok=True)
    for i, raw in enumerate(seeds()):
        path = corpus / f"seed-{i:04d}"
        if not path.exists() or path.read_bytes() != raw:
            path.write_bytes(raw)
