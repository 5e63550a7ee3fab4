"""The daemon as a real process, driven by the official SDKs, in front of the fake upstream.

Every SDK call is made twice — through Steward and directly — and the results must be equal.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from typing import Any

import anthropic
import httpx
import openai
import pytest
from google import genai
from google.genai import types as genai_types

from tests.support.bodies import stored_bytes
from tests.support.daemon import Daemon
from tests.support.fake_upstream import FakeUpstream
from tests.support.waiting import wait_for

Gateway = tuple[Daemon, str]
# The last test asserts that no event-loop step took 25 ms: `make test` runs this file after the
# parallel tests, with the machine to itself, so another worker's load cannot stall the loop.
pytestmark = pytest.mark.alone


def via_steward(gateway: Gateway, tag: str) -> dict[str, str]:
    return {"X-Majordomo-Key": gateway[1], "X-Majordomo-Test": tag,
            "X-Majordomo-Team": "search"}


CALLER_CREDENTIALS = {"Authorization": "Bearer sk-caller", "x-api-key": "sk-ant-caller",
                      "x-goog-api-key": "g-caller"}


def raw_headers(gateway: Gateway, tag: str) -> dict[str, str]:
    """For plain HTTP calls: the gateway key plus a caller credential for every provider."""
    return {**via_steward(gateway, tag), **CALLER_CREDENTIALS}


def openai_pair(gateway: Gateway, upstream: FakeUpstream, tag: str
                ) -> tuple[openai.OpenAI, openai.OpenAI]:
    through = openai.OpenAI(base_url=gateway[0].url + "/v1", api_key="sk-caller",
                            default_headers=via_steward(gateway, tag), max_retries=0)
    direct = openai.OpenAI(base_url=upstream.url + "/v1", api_key="sk-caller", max_retries=0)
    return through, direct


def anthropic_pair(gateway: Gateway, upstream: FakeUpstream, tag: str
                   ) -> tuple[anthropic.Anthropic, anthropic.Anthropic]:
    through = anthropic.Anthropic(base_url=gateway[0].url, api_key="sk-ant-caller",
                                  default_headers=via_steward(gateway, tag), max_retries=0)
    direct = anthropic.Anthropic(base_url=upstream.url, api_key="sk-ant-caller", max_retries=0)
    return through, direct


def gemini_pair(gateway: Gateway, upstream: FakeUpstream, tag: str
                ) -> tuple[genai.Client, genai.Client]:
    through = genai.Client(api_key="g-caller", http_options=genai_types.HttpOptions(
        base_url=gateway[0].url, headers=via_steward(gateway, tag)))
    direct = genai.Client(api_key="g-caller",
                          http_options=genai_types.HttpOptions(base_url=upstream.url))
    return through, direct


MESSAGES = [{"role": "user", "content": "Say hello"}]


def assert_no_majordomo_headers(upstream: FakeUpstream) -> None:
    seen = upstream.last().headers
    assert not [h for h in seen if h.lower().startswith("x-majordomo-")], seen


# -- OpenAI ---------------------------------------------------------------------------------


def test_openai_chat(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    through, direct = openai_pair(gateway, upstream, tag)
    got = through.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert_no_majordomo_headers(upstream)
    assert upstream.last().headers["Authorization"] == "Bearer sk-caller"
    want = direct.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert got.parse().model_dump() == want.model_dump()
    assert got.headers["x-upstream"] == "fake"
    record = gateway[0].record_tagged("test", tag)
    assert got.headers["x-majordomo-request-id"] == record["id"]
    assert uuid.UUID(record["id"]).version == 7
    assert record | {"id": None, "ts": None, "latency_ms": None, "api_key_id": None,
                     "api_key_uuid": None, "pricing_version": None, "body_ref": None} == {
        "id": None, "ts": None, "latency_ms": None, "api_key_id": None, "pricing_version": None,
        "body_ref": None, "api_key_uuid": None, "majordomo_key_id": None,
        "node": socket.gethostname(),
        # 20 x 2.50 + 5 x 1.25 + 12 x 10 USD per million (bundled gpt-4o-2024-08-06 prices)
        "cost": "0.00017625", "input_cost": "0.00005625", "output_cost": "0.00012",
        "pricing_status": "ok", "pricing_model": "gpt-4o-2024-08-06",
        "provider": "openai", "format": "openai", "endpoint": "chat/completions",
        "method": "POST", "path": "/v1/chat/completions", "model": "gpt-4o",
        "response_model": "gpt-4o-2024-08-06", "service_tier": "default", "stream": False,
        "status": 200, "input_tokens": 25, "output_tokens": 12, "cache_read_tokens": 5,
        "cache_write_tokens": 0, "cache_write_5m_tokens": None, "cache_write_1h_tokens": None,
        "reasoning_tokens": 4, "tool_use_prompt_tokens": None, "ttft_ms": None,
        "tags": {"test": tag, "team": "search"}, "error": None, "body_error": None}
    assert record["api_key_id"].startswith("key_")
    assert uuid.UUID(record["api_key_uuid"]).version == 7
    assert record["latency_ms"] > 0
    assert record["body_ref"] == (gateway[0].home / "bodies" / record["api_key_id"]).as_uri(
        ) + f"/{record['ts'][:10].replace('-', '/')}/{record['id']}.json.gz"


def test_openai_chat_stream_with_usage(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    through, direct = openai_pair(gateway, upstream, tag)
    kwargs: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
                              "stream_options": {"include_usage": True}}
    got = [c.model_dump() for c in through.chat.completions.create(**kwargs)]
    want = [c.model_dump() for c in direct.chat.completions.create(**kwargs)]
    assert got == want
    record = gateway[0].record_tagged("test", tag)
    assert record["stream"] is True
    assert (record["input_tokens"], record["output_tokens"], record["cache_read_tokens"],
            record["reasoning_tokens"]) == (25, 12, 5, 4)
    assert record["model"] == "gpt-4o-mini"
    assert record["response_model"] == "gpt-4o-mini-2024-08-06"
    assert 0 < record["ttft_ms"] <= record["latency_ms"]


def test_openai_stream_without_usage_records_unknown(gateway: Gateway, upstream: FakeUpstream,
                                                     tag: str) -> None:
    through, _ = openai_pair(gateway, upstream, tag)
    chunks = list(through.chat.completions.create(model="gpt-4o", messages=MESSAGES,
                                                  stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the fake"
    record = gateway[0].record_tagged("test", tag)
    assert record["input_tokens"] is None and record["output_tokens"] is None
    assert record["error"] is None


def test_openai_responses(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    through, direct = openai_pair(gateway, upstream, tag)
    got = through.responses.create(model="o3", input="Say hello")
    want = direct.responses.create(model="o3", input="Say hello")
    assert got.model_dump() == want.model_dump()
    record = gateway[0].record_tagged("test", tag)
    assert (record["endpoint"], record["input_tokens"], record["output_tokens"],
            record["cache_read_tokens"], record["reasoning_tokens"]) == (
        "responses", 30, 20, 10, 8)


def test_openai_responses_stream(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    through, direct = openai_pair(gateway, upstream, tag)
    got = [e.model_dump() for e in through.responses.create(model="o3", input="hi", stream=True)]
    want = [e.model_dump() for e in direct.responses.create(model="o3", input="hi", stream=True)]
    assert got == want
    record = gateway[0].record_tagged("test", tag)
    assert (record["stream"], record["input_tokens"], record["output_tokens"],
            record["response_model"]) == (True, 30, 20, "o3-2024-08-06")


def test_openai_embeddings_and_models(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    through, direct = openai_pair(gateway, upstream, tag)
    got = through.embeddings.create(model="text-embedding-3-small", input="hello")
    assert got.model_dump() == direct.embeddings.create(model="text-embedding-3-small",
                                                        input="hello").model_dump()
    record = gateway[0].record_tagged("test", tag)
    assert (record["endpoint"], record["input_tokens"], record["output_tokens"]) == (
        "embeddings", 8, 0)
    assert [m.id for m in through.models.list()] == ["gpt-4o"]


def test_openai_paths_without_v1_prefix(gateway: Gateway, upstream: FakeUpstream, tag: str
                                        ) -> None:
    bare = openai.OpenAI(base_url=gateway[0].url, api_key="sk-caller", max_retries=0,
                         default_headers=via_steward(gateway, tag))
    got = bare.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert got.usage is not None and got.usage.prompt_tokens == 25
    assert upstream.last().path == "/v1/chat/completions"


# -- Anthropic ------------------------------------------------------------------------------


def test_anthropic_messages(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    through, direct = anthropic_pair(gateway, upstream, tag)
    kwargs: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 100,
                              "messages": MESSAGES}
    got = through.messages.create(**kwargs)
    assert_no_majordomo_headers(upstream)
    assert got.model_dump() == direct.messages.create(**kwargs).model_dump()
    record = gateway[0].record_tagged("test", tag)
    assert {k: record[k] for k in ("provider", "endpoint", "model", "input_tokens",
                                   "output_tokens", "cache_read_tokens", "cache_write_tokens",
                                   "cache_write_5m_tokens", "cache_write_1h_tokens",
                                   "service_tier")} == {
        "provider": "anthropic", "endpoint": "messages", "model": "claude-sonnet-4-5",
        "input_tokens": 540, "output_tokens": 15, "cache_read_tokens": 200,
        "cache_write_tokens": 300, "cache_write_5m_tokens": 100, "cache_write_1h_tokens": 200,
        "service_tier": "standard"}


def test_anthropic_stream(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    through, direct = anthropic_pair(gateway, upstream, tag)
    kwargs: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": 100,
                              "messages": MESSAGES, "stream": True}
    got = [e.model_dump() for e in through.messages.create(**kwargs)]
    want = [e.model_dump() for e in direct.messages.create(**kwargs)]
    assert got == want
    record = gateway[0].record_tagged("test", tag)
    assert (record["stream"], record["input_tokens"], record["output_tokens"],
            record["cache_write_1h_tokens"], record["response_model"]) == (
        True, 540, 15, 200, "claude-haiku-4-5-2024-08-06")


def test_anthropic_count_tokens_is_not_billed(gateway: Gateway, upstream: FakeUpstream,
                                              tag: str) -> None:
    through, _ = anthropic_pair(gateway, upstream, tag)
    got = through.messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES)
    assert got.input_tokens == 42
    record = gateway[0].record_tagged("test", tag)
    assert record["endpoint"] == "messages/count_tokens"
    assert record["input_tokens"] is None


# -- Gemini ---------------------------------------------------------------------------------


def test_gemini_generate(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    through, direct = gemini_pair(gateway, upstream, tag)
    got = through.models.generate_content(model="gemini-2.5-flash", contents="Say hello")
    assert_no_majordomo_headers(upstream)
    assert upstream.last().headers["x-goog-api-key"] == "g-caller"
    want = direct.models.generate_content(model="gemini-2.5-flash", contents="Say hello")
    assert got.text == want.text == "Hello from the fake"
    assert got.usage_metadata == want.usage_metadata
    record = gateway[0].record_tagged("test", tag)
    assert {k: record[k] for k in ("provider", "endpoint", "model", "response_model",
                                   "input_tokens", "output_tokens", "cache_read_tokens",
                                   "reasoning_tokens", "tool_use_prompt_tokens")} == {
        "provider": "gemini", "endpoint": "generateContent", "model": "gemini-2.5-flash",
        "response_model": "gemini-2.5-flash", "input_tokens": 50, "output_tokens": 35,
        "cache_read_tokens": 10, "reasoning_tokens": 15, "tool_use_prompt_tokens": 0}


def test_gemini_stream(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    through, direct = gemini_pair(gateway, upstream, tag)
    got = [c.text for c in through.models.generate_content_stream(model="gemini-2.5-pro",
                                                                  contents="hi")]
    want = [c.text for c in direct.models.generate_content_stream(model="gemini-2.5-pro",
                                                                  contents="hi")]
    assert got == want == ["Hello", " from", " the", " fake"]
    record = gateway[0].record_tagged("test", tag)
    assert (record["stream"], record["endpoint"], record["input_tokens"],
            record["output_tokens"]) == (True, "streamGenerateContent", 50, 35)


def test_gemini_json_array_stream(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    url = "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    got = httpx.post(gateway[0].url + url, json=body, headers=raw_headers(gateway, tag))
    want = httpx.post(upstream.url + url, json=body)
    assert got.status_code == 200 and got.content == want.content
    record = gateway[0].record_tagged("test", tag)
    assert (record["stream"], record["input_tokens"], record["output_tokens"]) == (True, 50, 35)


def test_gemini_v1_path_and_key_in_query(gateway: Gateway, upstream: FakeUpstream, tag: str
                                         ) -> None:
    got = httpx.post(gateway[0].url + "/v1/models/gemini-2.0-flash:generateContent?key=g-q",
                     json={"contents": []}, headers=raw_headers(gateway, tag))
    assert got.status_code == 200
    assert upstream.last().query == "key=g-q"
    assert gateway[0].record_tagged("test", tag)["model"] == "gemini-2.0-flash"


# -- Transport fidelity ---------------------------------------------------------------------


def test_streams_are_relayed_chunk_by_chunk(gateway: Gateway, upstream: FakeUpstream,
                                            tag: str) -> None:
    """The upstream paces events 0.3 s apart: the first must arrive long before the last."""
    headers = {**raw_headers(gateway, tag), "x-fake-behavior": "pace:0.3"}
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True}
    arrivals = []
    with httpx.stream("POST", gateway[0].url + "/v1/chat/completions", json=body,
                      headers=headers, timeout=30) as response:
        for _ in response.iter_raw():
            arrivals.append(time.monotonic())
    assert len(arrivals) >= 5
    assert arrivals[-1] - arrivals[0] >= 1.0


def test_gzip_response_reaches_the_sdk_decoded(gateway: Gateway, upstream: FakeUpstream,
                                               tag: str) -> None:
    through, _ = openai_pair(gateway, upstream, tag)
    got = through.chat.completions.with_raw_response.create(
        model="gpt-4o", messages=MESSAGES, extra_headers={"x-fake-behavior": "gzip"})
    assert got.headers["content-encoding"] == "gzip"
    assert got.parse().choices[0].message.content == "Hello from the fake"
    assert gateway[0].record_tagged("test", tag)["input_tokens"] == 25


def test_accept_encoding_narrowed_to_codings_steward_reads(gateway: Gateway,
                                                           upstream: FakeUpstream,
                                                           tag: str) -> None:
    headers = {**raw_headers(gateway, tag), "Accept-Encoding": "br, gzip;q=0.8, zstd"}
    httpx.get(gateway[0].url + "/v1/models", headers=headers)
    assert upstream.last().headers["Accept-Encoding"] == "gzip;q=0.8"


def test_hop_by_hop_headers_are_not_forwarded(gateway: Gateway, upstream: FakeUpstream,
                                              tag: str) -> None:
    headers = {**raw_headers(gateway, tag), "Connection": "keep-alive, x-private",
               "x-private": "secret", "Keep-Alive": "timeout=5", "x-custom": "kept"}
    httpx.get(gateway[0].url + "/v1/models", headers=headers)
    seen = {k.lower() for k in upstream.last().headers}
    assert "x-private" not in seen and "keep-alive" not in seen
    assert upstream.last().headers["x-custom"] == "kept"


def test_custom_provider_by_header(gateway: Gateway, upstream: FakeUpstream, tag: str) -> None:
    client = openai.OpenAI(base_url=gateway[0].url + "/v1", api_key="sk-together",
                           max_retries=0, default_headers={**via_steward(gateway, tag),
                                                           "X-Majordomo-Provider": "together"})
    got = client.chat.completions.create(model="meta-llama/Llama-3-70b", messages=MESSAGES)
    assert got.usage is not None and got.usage.completion_tokens == 12
    assert upstream.last().path == "/together/v1/chat/completions"
    record = gateway[0].record_tagged("test", tag)
    assert (record["provider"], record["format"], record["input_tokens"]) == (
        "together", "openai", 25)


def test_upstream_errors_pass_through_and_are_recorded(gateway: Gateway,
                                                       upstream: FakeUpstream, tag: str) -> None:
    through, _ = anthropic_pair(gateway, upstream, tag)
    with pytest.raises(anthropic.RateLimitError) as caught:
        through.messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=MESSAGES,
                                extra_headers={"x-fake-behavior": "status:429"})
    assert caught.value.status_code == 429
    record = gateway[0].record_tagged("test", tag)
    assert record["status"] == 429
    assert record["error"] == "upstream returned 429: fake upstream error 429"


# -- Gateway errors, in each provider's shape -----------------------------------------------


def post(gateway: Gateway, path: str, headers: dict[str, str], body: Any = None
         ) -> httpx.Response:
    return httpx.post(gateway[0].url + path, json=body or {"model": "m"}, headers=headers,
                      timeout=30)


@pytest.mark.parametrize(("path", "check"), [
    ("/v1/chat/completions", lambda b: b["error"]["type"] == "authentication_error"),
    ("/v1/messages", lambda b: b["type"] == "error"
     and b["error"]["type"] == "authentication_error"),
    ("/v1beta/models/gemini-2.5-flash:generateContent",
     lambda b: b["error"]["status"] == "UNAUTHENTICATED"),
])
def test_missing_or_wrong_key_is_401_in_provider_shape(gateway: Gateway, path: str,
                                                       check: Any) -> None:
    for headers in ({}, {"X-Majordomo-Key": "mdm_sk_not-a-real-key"}):
        got = post(gateway, path, headers)
        assert got.status_code == 401
        assert check(got.json()), got.json()
        assert "X-Majordomo-Key" in json.dumps(got.json())


def test_unknown_path_is_404_listing_supported_paths(gateway: Gateway) -> None:
    got = post(gateway, "/v2/unknown", {"X-Majordomo-Key": gateway[1]})
    assert got.status_code == 404
    assert "/v1/messages" in got.json()["error"]["message"]


def test_unknown_provider_header_is_400_listing_valid_ones(gateway: Gateway) -> None:
    got = post(gateway, "/v1/chat/completions",
               {"X-Majordomo-Key": gateway[1], "X-Majordomo-Provider": "nope"})
    assert got.status_code == 400
    valid = got.json()["error"]["message"].split("valid: ")[1].split(", ")
    assert valid == sorted(valid) and {"anthropic", "gemini", "openai", "together"} <= set(valid)


def test_provider_header_cannot_steer_to_another_host(gateway: Gateway, upstream: FakeUpstream,
                                                      tag: str) -> None:
    count = len(upstream.requests)
    got = post(gateway, "/v1/chat/completions",
               {**via_steward(gateway, tag), "X-Majordomo-Provider": "http://evil.example"})
    assert got.status_code == 400
    got = httpx.post(gateway[0].url + "//evil.example/v1/chat/completions",
                     headers=via_steward(gateway, tag), json={})
    assert got.status_code == 404
    assert len(upstream.requests) == count


def test_body_over_limit_is_413(gateway: Gateway) -> None:
    # The shared daemon keeps the default 32 MiB limit; 33 MiB is refused before upstream.
    got = httpx.post(gateway[0].url + "/v1/messages", content=b"x" * (33 * 1024 * 1024),
                     headers={"X-Majordomo-Key": gateway[1], "x-api-key": "sk-ant-caller",
                              "Content-Type": "application/json"},
                     timeout=60)
    assert got.status_code == 413
    assert got.json()["error"]["type"] == "request_too_large"


def test_too_many_tags_is_400(gateway: Gateway) -> None:
    headers = {"X-Majordomo-Key": gateway[1]}
    headers |= {f"X-Majordomo-T{i}": "v" for i in range(40)}
    got = post(gateway, "/v1/chat/completions", headers)
    assert got.status_code == 400
    assert "tags" in got.json()["error"]["message"]


LOOP_TRAFFIC = [  # (path, body, x-fake-behavior): every format, JSON and streams, gzip, errors
    ("/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES}, ""),
    ("/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES, "stream": True,
                              "stream_options": {"include_usage": True}}, ""),
    ("/v1/chat/completions", {"model": "gpt-4o", "messages": MESSAGES}, "gzip"),
    ("/v1/responses", {"model": "gpt-4o", "input": "hi", "stream": True}, ""),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 9, "messages": MESSAGES}, ""),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 9, "messages": MESSAGES,
                      "stream": True}, ""),
    ("/v1/messages", {"model": "claude-sonnet-4-5", "max_tokens": 9, "messages": MESSAGES},
     "status:429"),
    ("/v1beta/models/gemini-2.5-flash:generateContent",
     {"contents": [{"parts": [{"text": "hi"}]}]}, ""),
    ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
     {"contents": [{"parts": [{"text": "hi"}]}]}, ""),
    ("/v1beta/models/gemini-2.5-flash:streamGenerateContent",
     {"contents": [{"parts": [{"text": "hi"}]}]}, ""),
]


def test_nothing_blocks_the_event_loop(gateway: Gateway, tag: str) -> None:
    """The shared daemon logs any callback that held the loop 25 ms or more (asyncio debug
    mode). This test drives its own traffic of every kind (and waits until its bodies are
    stored), so it checks something when run alone; run last, it also covers all above."""
    with httpx.Client(timeout=30) as client:
        for path, body, behavior in LOOP_TRAFFIC:
            got = client.post(gateway[0].url + path, json=body, headers={
                **raw_headers(gateway, tag), "x-fake-behavior": behavior})
            assert got.status_code == (429 if behavior == "status:429" else 200), got.text
    records = [r for r in gateway[0].records() if r["tags"].get("test") == tag]
    assert len(records) == len(LOOP_TRAFFIC)
    wait_for(lambda: all(stored_bytes(r["body_ref"]) is not None for r in records),
             30, "every body stored")
    steady = gateway[0].log_path.read_bytes()[gateway[0].warm_log_offset:].decode()
    slow = [line for line in steady.splitlines() if "Executing" in line and "took" in line]
    assert slow == []
