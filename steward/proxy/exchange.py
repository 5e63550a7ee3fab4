"""One object per proxied exchange, carried through the pipeline's stages (see pipeline.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, cast

from steward.bodies.writer import Capture
from steward.budgets.governor import Admission
from steward.ids import uuid7
from steward.pricing.pricer import Pricer
from steward.providers import Meter, Route
from steward.providers.base import UpstreamAuth
from steward.providers.usage import Reading
from steward.proxy.routing import Upstream
from steward.records.record import Record, rfc3339
from steward.secrets.gateway_keys import GatewayKey


@dataclass(slots=True)
class Exchange:
    method: str
    path: str
    query: bytes
    raw_path: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # as the caller sent them
    id: str = field(default_factory=lambda: str(uuid7()))
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    upstream: Upstream | None = None
    route: Route | None = None
    key: GatewayKey | None = None
    auth: UpstreamAuth | None = None  # signs the request just before it is sent (Bedrock…)
    tags: dict[str, str] = field(default_factory=dict)
    request_model: str | None = None
    status: int | None = None
    stream: bool = False
    first_byte_at: float | None = None
    stream_end_at: float = 0.0  # the loop-clock time max_stream_duration cuts the response
    finished_at: float | None = None
    meter: Meter | None = None
    reading: Reading | None = None
    error: str | None = None
    capture: Capture | None = None  # kept only when bodies are stored
    buffered: int = 0  # request-body bytes this exchange counts against the shared cap
    body_ref: str | None = None
    body_error: str | None = None  # why no body was kept (bodies.min_free)
    admission: Admission | None = None  # budgets and rate limits reserved, to settle
    client_gone: bool = False
    encoded_slash: bool = False  # the raw path has %2F: the routed format must accept it
    responded: bool = False  # response headers sent (or Steward's error answer decided)
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    error_body: bytes | None = None  # Steward's own error answer, in the provider's shape
    # The last messages of the response, sent once the record is written; empty: none (the
    # connection is cut, as the upstream's was, or the caller is gone).
    ending: list[dict[str, Any]] = field(default_factory=list)

    def elapsed_ms(self, at: float | None) -> float | None:
        return None if at is None else round((at - self.t0) * 1000, 3)

    def record(self, pricer: Pricer, node: str = "") -> Record:
        """The metadata record: counts, timings, tags and cost; never prompt or completion
        text. Fields and their meaning: records.record.Record."""
        reading = self.reading or Reading()
        finished = self.finished_at or time.perf_counter()
        record = {
            "id": self.id,
            "ts": rfc3339(self.started_at),
            "node": node,
            "api_key_id": self.key.id if self.key else None,
            "api_key_uuid": self.key.uuid if self.key else None,
            "majordomo_key_id": self.key.majordomo_key_id if self.key else None,
            "provider": self.upstream.name if self.upstream else None,
            "format": self.upstream.fmt.name if self.upstream else None,
            "endpoint": self.route.endpoint if self.route else None,
            "method": self.method,
            "path": self.path,
            "model": self.request_model or (self.route.model if self.route else None),
            "response_model": reading.response_model,
            "service_tier": reading.service_tier,
            "stream": self.stream,
            "status": self.status,
            **reading.usage.as_dict(),
            "latency_ms": self.elapsed_ms(finished),
            "ttft_ms": self.elapsed_ms(self.first_byte_at) if self.stream else None,
            "tags": {**(self.key.tags if self.key else {}), **self.tags},
            "error": self.error or reading.error,
            "body_ref": self.body_ref,
            "body_error": self.body_error,
        }
        record.update(pricer.cost(record))
        return cast(Record, record)
