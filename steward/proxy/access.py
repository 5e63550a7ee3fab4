"""What a gateway key may reach, and what a request without a valid one costs: nothing that grows.

A key reaches its provider's inference endpoints; anything else on the provider's host (files,
batches, fine-tuning, account administration) only with the scope it was created with, since
Steward would otherwise lend the operator's stored provider key to it. A refused caller with no
valid key gets no record, no metric series of its own and at most one log line per interval.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from steward.errors import GatewayError
from steward.providers import Route
from steward.secrets.gateway_keys import GatewayKey

log = logging.getLogger("steward.access")
REFUSAL_REASONS = ("missing", "invalid")
LOG_INTERVAL = 10.0  # seconds between two log lines about refused requests


def authorize(key: GatewayKey, provider: str, route: Route, method: str, path: str) -> None:
    """403, naming the scope to grant, for a route outside inference and the key's scopes."""
    scope = route.scope
    if scope is None or scope in key.scopes:
        return
    what = "endpoints other than inference, files, batches and fine-tuning" \
        if scope == "admin" else f"{scope} endpoints"
    raise GatewayError(403, f"this gateway key may not call {provider} {what} ({method} "
                       f"{path[:200]}): create a key with `steward keys add NAME --allow "
                       f"{scope}`")


class Refusals:
    """Requests refused for a missing or invalid gateway key: one counter, and a log line at
    most every LOG_INTERVAL seconds that says how many it did not log."""

    def __init__(self, count: Callable[[str], None], interval: float = LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.count, self.interval, self.clock = count, interval, clock
        self.next_line = 0.0
        self.suppressed = 0

    def refused(self, reason: str, method: str, path: str, client: str | None) -> None:
        self.count(reason)
        now = self.clock()
        if now < self.next_line:
            self.suppressed += 1
            return
        self.next_line = now + self.interval
        more, self.suppressed = self.suppressed, 0
        log.warning("refused %s without a valid gateway key (%s) from %s: %s %s%s",
                    "a request", reason, client or "unknown", method, path[:100],
                    f"; {more} more refused since the last such line" if more else "")
