"""Bodies in the operator's bucket: local directory, S3 (moto_server), GCS (fake-gcs-server)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import anthropic
import httpx
import openai
import pytest

from steward.bodies.stores import LocalStore
from steward.bodies.writer import BodyWriter, Capture, build_document
from tests.support.daemon import Daemon, cli, free_port, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.storage_servers import MotoS3, gcs_client, gcs_server
from tests.support.waiting import wait_for

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
S3_SECRET = "fake-secret-9d8c7b6a"


def read_local(ref: str) -> dict[str, Any]:
    return json.loads(gzip.decompress(Path(unquote(urlparse(ref).path)).read_bytes()))


def local_exists(ref: str) -> bool:
    return Path(unquote(urlparse(ref).path)).exists()


def check_documents(daemon: Daemon, key: str, read: Any, upstream: FakeUpstream) -> None:
    """Shared checks: an SDK chat call and a streamed Anthropic call, both stored exactly."""
    oa = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk-openai-callers-secret",
                       max_retries=0, default_headers={"X-Majordomo-Key": key})
    oa.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    an = anthropic.Anthropic(base_url=daemon.url, api_key="sk-ant-callers-secret",
                             max_retries=0, default_headers={"X-Majordomo-Key": key})
    list(an.messages.create(model="claude-haiku-4-5", max_tokens=10, messages=MESSAGES,
                            stream=True))
    direct = httpx.post(upstream.url + "/v1/messages", json={
        "model": "claude-haiku-4-5", "max_tokens": 10, "messages": MESSAGES, "stream": True})
    chat, stream = daemon.records()[-2:]
    chat_doc = wait_for(lambda: read(chat["body_ref"]), 15, "the chat body")
    stream_doc = wait_for(lambda: read(stream["body_ref"]), 15, "the stream body")

    assert chat_doc["schema"] == 1 and chat_doc["id"] == chat["id"]
    assert chat_doc["api_key_id"] == chat["api_key_id"] and chat_doc["provider"] == "openai"
    assert chat_doc["request"]["body_encoding"] == "json"
    assert chat_doc["request"]["body"]["messages"] == MESSAGES
    assert chat_doc["response"]["status"] == 200
    assert chat_doc["response"]["body"] == upstream.chat_completion({"model": "gpt-4o"})
    headers = dict(chat_doc["request"]["headers"])
    assert headers["authorization"] == "[REDACTED]"
    assert stream_doc["response"]["body_encoding"] == "sse"
    assert stream_doc["response"]["body"] == direct.text  # exactly what the caller received
    credentials = {name: value for name, value in stream_doc["request"]["headers"]
                   if name in ("authorization", "x-api-key")}
    assert credentials and set(credentials.values()) == {"[REDACTED]"}
    assert dict(stream_doc["request"]["headers"])["x-majordomo-key"] == "[REDACTED]"
    for doc in (chat_doc, stream_doc):
        text = json.dumps(doc)
        assert key not in text and "callers-secret" not in text


def test_local_directory(gateway: tuple[Daemon, str], upstream: FakeUpstream) -> None:
    daemon, key = gateway

    def read(ref: str) -> dict | None:
        return read_local(ref) if local_exists(ref) else None

    check_documents(daemon, key, read, upstream)
    path = Path(unquote(urlparse(daemon.records()[-1]["body_ref"]).path))
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.fixture
def s3() -> Iterator[MotoS3]:
    server = MotoS3().start()
    server.client().create_bucket(Bucket="llm-bodies")
    yield server
    server.stop()


def s3_daemon(home: Path, upstream: FakeUpstream, s3: MotoS3) -> Daemon:
    cli("bucket", "set", "s3://llm-bodies/steward", "--endpoint-url", s3.url, "--region",
        "us-east-1", "--sse", "AES256", "--access-key-id", "AKIAFAKE", home=home,
        input=S3_SECRET + "\n")
    return Daemon(home, env=provider_env(upstream.url)).start()


def s3_reader(s3: MotoS3) -> Any:
    client = s3.client()

    def read(ref: str) -> dict | None:
        bucket, _, key = ref[len("s3://"):].partition("/")
        try:
            obj = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None
        assert obj["ContentType"] == "application/json"
        assert obj["ContentEncoding"] == "gzip" and obj["ServerSideEncryption"] == "AES256"
        return json.loads(gzip.decompress(obj["Body"].read()))

    return read


def test_s3(fresh_home: tuple[Path, str], upstream: FakeUpstream, s3: MotoS3) -> None:
    home, key = fresh_home
    daemon = s3_daemon(home, upstream, s3)
    try:
        check_documents(daemon, key, s3_reader(s3), upstream)
        assert daemon.records()[-1]["body_ref"].startswith("s3://llm-bodies/steward/key_")
    finally:
        daemon.stop()
    assert S3_SECRET.encode() not in (home / "steward.db").read_bytes()
    assert "ok" in cli("bucket", "test", home=home).stdout.lower()


def test_gcs(fresh_home: tuple[Path, str], upstream: FakeUpstream) -> None:
    home, key = fresh_home
    server = gcs_server()
    endpoint = f"http://127.0.0.1:{server.port}"
    try:
        client = gcs_client(endpoint)
        client.create_bucket("llm-bodies")
        cli("bucket", "set", "gs://llm-bodies/steward", "--endpoint-url", endpoint, home=home)
        daemon = Daemon(home, env=provider_env(upstream.url)).start()

        def read(ref: str) -> dict | None:
            bucket, _, name = ref[len("gs://"):].partition("/")
            blob = client.bucket(bucket).get_blob(name)
            if blob is None:
                return None
            assert blob.content_encoding == "gzip" and blob.content_type == "application/json"
            return json.loads(gzip.decompress(blob.download_as_bytes(raw_download=True)))

        try:
            check_documents(daemon, key, read, upstream)
        finally:
            daemon.stop()
    finally:
        server.stop()


def test_s3_outage_across_a_restart_loses_nothing(fresh_home: tuple[Path, str],
                                                  upstream: FakeUpstream) -> None:
    home, key = fresh_home
    s3 = MotoS3().start()
    s3.client().create_bucket(Bucket="llm-bodies")
    daemon = s3_daemon(home, upstream, s3)
    oa = openai.OpenAI(base_url=daemon.url + "/v1", api_key="sk", max_retries=0,
                       default_headers={"X-Majordomo-Key": key})
    s3.stop()  # the bucket goes away
    for _ in range(6):
        oa.chat.completions.create(model="gpt-4o", messages=MESSAGES)  # all succeed
    refs = [r["body_ref"] for r in daemon.records()]
    assert daemon.stop() == 0  # SIGTERM: the queue drains to local disk
    pending = home / "pending-bodies"
    assert len(list(pending.glob("*.json.gz"))) == 6
    restarted = Daemon(home, env=daemon.env).start()  # the bucket is still down
    try:
        s3 = MotoS3(port=s3.port).start()  # it comes back (empty, as a new server)
        client = s3.client()
        client.create_bucket(Bucket="llm-bodies")
        client.put_bucket_versioning(Bucket="llm-bodies",
                                     VersioningConfiguration={"Status": "Enabled"})
        wait_for(lambda: not list(pending.glob("*.json.gz")), 60, "pending bodies to drain")
        versions = client.list_object_versions(Bucket="llm-bodies")["Versions"]
        keys = sorted(v["Key"] for v in versions)
        assert keys == sorted(r[len("s3://llm-bodies/"):] for r in refs)  # each exactly once
        read = s3_reader(s3)
        assert all(read(ref)["request"]["body"]["messages"] == MESSAGES for ref in refs)
    finally:
        restarted.stop()
        s3.stop()


def test_large_body_is_stored_with_bounded_memory(fresh_home: tuple[Path, str],
                                                  upstream: FakeUpstream) -> None:
    home, key = fresh_home
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        big = "x" * (20 * 1024 * 1024)
        got = httpx.post(daemon.url + "/v1/chat/completions", timeout=120,
                         json={"model": "gpt-4o", "messages": [{"role": "user", "content": big}]},
                         headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk"})
        assert got.status_code == 200
        ref = daemon.records()[-1]["body_ref"]
        wait_for(lambda: local_exists(ref), 30, "the 20 MiB body")
        assert read_local(ref)["request"]["body"]["messages"][0]["content"] == big
        assert daemon.process is not None
        status = Path(f"/proc/{daemon.process.pid}/status").read_text()
        peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
    finally:
        daemon.stop()
    # A 20 MiB body is held as the request bytes, the parsed copy for the document and the
    # gzip output; 300 MB bounds that with room, against ~70 MB at rest.
    assert peak_mb < 300, f"peak RSS {peak_mb:.0f} MB"


def test_bucket_test_names_the_failing_step(fresh_home: tuple[Path, str], s3: MotoS3) -> None:
    home, _ = fresh_home
    assert "wrote, read back and deleted file://" in cli("bucket", "test", home=home).stdout
    cli("bucket", "set", "s3://no-such-bucket/x", "--endpoint-url", s3.url, "--region",
        "us-east-1", "--access-key-id", "AKIAFAKE", home=home, input="secret\n")
    missing = cli("bucket", "test", home=home, check=False)
    assert missing.returncode == 1
    assert "failed at write: the bucket does not exist" in missing.stderr
    assert missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    cli("bucket", "set", "s3://llm-bodies/x", "--endpoint-url",
        f"http://127.0.0.1:{free_port()}", home=home)
    down = cli("bucket", "test", home=home, check=False)
    assert "failed at write: the storage endpoint cannot be reached" in down.stderr
    shown = json.loads(cli("bucket", "show", "--json", home=home).stdout)
    assert shown["access_keys"] == "stored (encrypted)" and "secret" not in json.dumps(shown)


def test_storage_can_be_turned_off(fresh_home: tuple[Path, str], upstream: FakeUpstream) -> None:
    home, key = fresh_home
    cli("config", "set", "bodies.enabled", "false", home=home)
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    try:
        httpx.post(daemon.url + "/v1/chat/completions", json={"model": "gpt-4o"},
                   headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk"})
    finally:
        daemon.stop()
    assert daemon.records()[-1]["body_ref"] is None
    assert not list((home / "bodies").rglob("*.json.gz"))


def test_bucket_status_reports_pending(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    (home / "pending-bodies").mkdir()
    (home / "pending-bodies" / "key_x__2026__01__01__id.json.gz").write_bytes(b"x")
    status = json.loads(cli("bucket", "status", "--json", home=home).stdout)
    assert status["pending_on_disk"] == 1




@pytest.mark.parametrize("wrong", ["key id", "secret"])
def test_wrong_credentials_are_named_and_bodies_wait_on_disk(
        fresh_home: tuple[Path, str], upstream: FakeUpstream, wrong: str) -> None:
    server = MotoS3()
    key_id, secret = server.start_authenticating("llm-bodies")
    home, key = fresh_home
    bad_id, bad_secret = (("AKIANOTAKEY", secret) if wrong == "key id"
                          else (key_id, "not-the-secret-5f3a9c"))
    try:
        cli("bucket", "set", "s3://llm-bodies/x", "--endpoint-url", server.url, "--region",
            "us-east-1", "--access-key-id", bad_id, home=home, input=bad_secret + "\n")
        failed = cli("bucket", "test", home=home, check=False)
        assert failed.returncode == 1
        assert "failed at write: the credentials are missing or wrong" in failed.stderr
        assert bad_secret not in failed.stderr + failed.stdout
        daemon = Daemon(home, env=provider_env(upstream.url)).start()
        try:
            got = httpx.post(daemon.url + "/v1/chat/completions", json={"model": "gpt-4o"},
                             headers={"X-Majordomo-Key": key, "Authorization": "Bearer sk"})
            assert got.status_code == 200  # the request succeeds; its body waits on disk
            wait_for(lambda: list((home / "pending-bodies").glob("*.json.gz")), 30,
                     "the body to be kept on disk")
        finally:
            daemon.stop()
        status = json.loads(cli("bucket", "status", "--json", home=home).stdout)
        expected = "InvalidAccessKeyId" if wrong == "key id" else "SignatureDoesNotMatch"
        assert status["pending_on_disk"] == 1 and expected in status["last_error"]
        cli("bucket", "set", "s3://llm-bodies/x", "--access-key-id", key_id, home=home,
            input=secret + "\n")
        assert "ok" in cli("bucket", "test", home=home).stdout.lower()
    finally:
        server.stop()


class RecordingStore(LocalStore):
    """A local store that counts flushes."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_unsynced_bodies_are_flushed_together_each_interval(tmp_path: Path) -> None:
    store = RecordingStore(tmp_path / "bodies", durable=False)

    async def run() -> None:
        writer = BodyWriter(store, tmp_path, workers=2, queue_bytes=1 << 20,
                            flush_interval=0.05)
        writer.start()
        for i in range(5):
            await writer.submit(Capture(f"k/{i}.json.gz", {"id": i}, [], b'{"a": 1}', b""))
        while writer.uploaded < 5:
            await asyncio.sleep(0.01)
        while store.flushes == 0:  # within one interval of the writes
            await asyncio.sleep(0.01)
        flushes = store.flushes
        await asyncio.sleep(0.2)
        assert store.flushes == flushes  # nothing new written: no flush
        await writer.stop()
        assert store.flushes == flushes + 1  # and a last one on the way out

    asyncio.run(asyncio.wait_for(run(), 10))
    assert len(list((tmp_path / "bodies" / "k").iterdir())) == 5


def test_deeply_nested_json_body_is_stored_as_text() -> None:
    deep = b"[" * 100_000
    doc = json.loads(gzip.decompress(build_document(Capture(
        "k", {"id": "x"}, [(b"content-type", b"application/json")], deep, b""))))
    assert doc["request"]["body_encoding"] == "text" and doc["request"]["body"] == deep.decode()
