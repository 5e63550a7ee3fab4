"""Requests and tokens per minute: an exact sliding window per scope, in one worker's memory.

Each admitted request leaves an entry (its time and its tokens) for 60 seconds; the N+1-th
request inside any 60 s is refused, with Retry-After the time until the oldest entry leaves.
Tokens are reserved at the request's worst case and settled to the real count, as budgets are.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW = 60.0


@dataclass(slots=True)
class Entry:
    at: float
    tokens: int
    gone: bool = False  # left the window: settling it changes nothing there


@dataclass(slots=True)
class Window:
    rpm: int | None
    tpm: int | None
    entries: deque[Entry] = field(default_factory=deque)
    tokens: int = 0

    def _expire(self, now: float) -> None:
        entries = self.entries
        while entries and entries[0].at <= now - WINDOW:
            entry = entries.popleft()
            entry.gone = True
            self.tokens -= entry.tokens

    def refusal(self, tokens: int, now: float) -> tuple[str, int] | None:
        """(what is exceeded, seconds until it would fit), or None when the request fits."""
        self._expire(now)
        entries = self.entries
        if self.rpm is not None and len(entries) >= self.rpm:
            return (f"{self.rpm} requests per minute",
                    _seconds(entries[len(entries) - self.rpm].at + WINDOW - now))
        if self.tpm is not None and self.tokens + tokens > self.tpm:
            if tokens > self.tpm:
                return f"{self.tpm} tokens per minute (this request may use {tokens})", 0
            freed, excess = 0, self.tokens + tokens - self.tpm
            for entry in entries:
                freed += entry.tokens
                if freed >= excess:
                    return f"{self.tpm} tokens per minute", _seconds(entry.at + WINDOW - now)
        return None

    def admit(self, tokens: int, now: float) -> Entry:
        entry = Entry(now, tokens)
        self.entries.append(entry)
        self.tokens += tokens
        return entry

    def settle(self, entry: Entry, tokens: int) -> None:
        """The real count replaces the reservation, while the entry is still in the window."""
        if not entry.gone:
            self.tokens += tokens - entry.tokens
        entry.tokens = tokens


def _seconds(delay: float) -> int:
    return max(1, math.ceil(delay))
