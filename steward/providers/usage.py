"""Token usage normalised across providers.

Conventions (so every record means the same thing whatever the provider):
- input_tokens: every input token the provider counted, cached or not (Anthropic's
  input + cache reads + cache writes; OpenAI's prompt tokens; Gemini's prompt tokens).
- cache_read_tokens / cache_write_tokens: the parts of input_tokens read from or written to a
  cache; Anthropic's writes split by TTL into cache_write_5m_tokens / cache_write_1h_tokens.
- output_tokens: every output token billed, reasoning included; reasoning_tokens is that part.
- None means the provider did not say: never a guessed zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from steward.records.record import Tokens


@dataclass
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    reasoning_tokens: int | None = None
    tool_use_prompt_tokens: int | None = None

    def as_dict(self) -> Tokens:
        """The record's token fields (a plain dict built by hand: asdict deep-copies)."""
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_read_tokens": self.cache_read_tokens,
                "cache_write_tokens": self.cache_write_tokens,
                "cache_write_5m_tokens": self.cache_write_5m_tokens,
                "cache_write_1h_tokens": self.cache_write_1h_tokens,
                "reasoning_tokens": self.reasoning_tokens,
                "tool_use_prompt_tokens": self.tool_use_prompt_tokens}


@dataclass
class Reading:
    """What one response told us: usage, the model that answered, and any error it reported.

    response_id and finish_reasons are for telemetry spans only, not the metadata record."""

    usage: Usage = field(default_factory=Usage)
    response_model: str | None = None
    service_tier: str | None = None
    error: str | None = None
    response_id: str | None = None
    finish_reasons: tuple[str, ...] = ()
    # The stream's own last event was seen: a caller that hangs up after it had everything.
    complete: bool = False


def as_int(value: Any) -> int | None:
    """A token count from JSON: ints only (bools and strings are not counts)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def dig(obj: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj
