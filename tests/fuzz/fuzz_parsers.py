"""Coverage-guided fuzzing (atheris/libFuzzer) of the stream parsers and usage meters.

Run by `make fuzz` (FUZZ_SECONDS bounds it). Each input is some bytes plus a way to cut them;
the target checks that nothing raises and that the cut never changes the result. A finding is
written as crash-<hash> in the working directory; replay it with
`python tests/fuzz/fuzz_parsers.py crash-<hash>`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["steward"]):
    from steward.providers import FORMATS
    from steward.providers.base import Route
    from steward.streams import JsonArrayScanner, SSEParser

ROUTES = [Route("chat/completions", "/chat/completions"), Route("messages", "/v1/messages"),
          Route("streamGenerateContent", "/x")]
CONTENT_TYPES = ["text/event-stream", "application/json"]


def pieces(fdp: atheris.FuzzedDataProvider) -> tuple[bytes, list[bytes]]:
    cuts = sorted(fdp.ConsumeIntListInRange(fdp.ConsumeIntInRange(0, 8), 0, 4096))
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    cuts = [min(c, len(data)) for c in cuts]
    return data, [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_one_input(raw: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(raw)
    fmt = FORMATS[sorted(FORMATS)[fdp.ConsumeIntInRange(0, len(FORMATS) - 1)]]
    route = ROUTES[fdp.ConsumeIntInRange(0, len(ROUTES) - 1)]
    content_type = CONTENT_TYPES[fdp.ConsumeIntInRange(0, 1)]
    whole, parts = pieces(fdp)

    sse = SSEParser()
    assert [e for p in parts for e in sse.feed(p)] == SSEParser().feed(whole)
    scanner = JsonArrayScanner()
    assert [e for p in parts for e in scanner.feed(p)] == JsonArrayScanner().feed(whole)

    readings = []
    for chunks in (parts, [whole]):
        meter = fmt.meter(route, 200, content_type)
        for chunk in chunks:
            meter.feed(chunk)
        readings.append(meter.finish())
    assert readings[0] == readings[1], readings
    for value in readings[0].usage.as_dict().values():
        assert value is None or type(value) is int


def seed(corpus: Path) -> None:
    """Real response shapes to start from, so the fuzzer reaches the usage-reading code."""
    corpus.mkdir(parents=True, exist_ok=True)
    usage = {"prompt_tokens": 3, "completion_tokens": 2,
             "prompt_tokens_details": {"cached_tokens": 1}}
    samples = [
        b"data: " + json.dumps({"model": "m", "choices": [], "usage": usage}).encode()
        + b"\n\ndata: [DONE]\n\n",
        b"event: message_start\ndata: " + json.dumps(
            {"message": {"model": "c", "usage": {"input_tokens": 5, "output_tokens": 1}}}
        ).encode() + b"\n\nevent: message_delta\ndata: {\"usage\": {\"output_tokens\": 9}}\n\n",
        b"[" + json.dumps({"usageMetadata": {"promptTokenCount": 4,
                                             "candidatesTokenCount": 2}}).encode() + b"]",
    ]
    for i, sample in enumerate(samples):
        for selector in range(len(FORMATS) * len(ROUTES)):
            path = corpus / f"seed-{i}-{selector}"
            if not path.exists():
                path.write_bytes(bytes([selector % len(FORMATS), 0, selector % len(ROUTES), 0,
                                        selector % 2, 0, 0]) + sample)


def main() -> None:
    args = sys.argv[1:]
    corpus = [a for a in args if not a.startswith("-")]
    if not corpus:  # default: a corpus directory kept between runs (git-ignored)
        corpus_dir = Path(".fuzz-corpus")
        seed(corpus_dir)
        args.append(str(corpus_dir))
    atheris.Setup([sys.argv[0], *args], test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
