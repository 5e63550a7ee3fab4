"""A request's worst case, from each wire format's way of capping output."""

from __future__ import annotations

import json

import pytest

from steward.budgets import scopes, worst


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("doc", "cap"), [
    ({"model": "gpt-4o", "max_tokens": 100}, 100),
    ({"model": "o3", "max_completion_tokens": 300, "n": 3}, 900),
    ({"model": "gpt-5", "max_output_tokens": 50}, 50),  # Responses
    ({"generationConfig": {"maxOutputTokens": 64, "candidateCount": 2,
                           "thinkingConfig": {"thinkingBudget": 36}}}, 200),  # Gemini
    ({"inferenceConfig": {"maxTokens": 77}}, 77),  # Bedrock Converse
    ({"model": "gpt-4o", "max_tokens": True}, 16384),  # not a number: the table's maximum
    ({"model": "gpt-4o"}, 16384),
])
def test_output_cap(doc: dict[str, object], cap: int) -> None:
    assert worst.bound(body(doc), "chat", 16384, None).output_tokens == cap


def test_no_cap_anywhere_is_unbounded_except_for_embeddings() -> None:
    assert worst.bound(body({"model": "x"}), "chat", None, None).output_tokens is None
    assert worst.bound(body({"model": "x"}), "embedding", None, None).output_tokens == 0
    assert worst.bound(b"not json", "chat", None, None).output_tokens is None


def test_input_is_bounded_by_size_and_the_models_maximum() -> None:
    doc = body({"model": "m", "max_tokens": 1, "messages": [{"content": "x" * 1000}]})
    assert worst.bound(doc, "chat", None, None).input_tokens == len(doc)
    assert worst.bound(doc, "chat", None, 200).input_tokens == 200


def test_every_token_at_its_dearest_rate() -> None:
    prices = {"input_cost_per_token": "0.000001", "cache_creation_input_token_cost": "0.00000125",
              "input_cost_per_token_above_200k_tokens": "0.000002",
              "output_cost_per_token": "0.00001", "output_cost_per_token_priority": "0.00002"}
    rates = worst.dearest(prices)
    assert worst.cost_nano(rates, worst.Bound(1000, 10)) == 2_200_000  # $0.002 + $0.0002
    assert worst.cost_nano(worst.dearest({"output_cost_per_token": "1E-12"}),
                           worst.Bound(5, 1)) == 1  # rounded up, never down


@pytest.mark.parametrize(("period", "now", "start", "reset"), [
    ("day", "2026-11-28T23:59:59", "2026-11-28", "2026-11-29T00:00:00"),
    ("week", "2026-11-28T12:00:00", "2026-11-23", "2026-11-30T00:00:00"),  # a Saturday
    ("month", "2026-12-31T12:00:00", "2026-12-01", "2027-01-01T00:00:00"),
])
def test_periods_reset_at_midnight_monday_and_the_first_utc(period: str, now: str, start: str,
                                                            reset: str) -> None:
    from datetime import UTC, datetime

    def ts(text: str) -> float:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()

    assert scopes.period_start(period, ts(now)) == (start, ts(reset))
    assert scopes.period_start("total", ts(now)) == ("total", None)


def test_a_header_cannot_take_a_request_out_of_its_keys_tag() -> None:
    found = scopes.applicable("k1", {"Team": "search"}, {"team": "other"}, "openai", "gpt-4o")
    assert "tag:team=search" in found and "tag:team=other" in found
    assert found[:4] == ["global", "key:k1", "provider:openai", "model:gpt-4o"]
