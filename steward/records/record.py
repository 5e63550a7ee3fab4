"""The metadata record: one per request, what happened and what it cost, never prompt text.

Written once by the proxy's account stage; read as this type by the spool, the upload
encodings, `steward usage`, the metrics and the access log. The README's field list is checked
against FIELDS by a test, so the documentation cannot drift from the code.
"""

from __future__ import annotations

import datetime
from typing import TypedDict


class Tokens(TypedDict):
    """Token counts, the same meaning for every provider; None: the provider did not say."""

    input_tokens: int | None  # every input token, cached or not
    output_tokens: int | None  # reasoning included
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    cache_write_5m_tokens: int | None
    cache_write_1h_tokens: int | None
    reasoning_tokens: int | None
    tool_use_prompt_tokens: int | None


class Cost(TypedDict):
    """US dollars as decimal strings (computed in Decimal), and how they were found."""

    cost: str | None
    input_cost: str | None
    output_cost: str | None
    pricing_status: str | None  # ok, override, unknown_model, no_usage
    pricing_model: str | None  # the table entry used
    pricing_version: str | None  # the table's version@date


class Record(Tokens, Cost):
    id: str  # UUIDv7, also the X-Majordomo-Request-Id response header
    ts: str  # RFC 3339, UTC, milliseconds: when the request arrived
    node: str  # server.node_name: which instance served it
    api_key_id: str | None
    api_key_uuid: str | None
    majordomo_key_id: str | None
    provider: str | None  # the configured upstream's name
    format: str | None  # its wire format
    endpoint: str | None  # a label from the format's fixed set (bounded metrics)
    method: str
    path: str
    model: str | None  # requested
    response_model: str | None  # what the provider says answered
    service_tier: str | None
    stream: bool
    status: int | None  # the status the caller saw
    latency_ms: float | None
    ttft_ms: float | None  # streams only: to the first chunk
    tags: dict[str, str]  # the key's tags, then X-Majordomo-<name> headers
    error: str | None  # what went wrong, as the caller saw it
    body_ref: str | None  # the body object's full URL
    body_error: str | None  # why no body was kept


# Every field, in the order a record is written.
FIELDS: tuple[str, ...] = (
    "id", "ts", "node", "api_key_id", "api_key_uuid", "majordomo_key_id", "provider", "format",
    "endpoint", "method", "path", "model", "response_model", "service_tier", "stream", "status",
    *Tokens.__annotations__, "latency_ms", "ttft_ms", "tags", "error", "body_ref", "body_error",
    *Cost.__annotations__,
)


def rfc3339(ts: float) -> str:
    """UTC with milliseconds: sortable, and readable by any tool."""
    moment = datetime.datetime.fromtimestamp(ts, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
