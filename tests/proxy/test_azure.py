"""Azure OpenAI through Steward: `openai.AzureOpenAI` (and the plain client on the v1 routes)
against a fake Azure resource that checks `api-key` and `api-version`, each call made through
Steward and directly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.daemon import Daemon, cli, init_home
from tests.support.fake_azure import AZURE_KEY, DEPLOYMENTS, FakeAzure
from tests.support.leaks import assert_no_secrets

API_VERSION = "2024-10-21"
MESSAGES = [{"role": "user", "content": "Say hello"}]
Gateway = tuple[Daemon, str]


@pytest.fixture(scope="module")
def azure() -> Iterator[FakeAzure]:
    fake = FakeAzure().start()
    DEPLOYMENTS["eu-4o"] = "gpt-4o-2024-08-06"  # a data-zone deployment of the same model
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def gateway(azure: FakeAzure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    home = tmp_path_factory.mktemp("azure-home")
    key = init_home(home)
    cli("config", "set", "providers.azure.base_url", azure.url, home=home)
    cli("config", "set", "providers.azure.deployments", "eu-4o=eu/gpt-4o-2024-08-06", home=home)
    cli("providers", "set", "azure", "--api-key-stdin", home=home, input=AZURE_KEY + "\n")
    daemon = Daemon(home, env={"STEWARD_ASYNCIO_DEBUG": "1"}).start()
    yield daemon, key
    daemon.stop()


def pair(gateway: Gateway, azure: FakeAzure, tag: str
         ) -> tuple[openai.AzureOpenAI, openai.AzureOpenAI]:
    """The gateway key is the SDK's api_key: Steward takes it and sends the stored Azure key."""
    through = openai.AzureOpenAI(azure_endpoint=gateway[0].url, api_version=API_VERSION,
                                 api_key=gateway[1], default_headers={"X-Majordomo-Test": tag},
                                 max_retries=0)
    direct = openai.AzureOpenAI(azure_endpoint=azure.url, api_version=API_VERSION,
                                api_key=AZURE_KEY, max_retries=0)
    return through, direct


def assert_sent_as_azure_wants(azure: FakeAzure, gateway: Gateway) -> None:
    seen = azure.requests[-1]
    assert seen.headers["api-key"] == AZURE_KEY
    assert "Authorization" not in seen.headers
    assert not [v for v in seen.headers.values() if gateway[1] in v]
    assert not [h for h in seen.headers if h.lower().startswith("x-majordomo-")]


def test_chat(gateway: Gateway, azure: FakeAzure, tag: str) -> None:
    through, direct = pair(gateway, azure, tag)
    got = through.chat.completions.create(model="prod-4o", messages=MESSAGES)
    assert_sent_as_azure_wants(azure, gateway)
    assert azure.requests[-1].path == "/openai/deployments/prod-4o/chat/completions"
    assert azure.requests[-1].query == f"api-version={API_VERSION}"
    assert got.model_dump() == direct.chat.completions.create(
        model="prod-4o", messages=MESSAGES).model_dump()
    record = gateway[0].record_tagged("test", tag)
    assert {k: record[k] for k in (
        "provider", "format", "endpoint", "model", "response_model", "status", "stream",
        "input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens", "cost",
        "input_cost", "output_cost", "pricing_status", "pricing_model", "error")} == {
        "provider": "azure", "format": "azure", "endpoint": "chat/completions",
        "model": "prod-4o", "response_model": "gpt-4o-2024-08-06", "status": 200,
        "stream": False, "input_tokens": 25, "output_tokens": 12, "cache_read_tokens": 5,
        "reasoning_tokens": 4,
        # 20 x 2.50 + 5 x 1.25 + 12 x 10 USD per million: azure/gpt-4o-2024-08-06
        "cost": "0.00017625", "input_cost": "0.00005625", "output_cost": "0.00012",
        "pricing_status": "ok", "pricing_model": "azure/gpt-4o-2024-08-06", "error": None}


def test_stream_with_usage_relayed_byte_for_byte(gateway: Gateway, azure: FakeAzure,
                                                 tag: str) -> None:
    through, direct = pair(gateway, azure, tag)
    kwargs: dict[str, Any] = {"model": "prod-4o", "messages": MESSAGES, "stream": True,
                              "stream_options": {"include_usage": True}}
    got = [c.model_dump() for c in through.chat.completions.create(**kwargs)]
    assert got == [c.model_dump() for c in direct.chat.completions.create(**kwargs)]
    assert got[0]["choices"] == [] and got[0]["model"] == ""  # the prompt-filter chunk
    record = gateway[0].record_tagged("test", tag)
    assert (record["stream"], record["response_model"], record["input_tokens"],
            record["output_tokens"], record["cache_read_tokens"], record["reasoning_tokens"],
            record["cost"], record["error"]) == (
        True, "gpt-4o-2024-08-06", 25, 12, 5, 4, "0.00017625", None)

    url = "/openai/deployments/prod-4o/chat/completions?api-version=" + API_VERSION
    body = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    relayed = httpx.post(gateway[0].url + url, json=body, timeout=30,
                         headers={"api-key": gateway[1], "X-Majordomo-Test": tag + "-raw"})
    sent = httpx.post(azure.url + url, json=body, headers={"api-key": AZURE_KEY}, timeout=30)
    assert relayed.status_code == sent.status_code == 200
    assert relayed.content == sent.content


