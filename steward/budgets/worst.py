"""The most a request can cost, known before it is forwarded.

Input tokens are bounded by the body's size: byte-level tokenizers never make more tokens
than bytes, and the JSON around the text is more than the few template tokens a provider
adds per message. Output tokens are bounded by the request's own cap (times the number of
choices asked for), else by the model's maximum output from the price table. Each token is
priced at the highest rate it could be billed at (long-context tiers, cache writes, priority).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

# Where each wire format puts the output cap: top level, or inside a config object.
_CAPS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_NESTED_CAPS = (("generationConfig", "maxOutputTokens"), ("inferenceConfig", "maxTokens"),
                ("generation_config", "max_output_tokens"))
_CHOICES = ("n", "candidateCount")
_NO_OUTPUT = ("embedding", "moderation", "moderations", "rerank")


@dataclass(frozen=True, slots=True)
class Bound:
    input_tokens: int
    output_tokens: int | None  # None: neither the request nor the table caps it


def bound(body: bytes | bytearray, mode: str | None, table_max_output: Any,
          table_max_input: Any) -> Bound:
    """The request's token bounds. The body is parsed only here, only when a budget or a
    token limit applies to it."""
    input_tokens = len(body)
    if isinstance(table_max_input, int) and table_max_input > 0:
        input_tokens = min(input_tokens, table_max_input)
    doc: Any = None
    if body:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            doc = None
    cap = _output_cap(doc) if isinstance(doc, dict) else None
    if cap is None:
        if mode in _NO_OUTPUT:
            cap = 0
        elif isinstance(table_max_output, int) and table_max_output > 0:
            cap = table_max_output
    if cap is not None and isinstance(doc, dict):
        cap *= _choices(doc)
    return Bound(input_tokens, cap)


def _output_cap(doc: dict[str, Any]) -> int | None:
    for name in _CAPS:
        value = doc.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    for outer, name in _NESTED_CAPS:
        section = doc.get(outer)
        if isinstance(section, dict):
            value = section.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                budget = (section.get("thinkingConfig") or {}).get("thinkingBudget")
                return value + (budget if isinstance(budget, int) and budget > 0 else 0)
    return None


def _choices(doc: dict[str, Any]) -> int:
    for name in _CHOICES:
        value = doc.get(name)
        if value is None and isinstance(doc.get("generationConfig"), dict):
            value = doc["generationConfig"].get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return value
    return 1


ATTO_PER_NANO = 10**9


def dearest(prices: dict[str, Any]) -> tuple[int, int]:
    """The dearest input-side and output-side rates an entry lists, in attodollars (10^-18
    USD) per token: whole numbers, so a request's cost is integer arithmetic."""
    def atto(value: Any) -> int:
        return int(Decimal(str(value)).scaleb(18).to_integral_value(rounding=ROUND_CEILING))
    dearest_in = max((atto(v) for k, v in prices.items()
                      if k.startswith(("input_cost_per_token", "cache_creation_input_token_cost",
                                       "cache_read_input_token_cost"))), default=0)
    dearest_out = max((atto(v) for k, v in prices.items()
                       if k.startswith(("output_cost_per_token",
                                        "output_cost_per_reasoning_token"))), default=0)
    return dearest_in, dearest_out


def cost_nano(rates: tuple[int, int], b: Bound) -> int:
    """Every input token at the dearest input-side rate, every output token at the dearest
    output-side rate, rounded up to the nanodollar."""
    assert b.output_tokens is not None
    atto = b.input_tokens * rates[0] + b.output_tokens * rates[1]
    return -(-atto // ATTO_PER_NANO)
