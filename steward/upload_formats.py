"""How a batch of spooled records is encoded for the control plane.

Both formats share the spool, the cursor and the retries; only the bytes on the wire differ.
"""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta
from typing import Any

from .config import Config
from .upload import Encoder, Uploader


def encode_ndjson(lines: bytes) -> tuple[bytes, dict[str, str]]:
    """The spool's own lines, gzipped: records are sent byte for byte as they were written."""
    return gzip.compress(lines, 6), {"Content-Type": "application/x-ndjson",
                                     "Content-Encoding": "gzip"}


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_butler(record: dict[str, Any]) -> dict[str, Any]:
    """A record in the field names of Majordomo's ingest API ("Butler").

    Majordomo counts Anthropic input as input + cache reads + cache writes, which is already
    what our input_tokens means.
    """
    requested = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
    latency = record.get("latency_ms") or 0.0
    return {
        "id": record["id"],
        "majordomo_api_key_id": record.get("api_key_id"),
        "provider": record.get("provider"),
        "model": record.get("response_model") or record.get("model"),
        "request_path": record.get("path"),
        "request_method": record.get("method"),
        "requested_at": _rfc3339(requested),
        "responded_at": _rfc3339(requested + timedelta(milliseconds=latency)),
        "response_time_ms": round(latency),
        "input_tokens": record.get("input_tokens"),
        "output_tokens": record.get("output_tokens"),
        "cached_tokens": record.get("cache_read_tokens"),
        "cache_creation_tokens": record.get("cache_write_tokens"),
        "input_cost": record.get("input_cost"),
        "output_cost": record.get("output_cost"),
        "total_cost": record.get("cost"),
        "status_code": record.get("status"),
        "error_message": record.get("error"),
        "raw_metadata": record.get("tags") or {},
        "body_s3_key": record.get("body_ref"),
        "model_alias_found": record.get("pricing_status") in ("ok", "override"),
    }


def encode_majordomo(lines: bytes) -> tuple[bytes, dict[str, str]]:
    records = [to_butler(json.loads(line)) for line in lines.splitlines() if line.strip()]
    return json.dumps({"records": records}).encode(), {"Content-Type": "application/json"}


ENCODERS: dict[str, tuple[Encoder, Any]] = {
    "ndjson": (encode_ndjson, lambda status: 200 <= status < 300),
    "majordomo": (encode_majordomo, lambda status: status == 200),  # Butler answers exactly 200
}

UPLOAD_TOKEN = "upload-token"  # the sealed secret's name


def make_uploader(config: Config, token: str | None) -> Uploader:
    meta = config.metadata
    encoder, ok = ENCODERS[meta.format]
    return Uploader(config.home / "spool", meta.upload_url, token, batch_size=meta.batch_size,
                    interval=meta.interval, retention=meta.retention,
                    max_spool_bytes=meta.max_spool_bytes, encoder=encoder, ok_statuses=ok)
