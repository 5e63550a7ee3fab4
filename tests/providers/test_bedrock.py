"""AWS Bedrock through the real daemon, driven by boto3's `bedrock-runtime` and
`anthropic.AnthropicBedrock`, against a fake Bedrock that verifies SigV4 with the credentials
stored in Steward (tests/support/fake_bedrock.py): the caller's own signature is dropped and
the request signed again; answers reach the SDK as they would directly, streams byte for
byte; records carry exact usage (cache included) and cost; the AWS secret goes nowhere.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import boto3
import botocore
import httpx
import pytest
from botocore.config import Config as BotoConfig
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError

from steward.providers.bedrock import (
    EventStreamError,
    EventStreamParser,
    parse_credentials,
)
from steward.secrets import master_key, provider_keys
from tests.support.daemon import Daemon, cli, init_home
from tests.support.fake_bedrock import REGION, FakeBedrock
from tests.support.waiting import wait_for

ACCESS_KEY_ID = "AKIASTEWARDSTORED7Q2Z"
SECRET = "stewardStoredSecret/Very+Secret+0001aBcD"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEStewardSessionToken0001"
CALLER_KEY_ID, CALLER_SECRET = "AKIACALLERSOWNKEY0001", "callers-own-secret-never-forwarded"
PROFILE = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
BASE = "anthropic.claude-sonnet-4-5-20250929-v1:0"
ARN = f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/{PROFILE}"
MESSAGES = [{"role": "user", "content": [{"text": "Hello"}]}]
CLAUDE_BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
               "messages": [{"role": "user", "content": "Hello"}]}


# -- the event-stream framing, against botocore's own parser ---------------------------------


def test_the_encoder_writes_what_botocore_parses_and_the_parser_reads_any_split() -> None:
    frames = FakeBedrock.converse_frames() + FakeBedrock.invoke_frames()
    stream = b"".join(frames)
    buffer = EventStreamBuffer()
    buffer.add_data(stream)
    theirs = [(m.headers, m.payload) for m in buffer]
    assert len(theirs) == len(frames)
    assert theirs[-1][0][":event-type"] == "chunk" and theirs[5][0][":event-type"] == "messageStop"

    for size in (1, 7, 64, len(stream)):
        parser = EventStreamParser()
        ours = [m for at in range(0, len(stream), size) for m in parser.feed(stream[at:at + size])]
        assert ours == theirs
        assert parser.pending == 0

    cut = EventStreamParser()
    assert list(cut.feed(stream[:-3])) == theirs[:-1] and cut.pending == len(frames[-1]) - 3
    corrupt = bytearray(frames[0])
    corrupt[20] ^= 1
    with pytest.raises(EventStreamError, match="message checksum"):
        list(EventStreamParser().feed(bytes(corrupt)))
    with pytest.raises(EventStreamError, match="prelude checksum"):
        list(EventStreamParser().feed(b"\x00\x00\x00\x20" + frames[0][4:]))


def test_credentials_are_read_from_json_the_aws_cli_shape_or_lines() -> None:
    ours = {"access_key_id": "AKIA1", "secret_access_key": "s/1", "session_token": "t"}
    assert parse_credentials(json.dumps(ours)) == ours
    assert parse_credentials(json.dumps({"AccessKeyId": "AKIA1", "SecretAccessKey": "s/1",
                                         "SessionToken": "t", "Version": 1})) == ours
    assert parse_credentials("AKIA1\ns/1\n\n") == {"access_key_id": "AKIA1",
                                                  "secret_access_key": "s/1"}
    for bad in ("", "AKIA1", '{"access_key_id": "AKIA1"}', "[1]", "{nope"):
        with pytest.raises(ValueError) as refused:
            parse_credentials(bad)
        assert "s/1" not in str(refused.value)


# -- through the daemon --------------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeBedrock]:
    server = FakeBedrock(ACCESS_KEY_ID, SECRET, SESSION_TOKEN).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def bedrock(fake: FakeBedrock, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[Daemon, str]]:
    home = tmp_path_factory.mktemp("bedrock-home")
    key = init_home(home)
    env = {"STEWARD_PROVIDERS__BEDROCK__BASE_URL": fake.url,
           "STEWARD_PROVIDERS__BEDROCK__REGION": REGION}
    stored = cli("providers", "set", "bedrock", home=home, env=env, input=json.dumps(
        {"access_key_id": ACCESS_KEY_ID, "secret_access_key": SECRET,
         "session_token": SESSION_TOKEN}))
    assert "…7Q2Z" in stored.stdout
    daemon = Daemon(home, env=env).start()
    yield daemon, key
    daemon.stop()


def through(daemon: Daemon, key: str, tag: str, unsigned: bool = False) -> Any:
    """boto3 pointed at Steward: it signs with the caller's own keys for Steward's host (they
    must not matter), or not at all, and adds the gateway key and a tag in a before-sign hook."""
    config = BotoConfig(retries={"max_attempts": 1},
                        signature_version=botocore.UNSIGNED if unsigned else None)
    client = boto3.client("bedrock-runtime", region_name=REGION, endpoint_url=daemon.url,
                          aws_access_key_id=CALLER_KEY_ID,
                          aws_secret_access_key=CALLER_SECRET, config=config)

    def add_headers(request: Any, **_: Any) -> None:
        request.headers["X-Majordomo-Key"] = key
        request.headers["X-Majordomo-Test"] = tag

    client.meta.events.register("before-sign.bedrock-runtime", add_headers)
    return client


def direct(fake: FakeBedrock) -> Any:
    return boto3.client("bedrock-runtime", region_name=REGION, endpoint_url=fake.url,
                        aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET,
                        aws_session_token=SESSION_TOKEN,
                        config=BotoConfig(retries={"max_attempts": 1}))


def answer(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "ResponseMetadata"}


def prices(model: str) -> dict[str, Decimal]:
    table = json.loads((Path(__file__).parents[2] / "steward/pricing/data/prices.json"
                        ).read_text())["models"][model]
    return {k: Decimal(v) for k, v in table.items() if k not in ("provider", "mode")}


def check_signed(fake: FakeBedrock) -> None:
    seen = fake.last()
    assert seen.signed_by == ACCESS_KEY_ID
    assert CALLER_KEY_ID not in json.dumps(seen.raw_headers)
    names = [name for name, _ in seen.raw_headers]
    assert len(names) == len(set(names)), names  # the caller's signing headers are gone
    assert "x-majordomo-key" not in seen.headers and "x-majordomo-test" not in seen.headers
    assert seen.headers["x-amz-security-token"] == SESSION_TOKEN


def test_converse_equals_direct_and_records_cache_usage_and_profile_cost(
        bedrock: tuple[Daemon, str], fake: FakeBedrock, tag: str) -> None:
    daemon, key = bedrock
    got = through(daemon, key, tag).converse(modelId=PROFILE, messages=MESSAGES)
    check_signed(fake)
    assert fake.last().model == PROFILE
    assert answer(got) == answer(direct(fake).converse(modelId=PROFILE, messages=MESSAGES))

    record = daemon.record_tagged("test", tag)
    assert (record["provider"], record["format"], record["endpoint"], record["model"]) == (
        "bedrock", "bedrock", "converse", PROFILE)
    # inputTokens (11) excludes the cache: 11 + 120 read + 40 written.
    assert {k: record[k] for k in ("input_tokens", "output_tokens", "cache_read_tokens",
                                   "cache_write_tokens", "cache_write_5m_tokens",
                                   "cache_write_1h_tokens")} == {
        "input_tokens": 171, "output_tokens": 7, "cache_read_tokens": 120,
        "cache_write_tokens": 40, "cache_write_5m_tokens": 30, "cache_write_1h_tokens": 10}
    p = prices(PROFILE)  # the profile's own entry: 10% over the base model's
    input_cost = (11 * p["input_cost_per_token"] + 120 * p["cache_read_input_token_cost"]
                  + 30 * p["cache_creation_input_token_cost"]
                  + 10 * p["cache_creation_input_token_cost_above_1hr"])
    assert (record["pricing_model"], record["pricing_status"]) == (PROFILE, "ok")
    assert Decimal(record["input_cost"]) == input_cost
    assert Decimal(record["cost"]) == input_cost + 7 * p["output_cost_per_token"]
    assert record["error"] is None and record["stream"] is False


def test_converse_stream_is_relayed_byte_for_byte_and_read_for_usage(
        bedrock: tuple[Daemon, str], fake: FakeBedrock, tag: str) -> None:
    daemon, key = bedrock
    events = list(through(daemon, key, tag).converse_stream(
        modelId=BASE, messages=MESSAGES)["stream"])
    check_signed(fake)
    assert events == list(direct(fake).converse_stream(modelId=BASE, messages=MESSAGES)["stream"])
    assert events[-1]["metadata"]["usage"]["inputTokens"] == 11
    record = daemon.record_tagged("test", tag)
    assert record["stream"] is True and record["endpoint"] == "converse-stream"
    assert (record["input_tokens"], record["output_tokens"], record["cache_read_tokens"]) == (
        171, 7, 120)
    assert record["pricing_model"] == BASE and record["cost"] is not None

    raw = httpx.post(f"{daemon.url}/model/{BASE}/converse-stream",
                     json={"messages": MESSAGES},
                     headers={"X-Majordomo-Key": key, "X-Majordomo-Test": tag + "-raw"})
    assert raw.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert raw.content == fake.last().sent  # untouched, frame for frame


def test_invoke_model_with_claude_usage_and_base_model_cost(
        bedrock: tuple[Daemon, str], fake: FakeBedrock, tag: str) -> None:
    daemon, key = bedrock
    body = json.dumps(CLAUDE_BODY)
    got = through(daemon, key, tag).invoke_model(modelId=BASE, body=body)
    check_signed(fake)
    want = direct(fake).invoke_model(modelId=BASE, body=body)
    assert got["body"].read() == want["body"].read() == fake.last().sent
    record = daemon.record_tagged("test", tag)
    assert (record["endpoint"], record["model"], record["response_model"]) == (
        "invoke", BASE, "claude-sonnet-4-5-20250929")
    assert (record["input_tokens"], record["output_tokens"], record["cache_read_tokens"],
            record["cache_write_tokens"], record["cache_write_5m_tokens"]) == (371, 9, 300, 50,
                                                                              50)
    p = prices(BASE)  # Bedrock's entry for the id asked for, before the body's Claude name
    assert record["pricing_model"] == BASE
    assert Decimal(record["cost"]) == (21 * p["input_cost_per_token"]
                                       + 300 * p["cache_read_input_token_cost"]
                                       + 50 * p["cache_creation_input_token_cost"]
                                       + 9 * p["output_cost_per_token"])


def test_invoke_stream_reads_claude_events_and_invocation_metrics_cache_included(
        bedrock: tuple[Daemon, str], fake: FakeBedrock, tag: str) -> None:
    daemon, key = bedrock
    body = json.dumps(CLAUDE_BODY)
    got = through(daemon, key, tag).invoke_model_with_response_stream(modelId=PROFILE,
                                                                      body=body)
    events = [e["chunk"]["bytes"] for e in got["body"]]
    check_signed(fake)
    want = direct(fake).invoke_model_with_response_stream(modelId=PROFILE, body=body)
    assert events == [e["chunk"]["bytes"] for e in want["body"]]
    assert b"amazon-bedrock-invocationMetrics" in events[-1]
    record = daemon.record_tagged("test", tag)
    assert record["stream"] is True and record["endpoint"] == "invoke-with-response-stream"
    assert (record["input_tokens"], record["output_tokens"], record["cache_read_tokens"],
            record["cache_write_tokens"]) == (371, 9, 300, 50)
    assert record["response_model"] == "claude-sonnet-4-5-20250929"
    assert record["pricing_model"] == PROFILE and record["error"] is None


def test_an_arn_model_id_stays_one_segment_signed_as_sent_and_priced_by_its_id(
        bedrock: tuple[Daemon, str], fake: FakeBedrock, tag: str) -> None:
    daemon, key = bedrock
    through(daemon, key, tag).converse(modelId=ARN, messages=MESSAGES)
    check_signed(fake)  # the %3A and %2F bytes were signed as sent (double-encoded URI)
    assert fake.last().model == ARN
    assert "%2F" in fake.last().raw_path and "%3A" in fake.last().raw_path
    record = daemon.record_tagged("test", tag)
    assert record["model"] == ARN and record["pricing_model"] == PROFILE

    # An encoded slash anywhere but in the model segment is refused, in Bedrock's shape.
    refused = httpx.post(f"{daemon.url}/model/{BASE}/converse%2Fx", json={},
                         headers={"X-Majordomo-Key": key})
    assert refused.status_code == 400 and "encoded" in refused.json()["message"]


def test_anthropic_bedrock_sdk_with_the_gateway_key_as_its_api_key(
        bedrock: tuple[Daemon, str], fake: FakeBedrock, tag: str) -> None:
    daemon, key = bedrock
    via = anthropic.AnthropicBedrock(base_url=daemon.url, aws_region=REGION, api_key=key,
                                     default_headers={"X-Majordomo-Test": tag}, max_retries=0)
    direct_client = anthropic.AnthropicBedrock(
        base_url=fake.url, aws_region=REGION, aws_access_key=ACCESS_KEY_ID,
        aws_secret_key=SECRET, aws_session_token=SESSION_TOKEN, max_retries=0)
    ask: dict[str, Any] = {"model": PROFILE, "max_tokens": 64,
                           "messages": [{"role": "user", "content": "Hello"}]}
    message = via.messages.create(**ask)
    check_signed(fake)
    assert key not in json.dumps(fake.last().headers)
    assert message.model_dump() == direct_client.messages.create(**ask).model_dump()

    with via.messages.stream(**ask) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    with direct_client.messages.stream(**ask) as stream:
        assert text == "".join(stream.text_stream)
        assert final.model_dump() == stream.get_final_message().model_dump()
    records = [r for r in daemon.records() if r["tags"].get("test") == tag]
    assert [r["endpoint"] for r in records] == ["invoke", "invoke-with-response-stream"]
    assert all(r["input_tokens"] == 371 and r["cache_read_tokens"] == 300 for r in records)


def test_count_tokens_is_served_and_not_billed(bedrock: tuple[Daemon, str],
                                               fake: FakeBedrock, tag: str) -> None:
    daemon, key = bedrock
    got = through(daemon, key, tag, unsigned=True).count_tokens(
        modelId=BASE, input={"converse": {"messages": MESSAGES}})
    assert got["inputTokens"] == 42
    record = daemon.record_tagged("test", tag)
    assert record["endpoint"] == "count-tokens" and record["input_tokens"] is None
    assert record["pricing_status"] == "no_usage" and record["error"] is None


def sdk_error(call: Callable[[], Any]) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    return caught.value


def test_stewards_errors_reach_boto3_as_bedrock_errors_with_stewards_message(
        bedrock: tuple[Daemon, str], fake: FakeBedrock, tag: str) -> None:
    daemon, key = bedrock
    client = through(daemon, key + "x", tag)
    refused = sdk_error(lambda: client.converse(modelId=BASE, messages=MESSAGES))
    assert refused.response["Error"]["Code"] == "AccessDeniedException"
    assert "Invalid X-Majordomo-Key" in refused.response["Error"]["Message"]
    assert refused.response["ResponseMetadata"]["HTTPStatusCode"] == 401

    # No gateway key at all, unsigned boto3: still Bedrock's shape.
    unsigned = boto3.client("bedrock-runtime", region_name=REGION, endpoint_url=daemon.url,
                            config=BotoConfig(signature_version=botocore.UNSIGNED,
                                              retries={"max_attempts": 1}))
    missing = sdk_error(lambda: unsigned.converse(modelId=BASE, messages=MESSAGES))
    assert "Missing X-Majordomo-Key" in missing.response["Error"]["Message"]


def _store_for(daemon: Daemon, name: str, value: str) -> str:
    """A gateway key with its own stored Bedrock credential, sealed as the CLI would."""
    created = json.loads(cli("keys", "add", name, "--json", home=daemon.home).stdout)
    conn = sqlite3.connect(daemon.home / "steward.db")
    try:
        vault, _ = master_key.open_vault(daemon.home, conn)
        provider_keys.set_key(conn, vault, "bedrock", created["id"], value)
    finally:
        conn.close()
    return str(created["key"])


def test_bad_stored_credentials_give_the_caller_a_clear_bedrock_error(
        bedrock: tuple[Daemon, str], fake: FakeBedrock, tag: str) -> None:
    daemon, _ = bedrock
    unreadable = _store_for(daemon, "unreadable-aws", "not-a-credential")
    wrong = _store_for(daemon, "wrong-aws", json.dumps(
        {"access_key_id": ACCESS_KEY_ID, "secret_access_key": "wrong-secret",
         "session_token": SESSION_TOKEN},
        separators=(",", ":")))

    def refusal(gateway_key: str) -> ClientError | None:
        try:
            through(daemon, gateway_key, tag).converse(modelId=BASE, messages=MESSAGES)
        except ClientError as exc:  # 401: the key is not loaded yet (the 2 s poll)
            return exc if exc.response["ResponseMetadata"]["HTTPStatusCode"] != 401 else None
        return None

    broken = wait_for(lambda: refusal(unreadable), 10, "the unreadable credential loaded")
    assert broken.response["ResponseMetadata"]["HTTPStatusCode"] == 502
    assert "stored bedrock credentials cannot be used" in broken.response["Error"]["Message"]
    assert "steward providers set bedrock" in broken.response["Error"]["Message"]

    # AWS's own refusal of a wrong secret reaches the caller as AWS sent it; the record says
    # which credential it was.
    denied = wait_for(lambda: refusal(wrong), 10, "the wrong credential loaded")
    assert denied.response["Error"]["Code"] == "InvalidSignatureException"
    assert fake.last().signed_by is None
    record = [r for r in daemon.records() if r["tags"].get("test") == tag][-1]
    assert record["status"] == 403 and "signature we calculated" in record["error"]


def test_list_shows_the_access_key_ending_and_no_secret_leaks_anywhere(
        bedrock: tuple[Daemon, str], fake: FakeBedrock, tag: str) -> None:
    daemon, key = bedrock
    client = through(daemon, key, tag)
    client.converse(modelId=BASE, messages=MESSAGES)
    list(client.converse_stream(modelId=BASE, messages=MESSAGES)["stream"])
    listed = json.loads(cli("providers", "list", "--json", home=daemon.home).stdout)
    assert {"provider": "bedrock", "scope": "default", "last4": "7Q2Z"}.items() <= \
        next(r for r in listed if r["provider"] == "bedrock").items()
    shown = cli("config", "show", home=daemon.home).stdout + cli(
        "providers", "list", home=daemon.home).stdout
    secrets = [SECRET.encode(), SESSION_TOKEN.encode(), CALLER_SECRET.encode()]
    files = [p for p in daemon.home.rglob("*") if p.is_file() and p.name != "master.key"]
    assert any(p.suffix == ".ndjson" for p in files) and daemon.log_path in files
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{secret[:8]!r}… found in {path}"
    for secret in secrets:
        assert secret.decode() not in shown
    assert "Traceback" not in daemon.log()


def doctor_check(home: Path, env: dict[str, str]) -> dict[str, Any]:
    ran = cli("doctor", "--json", home=home, env=env, check=False)
    return next(c for c in json.loads(ran.stdout)["checks"]
                if c["name"] == "provider bedrock credentials accepted")


def test_the_default_chain_signs_and_doctor_checks_both_kinds(
        bedrock: tuple[Daemon, str], fake: FakeBedrock, tmp_path: Path, tag: str) -> None:
    daemon, _ = bedrock
    env = {"STEWARD_PROVIDERS__BEDROCK__BASE_URL": fake.url}
    assert doctor_check(daemon.home, env)["ok"] is True

    # botocore's chain, from the environment (no profile files, no instance metadata).
    home = tmp_path / "home"
    key = init_home(home)
    chain_env = {**env, "STEWARD_PROVIDERS__BEDROCK__CREDENTIALS": "default",
                 "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                 "AWS_SESSION_TOKEN": SESSION_TOKEN, "AWS_CONFIG_FILE": "/dev/null",
                 "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true"}
    assert doctor_check(home, chain_env)["ok"] is True
    listed = json.loads(cli("providers", "list", "--json", home=home, env=chain_env).stdout)
    assert [(r["provider"], r["scope"], r.get("source")) for r in listed] == [
        ("bedrock", "default", "default chain")]
    chain = Daemon(home, env=chain_env).start()
    try:
        through(chain, key, tag).converse(modelId=BASE, messages=MESSAGES)
        check_signed(fake)
    finally:
        chain.stop()

    wrong = doctor_check(home, {**chain_env, "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert wrong["ok"] is False and "InvalidSignatureException" in wrong["detail"]
    assert "steward providers set bedrock" in wrong["fix"] and "wrong" not in wrong["detail"]


def test_invocation_metrics_alone_give_usage_cache_included() -> None:
    """Models whose own stream events carry no usage (Llama, Nova…): Bedrock's closing
    invocationMetrics are the count, and their cache figures are kept, not billed as fresh."""
    from steward.providers.base import Route
    from steward.providers.bedrock import FORMAT, encode_message

    def chunk(obj: dict[str, Any]) -> bytes:
        import base64

        data = base64.b64encode(json.dumps(obj).encode()).decode()
        return encode_message({":event-type": "chunk", ":message-type": "event"},
                              json.dumps({"bytes": data}).encode())

    stream = chunk({"generation": "Hi", "stop_reason": None}) + chunk(
        {"generation": "", "stop_reason": "stop", "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": 8, "outputTokenCount": 3, "cacheReadInputTokenCount": 100,
            "cacheWriteInputTokenCount": 20}})
    meter = FORMAT.meter(Route("invoke-with-response-stream", "/x"), 200,
                         "application/vnd.amazon.eventstream")
    meter.feed(stream[:30])
    meter.feed(stream[30:])
    reading = meter.finish()
    assert (reading.usage.input_tokens, reading.usage.output_tokens,
            reading.usage.cache_read_tokens, reading.usage.cache_write_tokens) == (128, 3, 100, 20)
    assert reading.complete and reading.error is None


def test_only_stewards_signature_goes_upstream_scoped_to_the_configured_region() -> None:
    from steward.config import ProviderConfig
    from steward.providers.bedrock import FORMAT
    from steward.proxy.credentials import unsigned_headers

    provider = ProviderConfig("bedrock", FORMAT.default_base_url, region="eu-west-3")
    assert FORMAT.upstream_base_url(provider) == "https://bedrock-runtime.eu-west-3.amazonaws.com"
    auth = FORMAT.upstream_auth(provider, FORMAT.credential_from_text(
        f"{ACCESS_KEY_ID}\n{SECRET}\n")[0])
    caller = [("authorization", f"AWS4-HMAC-SHA256 Credential={CALLER_KEY_ID}/x"),
              ("x-amz-date", "19990101T000000Z"), ("x-amz-security-token", "callers-token"),
              ("x-amz-content-sha256", "0" * 64), ("date", "Fri, 01 Jan 1999 00:00:00 GMT"),
              ("content-type", "application/json"), ("amz-sdk-request", "attempt=1")]
    url = FORMAT.upstream_base_url(provider) + f"/model/{ARN.replace(':', '%3A')}/converse"
    out = auth.apply("POST", url, unsigned_headers(FORMAT, "bedrock", caller, auth), b"{}")
    names = [name.lower() for name, _ in out]
    assert len(names) == len(set(names)) and "x-amz-security-token" not in names
    text = json.dumps(out)
    assert CALLER_KEY_ID not in text and "1999" not in text and "callers-token" not in text
    signature = dict(out)["Authorization"]
    assert f"Credential={ACCESS_KEY_ID}/" in signature and "/eu-west-3/bedrock/" in signature
    assert "SignedHeaders=content-type;host;x-amz-date," in signature


def test_a_converse_stream_is_complete_at_its_metadata_event_not_before() -> None:
    """A caller hanging up after the last event had the whole answer (no error recorded);
    one cut after messageStop but before metadata did not, and has no usage."""
    from steward.providers.base import Route
    from steward.providers.bedrock import FORMAT

    frames = FakeBedrock.converse_frames()
    for upto, complete in ((len(frames) - 1, False), (len(frames), True)):
        meter = FORMAT.meter(Route("converse-stream", "/x"), 200,
                             "application/vnd.amazon.eventstream")
        for frame in frames[:upto]:
            meter.feed(frame)
        reading = meter.finish()
        assert reading.complete is complete
        assert (reading.usage.input_tokens == 171) is complete


def test_providers_set_bedrock_reads_a_file_or_lines_and_refuses_in_one_line(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    cli("keys", "add", "team", home=home)
    creds = tmp_path / "aws.json"
    creds.write_text(json.dumps({"AccessKeyId": "AKIAFROMFILE0000WXYZ", "SecretAccessKey": SECRET,
                                 "SessionToken": SESSION_TOKEN}))
    stored = cli("providers", "set", "bedrock", "--for", "team", "--from-file", str(creds),
                 home=home)
    assert "…WXYZ (for key_" in stored.stdout and SECRET not in stored.stdout
    cli("providers", "set", "bedrock", home=home, input=f"AKIALINES00000000ABCD\n{SECRET}\n")
    listed = {(r["scope"], r["last4"]) for r in json.loads(
        cli("providers", "list", "--json", home=home).stdout) if r["provider"] == "bedrock"}
    assert ("default", "ABCD") in listed and any(last4 == "WXYZ" for _, last4 in listed)

    bad = cli("providers", "set", "bedrock", home=home, input="AKIAONLYANID\n", check=False)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().count("\n") == 0 and "secret access key are required" in bad.stderr
    missing = cli("providers", "set", "bedrock", "--from-file", str(tmp_path / "none"),
                  home=home, check=False)
    assert missing.returncode == 1 and "No such file" in missing.stderr


def test_telemetry_names_bedrock_as_the_genai_conventions_do() -> None:
    from steward.daemon.telemetry import operation, provider_name

    record = {"provider": "bedrock", "endpoint": "converse-stream"}
    assert (provider_name(record), operation(record)) == ("aws.bedrock", "chat")