def test_stream_without_usage_is_not_a_guessed_zero(gateway: Gateway, azure: FakeAzure,
                                                    tag: str) -> None:
    through, _ = pair(gateway, azure, tag)
    chunks = list(through.chat.completions.create(model="prod-4o", messages=MESSAGES,
                                                  stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks
                   if c.choices and c.choices[0].delta) == "Hello from the fake"
    record = gateway[0].record_tagged("test", tag)
    assert (record["input_tokens"], record["cost"], record["pricing_status"],
            record["response_model"], record["error"]) == (
        None, None, "no_usage", "gpt-4o-2024-08-06", None)


def test_embeddings(gateway: Gateway, azure: FakeAzure, tag: str) -> None:
    through, direct = pair(gateway, azure, tag)
    got = through.embeddings.create(model="embed", input="hello")
    assert got.model_dump() == direct.embeddings.create(model="embed", input="hello").model_dump()
    assert_sent_as_azure_wants(azure, gateway)
    record = gateway[0].record_tagged("test", tag)
    assert (record["endpoint"], record["model"], record["input_tokens"],
            record["output_tokens"], record["cost"], record["pricing_model"]) == (
        "embeddings", "embed", 8, 0, "0.000000176", "azure/text-embedding-3-small")


def test_configured_deployment_prices_its_data_zone(gateway: Gateway, azure: FakeAzure,
                                                    tag: str) -> None:
    through, _ = pair(gateway, azure, tag)
    through.chat.completions.create(model="eu-4o", messages=MESSAGES)
    record = gateway[0].record_tagged("test", tag)
    # 20 x 2.75 + 5 x 1.375 + 12 x 11 USD per million: azure/eu/gpt-4o-2024-08-06
    assert (record["model"], record["response_model"], record["pricing_model"],
            record["cost"]) == ("eu-4o", "gpt-4o-2024-08-06", "azure/eu/gpt-4o-2024-08-06",
                                "0.000193875")


def test_v1_routes_with_the_plain_client(gateway: Gateway, azure: FakeAzure, tag: str) -> None:
    through = openai.OpenAI(base_url=gateway[0].url + "/openai/v1/", api_key=gateway[1],
                            default_headers={"X-Majordomo-Test": tag}, max_retries=0)
    direct = openai.OpenAI(base_url=azure.url + "/openai/v1/", api_key=AZURE_KEY, max_retries=0)
    got = through.chat.completions.create(model="mini", messages=MESSAGES)
    assert got.model_dump() == direct.chat.completions.create(
        model="mini", messages=MESSAGES).model_dump()
    record = gateway[0].record_tagged("test", tag)
    assert (record["endpoint"], record["model"], record["response_model"],
            record["pricing_model"], record["input_tokens"]) == (
        "chat/completions", "mini", "gpt-4o-mini-2024-07-18", "azure/gpt-4o-mini-2024-07-18", 25)


def test_missing_api_version_is_a_clear_400(gateway: Gateway, azure: FakeAzure,
                                            tag: str) -> None:
    seen = len(azure.requests)
    response = httpx.post(gateway[0].url + "/openai/deployments/prod-4o/chat/completions",
                          json={"messages": MESSAGES}, timeout=30,
                          headers={"api-key": gateway[1], "X-Majordomo-Test": tag})
    assert response.status_code == 400
    assert "api-version" in response.json()["error"]["message"]
    assert len(azure.requests) == seen  # Azure's own answer would be a bare 404
    record = gateway[0].record_tagged("test", tag)
    assert record["status"] == 400 and "api-version" in record["error"]


def test_the_azure_key_leaks_nowhere(gateway: Gateway, azure: FakeAzure, tag: str) -> None:
    through, _ = pair(gateway, azure, tag)
    through.chat.completions.create(model="prod-4o", messages=MESSAGES)
    list(through.chat.completions.create(model="prod-4o", messages=MESSAGES, stream=True))
    listed = cli("providers", "list", home=gateway[0].home).stdout
    assert "azure" in listed and AZURE_KEY[-4:] in listed
    assert_no_secrets(gateway[0], [AZURE_KEY, gateway[1]])
