"""Vertex AI through Steward: google-genai (`vertexai=True`) and `anthropic.AnthropicVertex`
against a fake Vertex that accepts only OAuth tokens a fake Google token endpoint minted from
the service-account key stored in Steward. Each call is made through Steward and directly."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from google import genai
from google.auth.transport.requests import Request
from google.genai import types as genai_types
from google.oauth2 import credentials as oauth_credentials
from google.oauth2 import service_account

from tests.support.daemon import Daemon, cli, init_home
from tests.support.fake_vertex import FakeGoogleOAuth, FakeVertex, write_key
from tests.support.leaks import assert_no_secrets
from tests.support.waiting import wait_for

PROJECT, LOCATION = "steward-test", "us-central1"
GEMINI = "gemini-2.5-flash"
CLAUDE = "claude-sonnet-4-5@20250929"
Gateway = tuple[Daemon, str]
# The HTTP response's own headers (date, server: Steward's Hypercorn adds its name) differ.
NOT_COMPARED = {"sdk_http_response"}


@pytest.fixture(scope="module")
def google() -> Iterator[tuple[FakeGoogleOAuth, FakeVertex]]:
    oauth = FakeGoogleOAuth().start()
    vertex = FakeVertex(oauth).start()
    yield oauth, vertex
    vertex.stop()
    oauth.stop()


@pytest.fixture(scope="module")
def key(google: tuple[FakeGoogleOAuth, FakeVertex]) -> dict[str, str]:
    return google[0].new_key()


@pytest.fixture(scope="module")
def gateway(google: tuple[FakeGoogleOAuth, FakeVertex], key: dict[str, str],
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("vertex-home")
    gateway_key = init_home(home)
    cli("config", "set", "providers.vertex.base_url", google[1].url, home=home)
    key_file = write_key(tmp_path_factory.mktemp("sa") / "sa.json", key)
    stored = cli("providers", "set", "vertex", "--from-file", str(key_file), home=home)
    assert key["private_key_id"][-4:] in stored.stdout
    daemon = Daemon(home, env={"STEWARD_ASYNCIO_DEBUG": "1"}).start()
    yield daemon, gateway_key
    daemon.stop()


def minted(key: dict[str, str]) -> str:
    """A token for the direct calls, minted as any Google client would."""
    creds = service_account.Credentials.from_service_account_info(
        key, scopes=["https://www.googleapis.com/auth/cloud-platform"])
    creds.refresh(Request())
    return str(creds.token)


def genai_pair(gateway: Gateway, vertex: FakeVertex, key: dict[str, str], tag: str
               ) -> tuple[genai.Client, genai.Client]:
    """Through Steward the SDK's token is the gateway key: Steward swaps it for its own."""
    through = genai.Client(
        vertexai=True, project=PROJECT, location=LOCATION,
        credentials=oauth_credentials.Credentials(token=gateway[1]),
        http_options=genai_types.HttpOptions(base_url=gateway[0].url,
                                             headers={"X-Majordomo-Test": tag}))
    direct = genai.Client(
        vertexai=True, project=PROJECT, location=LOCATION,
        credentials=oauth_credentials.Credentials(token=minted(key)),
        http_options=genai_types.HttpOptions(base_url=vertex.url))
    return through, direct


def claude_pair(gateway: Gateway, vertex: FakeVertex, key: dict[str, str], tag: str
                ) -> tuple[anthropic.AnthropicVertex, anthropic.AnthropicVertex]:
    through = anthropic.AnthropicVertex(
        region=LOCATION, project_id=PROJECT, base_url=gateway[0].url + "/v1",
        access_token=gateway[1], default_headers={"X-Majordomo-Test": tag}, max_retries=0)
    direct = anthropic.AnthropicVertex(region=LOCATION, project_id=PROJECT,
                                       base_url=vertex.url + "/v1", access_token=minted(key),
                                       max_retries=0)
    return through, direct


def assert_sent_with_stewards_token(google: tuple[FakeGoogleOAuth, FakeVertex],
                                    gateway: Gateway) -> None:
    seen = google[1].requests[-1]
    token = seen.headers["Authorization"].removeprefix("Bearer ")
    assert google[0].valid(token)  # minted by the token endpoint for the stored key
    assert gateway[1] not in json.dumps(seen.headers)
    assert not [h for h in seen.headers if h.lower().startswith("x-majordomo-")]


def fields(record: dict[str, Any], *names: str) -> tuple[Any, ...]:
    return tuple(record[n] for n in names)


USAGE = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
         "cache_write_5m_tokens", "cache_write_1h_tokens", "reasoning_tokens")
