"""How long to wait before sending again: the server's Retry-After, else jittered backoff.

Shared by the metadata uploader and the telemetry exporter, each with its own ceiling."""

from __future__ import annotations

import contextlib
import email.utils
import random
import time


def retry_delay(header: str | None, attempt: int, ceiling: float, base: float = 1.0) -> float:
    """Retry-After (seconds or an HTTP date) when given, else exponential backoff with full
    jitter; never more than `ceiling` seconds."""
    if header:
        if header.strip().isdigit():
            return min(float(header), ceiling)
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(header).timestamp()
            return min(max(when - time.time(), 0.0), ceiling)
    return random.uniform(0, min(ceiling, base * 2.0 ** min(attempt, 16)))
