"""`steward bucket lifecycle`: the S3 and GCS rule that matches bodies.retention, printed or
set on a real bucket (moto_server, fake-gcs-server), keeping the bucket's other rules."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.daemon import cli
from tests.support.storage_servers import MotoS3, gcs_client, gcs_server

OTHER_S3_RULE = {"ID": "logs", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
                 "Expiration": {"Days": 3}}


def test_s3_rule_printed_then_applied(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    s3 = MotoS3().start()
    try:
        client = s3.client()
        client.create_bucket(Bucket="llm-bodies")
        client.put_bucket_lifecycle_configuration(
            Bucket="llm-bodies", LifecycleConfiguration={"Rules": [OTHER_S3_RULE]})
        cli("bucket", "set", "s3://llm-bodies/steward", "--endpoint-url", s3.url, "--region",
            "us-east-1", "--access-key-id", "AKIAFAKE", home=home, input="secret\n")
        cli("config", "set", "bodies.retention", "45d", home=home)
        printed = json.loads(cli("bucket", "lifecycle", home=home).stdout)
        assert printed["Filter"] == {"Prefix": "steward/"}
        assert printed["Expiration"] == {"Days": 45}
        assert client.get_bucket_lifecycle_configuration(
            Bucket="llm-bodies")["Rules"] == [OTHER_S3_RULE]  # printing changes nothing
        cli("bucket", "lifecycle", "--apply", home=home)
        cli("bucket", "lifecycle", "--apply", "--days", "10", home=home)  # replaces ours
        rules = {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(
            Bucket="llm-bodies")["Rules"]}
        assert set(rules) == {"logs", "steward-bodies-retention"}
        assert rules["steward-bodies-retention"]["Expiration"] == {"Days": 10}
        assert rules["steward-bodies-retention"]["Filter"] == {"Prefix": "steward/"}
    finally:
        s3.stop()


def test_gcs_rule_applied(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    server = gcs_server()
    endpoint = f"http://127.0.0.1:{server.port}"
    try:
        gcs_client(endpoint).create_bucket("llm-bodies")
        cli("bucket", "set", "gs://llm-bodies/steward", "--endpoint-url", endpoint, home=home)
        printed = json.loads(cli("bucket", "lifecycle", home=home).stdout)
        assert printed == {"action": {"type": "Delete"},
                           "condition": {"age": 30, "matchesPrefix": ["steward/"]}}
        # fake-gcs-server accepts the bucket PATCH but keeps no bucket attributes
        # (fsouza/fake-gcs-server#1025), so only the round trip can be checked here.
        done = cli("bucket", "lifecycle", "--apply", home=home)
        assert "bodies expire after 30 days" in done.stdout
    finally:
        server.stop()


def test_local_store_and_retention_off_are_told(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    local = cli("bucket", "lifecycle", home=home, check=False)
    assert local.returncode == 1 and "bodies.retention" in local.stderr
    assert local.stderr.count("\n") == 1
