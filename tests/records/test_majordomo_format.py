"""The majordomo upload format, checked against the record Majordomo's control plane decodes.

A real daemon uploads to a loopback collector that serves the control plane's ingest path; each
batch it received is decoded by a Go program declaring Majordomo's ingest record (as the control
plane does, with Go's encoding/json) and by the same rules in Python.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from steward.config import build_config, load_config
from steward.db import legacy_key_uuid
from steward.errors import ConfigError
from steward.records.formats import MAJORDOMO_INGEST_PATH, majordomo_encoder, make_uploader
from tests.support.collector import MAJORDOMO_INGEST, Collector
from tests.support.daemon import Daemon, cli, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.majordomo_record import DecodeError, decode
from tests.support.waiting import wait_for

GO_PROGRAM = Path(__file__).parent / "go" / "majordomo_ingest"
TOKEN = "mdm_st_control-plane-token"
ORG = "0191b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"
MAJORDOMO_KEY = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


@pytest.fixture
def collector():
    started = Collector().start()
    yield started
    started.stop()


def go_decode(batches: list[bytes], tmp: Path) -> list[dict[str, Any]]:
    """Decode batches with the Go program; every record re-encoded by Go, in order."""
    go = shutil.which("go")
    if go is None:
        if os.environ.get("STEWARD_REQUIRE_GO_TEST") == "1":
            pytest.fail("STEWARD_REQUIRE_GO_TEST=1 but `go` is not installed (Debian: golang-go)")
        pytest.skip("`go` is not installed (Debian: golang-go); the Python rules still ran")
    env = {**os.environ, "GOCACHE": str(tmp / "gocache"), "GOPATH": str(tmp / "gopath"),
           "GOFLAGS": "-mod=mod", "GOPROXY": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    binary = tmp / "majordomo_ingest"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_PROGRAM, env=env, check=True,
                   capture_output=True, timeout=300)
    files = []
    for index, batch in enumerate(batches):
        path = tmp / f"batch-{index}.json"
        path.write_bytes(batch)
        files.append(str(path))
    done = subprocess.run([str(binary), *files], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"Go could not decode a batch: {done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines()]


def test_go_program_refuses_what_the_control_plane_refuses(tmp_path: Path) -> None:
    """The checker itself: the two faults of the old format fail in Go as in the issue."""
    good = {"id": str(uuid.uuid4()), "requested_at": "2026-01-01T00:00:00.000Z",
            "responded_at": "2026-01-01T00:00:00.250Z", "input_cost": 0.5}
    assert go_decode([json.dumps({"records": [good]}).encode()], tmp_path)[0]["input_cost"] == 0.5
    for bad in ({**good, "input_cost": "0.5"}, {**good, "majordomo_api_key_id": "key_e7f110c3a96b"},
                {**good, "api_key_id": "x"}):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"records": [bad]}))
        done = subprocess.run([str(tmp_path / "majordomo_ingest"), str(path)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, bad
        with pytest.raises(DecodeError):
            decode(path.read_bytes())


def legacy_record(**extra: Any) -> dict[str, Any]:
    """A record as Steward spooled it before keys had UUIDs."""
    return {"id": "01937f4c-8a2b-7c3d-9e4f-5a6b7c8d9e0f", "ts": "2026-11-28T10:00:00.000Z",
            "api_key_id": "key_e7f110c3a96b", "provider": "openai", "method": "POST",
            "path": "/v1/chat/completions", "model": "gpt-4o", "response_model": "gpt-4o-x",
            "status": 200, "input_tokens": 10, "output_tokens": 5, "cache_read_tokens": 0,
            "cache_write_tokens": 0, "latency_ms": 12.5, "tags": {"team": "ml", "run": "7"},
            "error": None, "body_ref": "s3://bucket/pfx/key_e7f110c3a96b/2026/11/28/x.json.gz",
            "cost": "0.00172", "input_cost": "0.00022", "output_cost": "0.0015",
            "pricing_status": "ok", **extra}


def test_python_rules_and_the_encoder() -> None:
    encode = majordomo_encoder(("team",), ORG, "file:///home/bodies")
    body, headers = encode((json.dumps(legacy_record()) + "\n").encode())
    assert headers == {"Content-Type": "application/json"}
    [record] = decode(body)
    assert record["input_cost"] == 0.00022 and record["total_cost"] == 0.00172
    # Spooled before UUIDs: the UUID the migration gives that key, derived from its old id.
    assert record["majordomo_api_key_id"] == legacy_key_uuid("key_e7f110c3a96b")
    assert record["body_s3_key"] == "pfx/key_e7f110c3a96b/2026/11/28/x.json.gz"
    assert record["indexed_metadata"] == {"team": "ml"}
    assert record["raw_metadata"] == {"team": "ml", "run": "7"}
    assert record["org_id"] == ORG and record["model"] == "gpt-4o-x"
    assert record["response_time_ms"] == 12 and record["responded_at"] == "2026-11-28T10:00:00.012Z"
    local = legacy_record(body_ref="file:///home/bodies/key_a/2026/11/28/x.json.gz",
                          api_key_uuid=str(uuid.uuid4()), majordomo_key_id=MAJORDOMO_KEY,
                          cost=None, input_cost=None, output_cost=None, input_tokens=None,
                          pricing_status="no_usage", status=502, error="upstream refused",
                          tags={})
    [record] = decode(encode((json.dumps(local) + "\n").encode())[0])
    assert record["body_s3_key"] == "key_a/2026/11/28/x.json.gz"
    assert record["majordomo_api_key_id"] == MAJORDOMO_KEY
    assert (record["total_cost"], record["input_tokens"], record["model_alias_found"]) == (
        0.0, 0, False)
    assert record["error_message"] == "upstream refused"
    assert "raw_metadata" not in record and "indexed_metadata" not in record
    # What Steward sent before this format was fixed is refused, as Go refuses it.
    for old in ({"input_cost": "0.00022"}, {"majordomo_api_key_id": "key_e7f110c3a96b"},
                {"response_time_ms": 12.5}, {"team": "ml"}):
        with pytest.raises(DecodeError):
            decode(json.dumps({"records": [{**record, **old}]}).encode())


def test_batches_are_capped_at_500(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli("init", home=home)
    env = {"STEWARD_METADATA__FORMAT": "majordomo", "STEWARD_METADATA__BATCH_SIZE": "5000",
           "STEWARD_METADATA__INDEXED_TAGS": "Team, feature"}
    config = load_config(home, env)
    assert config.metadata.indexed_tags == ("team", "feature")
    assert make_uploader(config, None).batch_size == 500
    assert make_uploader(load_config(home, {"STEWARD_METADATA__BATCH_SIZE": "5000"}),
                         None).batch_size == 5000  # ndjson has no such cap


def test_indexed_tags_and_org_id_settings(tmp_path: Path) -> None:
    meta = build_config(tmp_path, {"metadata": {"indexed_tags": ["Team", "team", "run"],
                                                "org_id": ORG}}, "t").metadata
    assert (meta.indexed_tags, meta.org_id) == (("team", "run"), ORG)
    for bad in ({"indexed_tags": "a b"}, {"indexed_tags": [1]}, {"org_id": "org_1"}):
        with pytest.raises(ConfigError):
            build_config(tmp_path, {"metadata": bad}, "t")


def test_upload_set_takes_the_control_planes_base_url(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli("init", home=home)

    def stored() -> str:
        return load_config(home, {}).metadata.upload_url

    cli("upload", "set", "https://cp.example.com/", "--format", "majordomo", home=home)
    assert stored() == "https://cp.example.com" + MAJORDOMO_INGEST_PATH
    cli("upload", "set", "https://cp.example.com" + MAJORDOMO_INGEST_PATH, home=home)
    assert stored() == "https://cp.example.com" + MAJORDOMO_INGEST_PATH
    cli("upload", "set", "https://collector.example.com/in", "--format", "ndjson", home=home)
    assert stored() == "https://collector.example.com/in"


def test_a_real_daemons_batches_decode_as_majordomo_records(
        fresh_home: tuple[Path, str], upstream: FakeUpstream, collector: Collector,
        tmp_path: Path) -> None:
    home, key = fresh_home
    mapped = cli("keys", "add", "mapped", "--majordomo-key-id", MAJORDOMO_KEY.upper(), "--json",
                 home=home)
    mapped_key = json.loads(mapped.stdout)["key"]
    cli("config", "set", "metadata.indexed_tags", "team", home=home)
    cli("config", "set", "metadata.org_id", ORG, home=home)
    cli("upload", "set", collector.base_url, "--format", "majordomo", "--token-stdin",
        home=home, input=TOKEN + "\n")
    keys = {k["name"]: k for k in json.loads(cli("keys", "list", "--json", home=home).stdout)}
    env = {**provider_env(upstream.url), "STEWARD_METADATA__INTERVAL": "0.1",
           "STEWARD_METADATA__BATCH_SIZE": "2"}
    daemon = Daemon(home, env=env).start()
    try:
        with httpx.Client(base_url=daemon.url, timeout=30) as client:
            for n in range(2):
                assert client.post("/v1/chat/completions",
                                   json={"model": "gpt-4o", "messages": []},
                                   headers={"X-Majordomo-Key": key, "Authorization": "Bearer s",
                                            "X-Majordomo-Team": "ml",
                                            "X-Majordomo-Run": str(n)}).status_code == 200
            assert client.post("/v1/messages", json={"model": "claude-x"},
                               headers={"X-Majordomo-Key": mapped_key, "x-api-key": "k"}
                               ).status_code == 200
            assert client.post("/v1beta/models/gemini-2.5-flash:generateContent", json={},
                               headers={"X-Majordomo-Key": key, "x-goog-api-key": "k"}
                               ).status_code == 200
            assert client.post("/v1/chat/completions", json={"model": "gpt-4o"},
                               headers={"X-Majordomo-Key": key, "Authorization": "Bearer s",
                                        "X-Fake-Behavior": "status:400"}).status_code == 400
        wait_for(lambda: len(collector.accepted()) == 5, 15, "every record at the collector")
    finally:
        daemon.stop()
    spooled = {r["id"]: r for r in daemon.records()}
    assert all(u.path == MAJORDOMO_INGEST for u in collector.uploads)
    for upload in collector.uploads:
        assert upload.headers["Content-Type"] == "application/json"
        assert "Content-Encoding" not in upload.headers
        assert upload.headers["Authorization"] == f"Bearer {TOKEN}"
    batches = [u.raw for u in collector.uploads]
    python = [r for batch in batches for r in decode(batch)]
    assert {r["id"] for r in python} == set(spooled)
    for record in python:
        source = spooled[record["id"]]
        assert record["total_cost"] == (float(Decimal(source["cost"])) if source["cost"] else 0.0)
        assert record["org_id"] == ORG
        want_key = MAJORDOMO_KEY if source["api_key_id"] == keys["mapped"]["id"] else keys[
            "default"]["uuid"]
        assert record["majordomo_api_key_id"] == want_key
        assert record.get("indexed_metadata") == ({"team": "ml"} if source["tags"] else None)
        assert record["body_s3_key"] == source["body_ref"].split("/bodies/", 1)[1]
    assert any(r["total_cost"] > 0 for r in python)
    assert [r.get("error_message") is not None for r in python].count(True) == 1
    gemini = next(r for r in python if r["provider"] == "gemini")
    assert gemini["output_tokens"] == 35  # candidates 20 + thoughts 15: what Google bills
    decoded = go_decode(batches, tmp_path)
    assert [r["id"] for r in decoded] == [r["id"] for r in python]
    for go_record, record in zip(decoded, python, strict=True):
        for name in ("majordomo_api_key_id", "org_id", "input_cost", "output_cost",
                     "total_cost", "input_tokens", "output_tokens", "cached_tokens",
                     "status_code", "body_s3_key", "raw_metadata", "indexed_metadata"):
            assert go_record.get(name) == record.get(name), name


def _old_home(home: Path) -> str:
    """A home as a Steward without key UUIDs left it (schema 4); returns its key's old id."""
    cli("init", home=home)
    with sqlite3.connect(home / "steward.db") as conn:
        conn.executescript("DROP INDEX gateway_keys_uuid;"
                           "ALTER TABLE gateway_keys DROP COLUMN uuid;"
                           "ALTER TABLE gateway_keys DROP COLUMN majordomo_key_id;"
                           "DROP TABLE budgets; DROP TABLE budget_spend;"
                           "DROP TABLE budget_leases; DROP TABLE rate_limits;"
                           "DROP TABLE admin_tokens;"
                           "PRAGMA user_version = 4;")
        conn.execute("UPDATE gateway_keys SET id = 'key_0123456789ab'")
    return "key_0123456789ab"


