"""The operator's bucket: settings from [bodies] plus sealed credentials, and a probe."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass

from steward.bodies.stores import BodyStore, StoreSettings
from steward.config import Config
from steward.secrets import provider_keys
from steward.secrets.crypto import Vault

CREDENTIALS = "bucket-credentials"  # the sealed secret's name


def bucket_settings(config: Config, conn: sqlite3.Connection, vault: Vault) -> StoreSettings:
    b = config.bodies
    keys = provider_keys.get_secret(conn, vault, CREDENTIALS)
    creds = json.loads(keys) if keys else {}
    return StoreSettings(url=config.bodies_url(), region=b.region, endpoint_url=b.endpoint_url,
                         sse=b.sse, kms_key_id=b.kms_key_id, credentials_file=b.credentials_file,
                         access_key_id=creds.get("access_key_id"),
                         secret_access_key=creds.get("secret_access_key"),
                         fsync_each=config.bodies_fsync_interval == 0)


def store_credentials(conn: sqlite3.Connection, vault: Vault, access_key_id: str,
                      secret_access_key: str) -> None:
    provider_keys.set_secret(conn, vault, CREDENTIALS, "bucket-credentials", json.dumps(
        {"access_key_id": access_key_id, "secret_access_key": secret_access_key}))


@dataclass
class ProbeResult:
    ok: bool
    step: str
    detail: str


def _likely_cause(exc: Exception) -> str:
    text = f"{exc.__class__.__name__}: {exc}"
    # Without URLs: a probe object's random name can hold "401" or "404" (it once did).
    lowered = " ".join(w for w in text.lower().split() if "://" not in w)
    if any(s in lowered for s in ("nosuchbucket", "bucket does not exist", "not found")) or \
            re.search(r"\b404\b", lowered):
        cause = "the bucket does not exist"
    elif any(s in lowered for s in ("accessdenied", "forbidden", "permission")) or \
            re.search(r"\b403\b", lowered):
        cause = "permission denied for these credentials"
    elif any(s in lowered for s in ("credential", "signature", "invalidaccesskeyid",
                                    "unauthenticated")) or re.search(r"\b401\b", lowered):
        cause = "the credentials are missing or wrong"
    elif any(s in lowered for s in ("connect", "timeout", "resolve", "endpoint", "network")):
        cause = "the storage endpoint cannot be reached"
    else:
        cause = "unexpected error"
    return f"{cause} ({text[:300]})"


def probe(store: BodyStore) -> ProbeResult:
    """Write, read back and delete a small object; say which step failed and why."""
    key = f"steward-probe/{uuid.uuid4().hex}.json.gz"
    data = gzip.compress(json.dumps({"probe": True, "at": time.time()}).encode())
    for step, action in (("write", lambda: store.put(key, data)),
                         ("read", lambda: store.get(key)),
                         ("delete", lambda: store.delete(key))):
        try:
            got = action()
        except Exception as exc:  # every SDK error type means the step failed
            return ProbeResult(False, step, _likely_cause(exc))
        if step == "read" and got != data:
            return ProbeResult(False, step, "the object read back differs from what was written")
    return ProbeResult(True, "all", f"wrote, read back and deleted {store.url(key)}")
