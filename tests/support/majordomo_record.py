"""Majordomo's ingest record and the rules Go's encoding/json applies to it, in Python.

The same facts as tests/records/go/majordomo_ingest/main.go (field names, Go types, json tags of the
control plane's ingest.MetadataRecord), for machines without Go. Where Go is lenient (it matches
names case-insensitively) this is strict, so anything that passes here decodes there.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

MAX_RECORDS = 500

# json tag -> Go type (pointer types are written with a leading '*').
FIELDS: dict[str, str] = {
    "id": "uuid.UUID",
    "user_id": "*uuid.UUID",
    "majordomo_api_key_id": "*uuid.UUID",
    "proxy_key_id": "*uuid.UUID",
    "provider_api_key_hash": "string",
    "provider_api_key_alias": "string",
    "provider": "string",
    "model": "string",
    "request_path": "string",
    "request_method": "string",
    "requested_at": "time.Time",
    "responded_at": "time.Time",
    "response_time_ms": "int",
    "input_tokens": "int",
    "output_tokens": "int",
    "cached_tokens": "int",
    "cache_creation_tokens": "int",
    "input_cost": "float64",
    "output_cost": "float64",
    "total_cost": "float64",
    "status_code": "int",
    "error_message": "*string",
    "raw_metadata": "map[string]interface{}",
    "indexed_metadata": "map[string]interface{}",
    "body_s3_key": "*string",
    "model_alias_found": "bool",
    "org_id": "*uuid.UUID",
    "experiment_id": "*uuid.UUID",
    "experiment_arm_id": "*uuid.UUID",
    "original_model": "*string",
}

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


class DecodeError(ValueError):
    pass


def _check(name: str, go_type: str, value: Any) -> None:
    if value is None:  # Go: null sets a pointer or map to nil and leaves anything else alone
        return
    kind = go_type.lstrip("*")
    ok = {
        "uuid.UUID": lambda: isinstance(value, str) and _UUID.fullmatch(value) is not None,
        "string": lambda: isinstance(value, str),
        "time.Time": lambda: isinstance(value, str) and _RFC3339.fullmatch(value) is not None,
        # Go's int takes only integer literals: 1.0 and true are refused.
        "int": lambda: type(value) is int,
        "float64": lambda: type(value) in (int, float),
        "bool": lambda: type(value) is bool,
        "map[string]interface{}": lambda: isinstance(value, dict),
    }[kind]()
    if not ok:
        raise DecodeError(f"json: cannot unmarshal {json.dumps(value)} into Go struct field "
                          f"MetadataRecord.records.{name} of type {go_type}")


def decode(body: bytes) -> list[dict[str, Any]]:
    """The records of one batch, or DecodeError for anything the control plane would refuse."""
    try:
        batch = json.loads(body)
    except ValueError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(batch, dict) or set(batch) != {"records"}:
        raise DecodeError(f"the batch must be {{\"records\": [...]}}, got keys "
                          f"{sorted(batch) if isinstance(batch, dict) else type(batch)}")
    records = batch["records"]
    if not isinstance(records, list):
        raise DecodeError("records is not an array")
    if len(records) > MAX_RECORDS:
        raise DecodeError(f"{len(records)} records in one batch; at most {MAX_RECORDS}")
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DecodeError(f"record {index} is not an object")
        for name, value in record.items():
            if name not in FIELDS:
                raise DecodeError(f"json: unknown field {name!r}")
            _check(name, FIELDS[name], value)
        if not record.get("id") or not record.get("requested_at") or datetime.fromisoformat(
                record.get("responded_at") or "0001-01-01T00:00:00Z") < datetime.fromisoformat(
                record["requested_at"]):
            raise DecodeError(f"record {index}: no id, or requested_at/responded_at missing "
                              "or reversed")
    return records