def test_key_uuids_survive_migration_and_both_ids_work(tmp_path: Path) -> None:
    home = tmp_path / "home"
    old_id = _old_home(home)
    [migrated] = json.loads(cli("keys", "list", "--json", home=home).stdout)
    assert migrated["id"] == old_id and migrated["uuid"] == legacy_key_uuid(old_id)
    assert migrated["majordomo_key_id"] is None
    again = json.loads(cli("keys", "list", "--json", home=home).stdout)[0]
    assert again["uuid"] == migrated["uuid"]  # stored, not re-derived each time
    assert migrated["uuid"] in cli("keys", "list", home=home).stdout
    new = json.loads(cli("keys", "add", "new", "--json", home=home).stdout)
    assert new["id"].startswith("key_") and uuid.UUID(new["uuid"]).version == 7
    for scope in (old_id, migrated["uuid"]):
        cli("providers", "set", "openai", "--for", scope, "--api-key-stdin", home=home,
            input="sk-test-1234\n")
    scopes = [p["scope"] for p in json.loads(cli("providers", "list", "--json",
                                                 home=home).stdout)]
    assert scopes == [old_id]  # both spellings name the same key
    assert old_id in cli("keys", "revoke", migrated["uuid"].upper(), home=home).stdout
    assert new["id"] in cli("keys", "revoke", new["id"], home=home).stdout
    bad = cli("keys", "add", "x", "--majordomo-key-id", "key_e7f110c3a96b", home=home,
              check=False)
    assert bad.returncode != 0 and "not a UUID" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
