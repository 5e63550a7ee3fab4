"""How a batch of spooled records is encoded for the control plane.

Both formats share the spool, the cursor and the retries; only the bytes on the wire differ.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from steward.config import Config
from steward.db import legacy_key_uuid
from steward.records.record import Record, rfc3339
from steward.records.upload import Encoder, Uploader


def encode_ndjson(lines: bytes) -> tuple[bytes, dict[str, str]]:
    """The spool's own lines, gzipped: records are sent byte for byte as they were written."""
    return gzip.compress(lines, 6), {"Content-Type": "application/x-ndjson",
                                     "Content-Encoding": "gzip"}


MAJORDOMO_INGEST_PATH = "/api/v1/steward/ingest/metadata"
MAJORDOMO_MAX_BATCH = 500  # what Majordomo's own steward sends at most per request


def majordomo_ingest_url(url: str) -> str:
    """The control plane's base URL with its ingest path appended; a full ingest URL is kept."""
    trimmed = url.rstrip("/")
    return trimmed if trimmed.endswith(MAJORDOMO_INGEST_PATH) else trimmed + MAJORDOMO_INGEST_PATH


def object_key(body_ref: str | None, local_root: str) -> str | None:
    """A body's key within its bucket: s3://bucket/k and gs://bucket/k give k; a local body
    gives its path under the bodies directory, which is the key it would have in a bucket."""
    if not body_ref:
        return None
    scheme, sep, rest = body_ref.partition("://")
    if not sep:
        return body_ref
    if scheme == "file":
        root = local_root.rstrip("/") + "/"
        return body_ref[len(root):] if body_ref.startswith(root) else unquote(rest)
    return unquote(rest.partition("/")[2])


def _key_uuid(record: Record) -> str | None:
    """The Majordomo API key id if the gateway key names one, else the key's own UUID.

    Records spooled before keys had UUIDs carry only the old id; the UUID the migration gave
    that key is derived from it, so they map to the same key."""
    if record.get("majordomo_key_id"):
        return record["majordomo_key_id"]
    if record.get("api_key_uuid"):
        return record["api_key_uuid"]
    old = record.get("api_key_id")
    return legacy_key_uuid(old) if old else None


def _cost(value: str | None) -> float:
    return float(Decimal(value)) if value is not None else 0.0


def to_butler(record: Record, indexed_tags: tuple[str, ...] = (), org_id: str = "",
              local_root: str = "") -> dict[str, Any]:
    """A record as Majordomo's ingest.MetadataRecord: its field names and Go types.

    Counts and costs are plain numbers (0 where Steward's record has null, as Majordomo's own
    steward sends), costs float64; optional fields are left out when empty, as its omitempty
    tags do. Majordomo counts Anthropic input as input + cache reads + cache writes, which is
    already what our input_tokens means.
    """
    requested = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
    latency = record.get("latency_ms") or 0.0
    tags = record.get("tags") or {}
    out: dict[str, Any] = {
        "id": record["id"],
        "majordomo_api_key_id": _key_uuid(record),
        "provider": record.get("provider") or "",
        "model": record.get("response_model") or record.get("model") or "",
        "request_path": record.get("path") or "",
        "request_method": record.get("method") or "",
        "requested_at": rfc3339(requested.timestamp()),
        "responded_at": rfc3339(requested.timestamp() + latency / 1000),
        "response_time_ms": round(latency),
        "input_tokens": record.get("input_tokens") or 0,
        "output_tokens": record.get("output_tokens") or 0,
        "cached_tokens": record.get("cache_read_tokens") or 0,
        "cache_creation_tokens": record.get("cache_write_tokens") or 0,
        "input_cost": _cost(record.get("input_cost")),
        "output_cost": _cost(record.get("output_cost")),
        "total_cost": _cost(record.get("cost")),
        "status_code": record.get("status") or 0,
        "error_message": record.get("error"),
        "raw_metadata": tags,
        "indexed_metadata": {k: v for k, v in tags.items() if k in indexed_tags},
        "body_s3_key": object_key(record.get("body_ref"), local_root),
        "model_alias_found": record.get("pricing_status") in ("ok", "override"),
        "org_id": org_id or None,
    }
    return {k: v for k, v in out.items() if v is not None and v != {}}


def majordomo_encoder(indexed_tags: tuple[str, ...] = (), org_id: str = "",
                      local_root: str = "") -> Encoder:
    """Plain JSON {"records": [...]}: Majordomo's client sends it uncompressed."""
    def encode(lines: bytes) -> tuple[bytes, dict[str, str]]:
        records = [to_butler(json.loads(line), indexed_tags, org_id, local_root)
                   for line in lines.splitlines() if line.strip()]
        return json.dumps({"records": records}).encode(), {"Content-Type": "application/json"}
    return encode


encode_majordomo = majordomo_encoder()


ENCODERS: dict[str, tuple[Encoder, Any]] = {
    "ndjson": (encode_ndjson, lambda status: 200 <= status < 300),
    "majordomo": (encode_majordomo, lambda status: status == 200),  # Butler answers exactly 200
}

UPLOAD_TOKEN = "upload-token"  # the sealed secret's name


def make_uploader(config: Config, token: str | None) -> Uploader:
    meta = config.metadata
    encoder, ok = ENCODERS[meta.format]
    batch_size = meta.batch_size
    if meta.format == "majordomo":
        encoder = majordomo_encoder(meta.indexed_tags, meta.org_id, config.bodies_url())
        batch_size = min(batch_size, MAJORDOMO_MAX_BATCH)
    return Uploader(config.home / "spool", meta.upload_url, token, batch_size=batch_size,
                    interval=meta.interval, retention=meta.retention,
                    max_spool_bytes=meta.max_spool_bytes, encoder=encoder, ok_statuses=ok)
