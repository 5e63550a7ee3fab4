"""A request's bodies fetched through Steward from S3 (moto's server), on a loopback admin
listener that asks for no token."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai

from tests.support.daemon import Daemon, cli, provider_env
from tests.support.fake_upstream import TEXT_PIECES, FakeUpstream
from tests.support.storage_servers import MotoS3
from tests.support.waiting import wait_for

PROMPT = "Which bucket holds this prompt?"


def test_bodies_from_s3(fresh_home: tuple[Path, str], upstream: FakeUpstream) -> None:
    home, key = fresh_home
    s3 = MotoS3().start()
    try:
        s3.client().create_bucket(Bucket="llm-bodies")
        cli("bucket", "set", "s3://llm-bodies/steward", "--endpoint-url", s3.url, "--region",
            "us-east-1", "--access-key-id", "AKIAFAKE", home=home, input="fake-secret\n")
        daemon = Daemon(home, env=provider_env(upstream.url)).start()
        try:
            client = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk-caller",
                                   default_headers={"X-Majordomo-Key": key}, max_retries=0)
            stream = client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": PROMPT}], stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream) == \
                "".join(TEXT_PIECES)
            record = wait_for(lambda: daemon.records(), what="the record")[0]
            assert record["body_ref"].startswith("s3://llm-bodies/steward/")
            objects = s3.client()
            wait_for(lambda: objects.list_objects_v2(Bucket="llm-bodies").get("KeyCount"),
                     what="the body in the bucket")
            url = f"{daemon.admin_url}/api/requests/{record['id']}"
            wait_for(lambda: httpx.get(url).status_code == 200, what="the record indexed")
            body = httpx.get(url + "/body")  # loopback: no token asked
            assert body.status_code == 200 and body.headers["cache-control"] == "no-store"
            view = body.json()
            assert view["available"] and view["error"] is None
            assert view["request"]["messages"][0]["content"] == PROMPT
            assert view["stream"] and view["response_text"] == "".join(TEXT_PIECES)
            assert "fake-secret" not in json.dumps(view)
        finally:
            daemon.stop()
    finally:
        s3.stop()
