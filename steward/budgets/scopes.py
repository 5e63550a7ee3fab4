"""What a budget or rate limit applies to: `key:<id>`, `tag:<name>=<value>`, `provider:<name>`,
`model:<name>` or `global`, and which of them a request falls under."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from steward.errors import StewardError

KINDS = ("key", "tag", "provider", "model", "global")
PERIODS = ("day", "week", "month", "total")


def parse(text: str) -> tuple[str, str]:
    """(kind, rest) of a scope as an operator writes it; tag names are case-insensitive, as
    the X-Majordomo-<name> headers they come from are."""
    text = text.strip()
    if text == "global":
        return "global", ""
    kind, sep, rest = text.partition(":")
    rest = rest.strip()
    if not sep or kind not in KINDS or kind == "global" or not rest:
        raise StewardError(f"scope {text!r}: use key:<name or id>, tag:<name>=<value>, "
                           "provider:<name>, model:<name> or global")
    if kind == "tag":
        name, eq, value = rest.partition("=")
        if not eq or not name.strip() or not value.strip():
            raise StewardError(f"scope {text!r}: a tag scope is tag:<name>=<value>")
        rest = f"{name.strip().lower()}={value.strip()}"
    return kind, rest


def applicable(key_id: str, key_tags: Mapping[str, str], header_tags: Mapping[str, str],
               provider: str, model: str | None) -> list[str]:
    """Every scope a request falls under. A key's own tags always count: a caller's header
    can add tag scopes but never move the request out of its key's."""
    found = ["global", f"key:{key_id}", f"provider:{provider}"]
    if model:
        found.append(f"model:{model}")
    tags = {f"tag:{name.lower()}={value}" for name, value in key_tags.items()}
    tags.update(f"tag:{name}={value}" for name, value in header_tags.items())
    found.extend(sorted(tags))
    return found


def period_start(period: str, now: float) -> tuple[str, float | None]:
    """The period `now` falls in (its name in the database) and when the next one starts
    (None: a total budget never resets). Periods are UTC: 00:00, Monday, the 1st."""
    if period == "total":
        return "total", None
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif period == "month":
        start = day.replace(day=1)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise StewardError(f"period {period!r}: use one of {', '.join(PERIODS)}")
    return start.date().isoformat(), end.timestamp()