COST = ("cost", "input_cost", "output_cost", "pricing_status", "pricing_model")
# 40 x 0.30 + 10 x 0.03 (cached) in, 35 x 2.50 out (15 of them thoughts) USD per million
GEMINI_COST = ("0.0000998", "0.0000123", "0.0000875", "ok", "gemini-2.5-flash")
# 40 x 3 + 200 x 0.30 + 100 x 3.75 + 200 x 6 in, 15 x 15 out: vertex_ai/claude-sonnet-4-5
CLAUDE_COST = ("0.00198", "0.001755", "0.000225", "ok", "vertex_ai/claude-sonnet-4-5")


def test_gemini_generate(gateway: Gateway, google: tuple[FakeGoogleOAuth, FakeVertex],
                         key: dict[str, str], tag: str) -> None:
    through, direct = genai_pair(gateway, google[1], key, tag)
    got = through.models.generate_content(model=GEMINI, contents="Say hello")
    assert_sent_with_stewards_token(google, gateway)
    assert google[1].requests[-1].path == (f"/v1beta1/projects/{PROJECT}/locations/{LOCATION}"
                                           f"/publishers/google/models/{GEMINI}:generateContent")
    want = direct.models.generate_content(model=GEMINI, contents="Say hello")
    assert got.model_dump(exclude=NOT_COMPARED) == want.model_dump(exclude=NOT_COMPARED)
    record = gateway[0].record_tagged("test", tag)
    assert fields(record, "provider", "format", "endpoint", "model", "response_model",
                  "service_tier", "status", "stream", "error") == (
        "vertex", "vertex", "generateContent", GEMINI, GEMINI, "standard", 200, False, None)
    assert fields(record, *USAGE) == (50, 35, 10, 0, None, None, 15)
    assert fields(record, *COST) == GEMINI_COST


def test_gemini_stream_relayed_byte_for_byte(gateway: Gateway,
                                             google: tuple[FakeGoogleOAuth, FakeVertex],
                                             key: dict[str, str], tag: str) -> None:
    through, direct = genai_pair(gateway, google[1], key, tag)
    got = [c.model_dump(exclude=NOT_COMPARED) for c in through.models.generate_content_stream(
        model=GEMINI, contents="Say hello")]
    assert got == [c.model_dump(exclude=NOT_COMPARED) for c in
                   direct.models.generate_content_stream(model=GEMINI, contents="Say hello")]
    record = gateway[0].record_tagged("test", tag)
    assert fields(record, "endpoint", "stream", *USAGE) == (
        "streamGenerateContent", True, 50, 35, 10, 0, None, None, 15)
    assert fields(record, *COST) == GEMINI_COST

    path = (f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
            f"{GEMINI}:streamGenerateContent")
    body = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
    for query in ("?alt=sse", ""):
        relayed = httpx.post(gateway[0].url + path + query, json=body, timeout=30,
                             headers={"Authorization": f"Bearer {gateway[1]}"})
        sent = httpx.post(google[1].url + path + query, json=body, timeout=30,
                          headers={"Authorization": f"Bearer {minted(key)}"})
        assert relayed.status_code == sent.status_code == 200
        assert relayed.content == sent.content


def test_claude_generate(gateway: Gateway, google: tuple[FakeGoogleOAuth, FakeVertex],
                         key: dict[str, str], tag: str) -> None:
    through, direct = claude_pair(gateway, google[1], key, tag)
    kwargs: dict[str, Any] = {"model": CLAUDE, "max_tokens": 64,
                              "messages": [{"role": "user", "content": "Say hello"}]}
    got = through.messages.create(**kwargs)
    assert_sent_with_stewards_token(google, gateway)
    assert google[1].requests[-1].path.endswith(f"/publishers/anthropic/models/{CLAUDE}"
                                                ":rawPredict")
    assert got.model_dump() == direct.messages.create(**kwargs).model_dump()
    record = gateway[0].record_tagged("test", tag)
    assert fields(record, "endpoint", "model", "response_model", "stream", "error") == (
        "rawPredict", CLAUDE, "claude-sonnet-4-5-20250929", False, None)
    assert fields(record, *USAGE) == (540, 15, 200, 300, 100, 200, None)
    assert fields(record, *COST) == CLAUDE_COST


def test_claude_stream_relayed_byte_for_byte(gateway: Gateway,
                                             google: tuple[FakeGoogleOAuth, FakeVertex],
                                             key: dict[str, str], tag: str) -> None:
    through, direct = claude_pair(gateway, google[1], key, tag)
    kwargs: dict[str, Any] = {"model": CLAUDE, "max_tokens": 64, "stream": True,
                              "messages": [{"role": "user", "content": "Say hello"}]}
    got = [e.model_dump() for e in through.messages.create(**kwargs)]
    assert got == [e.model_dump() for e in direct.messages.create(**kwargs)]
    record = gateway[0].record_tagged("test", tag)
    assert fields(record, "endpoint", "stream", *USAGE) == (
        "streamRawPredict", True, 540, 15, 200, 300, 100, 200, None)
    assert fields(record, *COST) == CLAUDE_COST

    path = (f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/anthropic/models/"
            f"{CLAUDE}:streamRawPredict")
    body = {"anthropic_version": "vertex-2023-10-16", "max_tokens": 64, "stream": True,
            "messages": [{"role": "user", "content": "Say hello"}]}
    relayed = httpx.post(gateway[0].url + path, json=body, timeout=30,
                         headers={"X-Majordomo-Key": gateway[1]})
    sent = httpx.post(google[1].url + path, json=body, timeout=30,
                      headers={"Authorization": f"Bearer {minted(key)}"})
    assert relayed.status_code == sent.status_code == 200
    assert relayed.content == sent.content


