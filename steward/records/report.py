"""`steward usage`: requests, tokens, cost and latency per group, from the local spool."""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from steward.config import parse_duration
from steward.errors import StewardError
from steward.records.record import Record

GROUPINGS = ("model", "provider", "key", "tag:NAME")


def parse_since(text: str, now: float | None = None) -> float:
    """'24h', '7d' (a span back from now) or a date/time ('2026-11-01', ISO 8601)."""
    now = time.time() if now is None else now
    if re.fullmatch(r"\d+(\.\d+)?\s*[a-z]+", text.strip().lower()):
        try:
            return now - parse_duration(text)
        except ValueError:
            pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise StewardError(f"--since {text!r}: use a span such as 24h or 7d, or a date "
                           "such as 2026-11-01") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def record_time(record: Record) -> float:
    return datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()


def check_grouping(by: str) -> None:
    """Refuse an unknown --by at once, whether or not there are records to group."""
    if by not in ("model", "provider", "key") and not (by.startswith("tag:") and len(by) > 4):
        raise StewardError(f"--by {by!r}: use one of {', '.join(GROUPINGS)}")


def group_of(record: Record, by: str, key_names: dict[str, str]) -> str:
    if by == "model":
        return record.get("response_model") or record.get("model") or "(none)"
    if by == "provider":
        return record.get("provider") or "(none)"
    if by == "key":
        key_id = record.get("api_key_id")
        return key_names.get(key_id, key_id) if key_id else "(no key)"
    if by.startswith("tag:") and len(by) > 4:
        return str((record.get("tags") or {}).get(by[4:], "(untagged)"))
    raise StewardError(f"--by {by!r}: use one of {', '.join(GROUPINGS)}")


@dataclass
class Group:
    name: str
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost: Decimal = Decimal(0)
    unpriced: int = 0
    latencies: list[float] = field(default_factory=list)

    def add(self, record: Record) -> None:
        self.requests += 1
        for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens"):
            setattr(self, name, getattr(self, name) + (record.get(name) or 0))
        if record.get("cost") is None:
            self.unpriced += 1
        else:
            self.cost += Decimal(str(record["cost"]))
        if record.get("latency_ms") is not None:
            self.latencies.append(float(record["latency_ms"]))

    def percentile(self, q: int) -> float | None:
        if not self.latencies:
            return None
        if len(self.latencies) == 1:
            return self.latencies[0]
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1]

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.name, "requests": self.requests,
                "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cache_read_tokens": self.cache_read_tokens,
                "cache_write_tokens": self.cache_write_tokens, "cost": str(self.cost),
                "unpriced_requests": self.unpriced, "p50_latency_ms": self.percentile(50),
                "p95_latency_ms": self.percentile(95)}


def summarize(records: Iterable[Record], by: str, since: float,
              key_names: dict[str, str]) -> tuple[list[Group], Group]:
    groups: dict[str, Group] = {}
    total = Group("total")
    for record in records:
        if record_time(record) < since:
            continue
        name = group_of(record, by, key_names)
        groups.setdefault(name, Group(name)).add(record)
        total.add(record)
    ordered = sorted(groups.values(), key=lambda g: (-g.cost, -g.requests, g.name))
    return ordered, total
