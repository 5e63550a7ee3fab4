"""The fuzz target's seed corpus, replayed without atheris: every format, route and content
type is selected, and every usage meter reads usage from at least one seed, so the fuzzer
starts inside the code it is meant to explore."""

from __future__ import annotations

from steward.providers import FORMATS
from tests.fuzz.parsers_target import (
    CONTENT_TYPES,
    FORMAT_NAMES,
    ROUTES,
    check,
    decode,
    meter_kind,
    seeds,
)


def test_seed_corpus_reaches_every_format_route_and_meter() -> None:
    every_case = {(f, r.endpoint, c) for f in FORMAT_NAMES for r in ROUTES for c in CONTENT_TYPES}
    every_meter = {meter_kind(FORMATS[f], FORMATS[f].meter(r, 200, c))
                   for f in FORMAT_NAMES for r in ROUTES for c in CONTENT_TYPES}
    cases, read_usage = set(), set()
    for raw in seeds():
        case = decode(raw)
        cases.add((case.fmt.name, case.route.endpoint, case.content_type))
        kind, reading = check(raw)
        if reading.usage.input_tokens is not None:
            read_usage.add(kind)
    assert cases == every_case
    # a JSON meter per format, its stream readers (Gemini: also its array meter; Bedrock: its
    # event-stream readers)
    assert len(every_meter) >= 2 * len(FORMATS), every_meter
    assert read_usage == every_meter, f"no seed reads usage in {every_meter - read_usage}"


def test_cuts_are_read_from_the_front() -> None:
    whole = b'data: {"usage": {}}\n\n'
    case = decode(bytes([FORMAT_NAMES.index("openai"), 3, 1, 2, 0, 5, 0, 9]) + whole)
    assert (case.fmt.name, case.route.endpoint, case.content_type) == (
        "openai", "streamGenerateContent", "application/json")
    assert case.whole == whole and case.parts == [whole[:5], whole[5:9], whole[9:]]