def test_callers_own_google_credentials_never_go_upstream(
        gateway: Gateway, google: tuple[FakeGoogleOAuth, FakeVertex], tag: str) -> None:
    path = (f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models/"
            f"{GEMINI}:countTokens")
    response = httpx.post(gateway[0].url + path, json={"contents": []}, timeout=30, headers={
        "X-Majordomo-Key": gateway[1], "X-Majordomo-Test": tag,
        "Authorization": "Bearer ya29.the-callers-own", "x-goog-user-project": "theirs"})
    assert response.status_code == 200, response.text
    assert_sent_with_stewards_token(google, gateway)
    assert "x-goog-user-project" not in {h.lower() for h in google[1].requests[-1].headers}
    record = gateway[0].record_tagged("test", tag)
    assert fields(record, "endpoint", "model", "input_tokens") == ("countTokens", GEMINI, None)


def test_the_service_account_key_leaks_nowhere(gateway: Gateway,
                                               google: tuple[FakeGoogleOAuth, FakeVertex],
                                               key: dict[str, str], tag: str) -> None:
    through, _ = genai_pair(gateway, google[1], key, tag)
    through.models.generate_content(model=GEMINI, contents="Say hello")
    listed = cli("providers", "list", home=gateway[0].home).stdout
    assert "vertex" in listed and key["private_key_id"][-4:] in listed
    pem_lines = [line for line in key["private_key"].splitlines() if "-----" not in line]
    tokens = [i.token for i in google[0].issued]
    assert_no_secrets(gateway[0], [*pem_lines, json.dumps(key), gateway[1], *tokens])


# -- renewal, Application Default Credentials ------------------------------------------------


def test_tokens_are_renewed_in_the_background_and_no_request_waits(
        tmp_path: Path) -> None:
    """Tokens that last 6 s, from ADC (credentials = "default"): Steward renews each before it
    expires, with the token endpoint stuck for a while, and no request fails or waits."""
    oauth = FakeGoogleOAuth(expires_in=6).start()
    vertex = FakeVertex(oauth).start()
    home = tmp_path / "home"
    gateway_key = init_home(home)
    key_file = write_key(tmp_path / "adc.json", oauth.new_key())
    cli("config", "set", "providers.vertex.base_url", vertex.url, home=home)
    cli("config", "set", "providers.vertex.credentials", "default", home=home)
    daemon = Daemon(home, env={"GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
                               "STEWARD_AUTH_REFRESH_SECONDS": "0.2"}).start()
    url = (daemon.url + f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/"
           f"models/{GEMINI}:generateContent")
    statuses: list[int] = []

    def call() -> httpx.Response:
        response = httpx.post(url, json={"contents": []}, timeout=30,
                              headers={"X-Majordomo-Key": gateway_key})
        statuses.append(response.status_code)
        return response

    try:
        assert oauth.issued, "the first token is minted before the daemon serves"
        call()
        first = oauth.issued[0]
        # The token endpoint stops answering: the next renewal hangs in its thread, and
        # requests are served all the while with the token in hand.
        oauth.hold()
        wait_for(lambda: oauth.waiting, what="a renewal waiting at the token endpoint")
        minted_so_far = len(oauth.issued)
        for _ in range(3):
            call()
        assert oauth.waiting and len(oauth.issued) == minted_so_far
        oauth.release()
        wait_for(lambda: len(oauth.issued) > minted_so_far, what="the renewed token")
        # Past the first token's expiry (the fake refuses it then), requests still succeed.
        wait_for(lambda: call() and not oauth.valid(first.token), timeout=15,
                 what="the first token to expire")
        wait_for(lambda: call() and len(oauth.issued) > minted_so_far + 1, timeout=15,
                 what="another renewal")
        assert len({r.headers["Authorization"] for r in vertex.requests}) >= 2
        records = daemon.records()
        assert set(statuses) == {200}
        assert all(r["status"] == 200 and r["error"] is None for r in records)
        assert len(records) == len(statuses)
        assert "could not mint" not in daemon.log()
    finally:
        oauth.release()
        daemon.stop()
        vertex.stop()
        oauth.stop()
