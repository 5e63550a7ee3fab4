"""Cost, worked out by hand from the bundled table's prices (USD per token, shown per million):

gpt-4o: in 2.50, out 10, cache read 1.25; priority: in 4.25, out 17
o3: in 2, out 8, cache read 0.50; flex: in 1, out 4, cache read 0.25
text-embedding-3-small: in 0.02
claude-sonnet-4-5: in 3, out 15, cache read 0.30, cache write 3.75, 1-hour write 6
gemini/gemini-2.5-pro: in 1.25, out 10, cache read 0.125; above 200k: in 2.50, out 15, read 0.25
gemini/gemini-2.5-flash: in 0.30, out 2.50, cache read 0.03, reasoning 2.50
"""

from __future__ import annotations

import http.server
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from steward import db
from steward.errors import StewardError
from steward.pricing import pricer as pricing
from steward.pricing import table as price_table
from steward.pricing.pricer import Pricer
from steward.providers import FORMATS
from tests.support.daemon import Daemon, cli, provider_env
from tests.support.fake_upstream import FakeUpstream
from tests.support.loopback import QuietHandler, serving
from tests.support.waiting import wait_for

BUNDLED = price_table.load(price_table.BUNDLED)


def rec(fmt: str, model: str, response_model: str | None = None, **usage: Any) -> dict:
    base = {"input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0,
            "cache_write_tokens": 0, "cache_write_5m_tokens": None, "cache_write_1h_tokens": 0,
            "reasoning_tokens": 0, "tool_use_prompt_tokens": 0, "service_tier": None}
    return {"format": fmt, "model": model, "response_model": response_model, **base, **usage}


OVERRIDES = {"my-model": {"input_cost_per_token": "0.0000015", "output_cost_per_token": "0.000002",
                          "cache_read_input_token_cost": "1.5E-7"},
             "gpt-4o-mini-override": {"input_cost_per_token": "0.000001",
                                      "output_cost_per_token": "0.000001"}}

CASES: list[tuple[str, dict, str | None, str]] = [
    # 800 x 2.50 + 200 x 1.25 = 2,250; 500 x 10 = 5,000 (per million) -> 0.00725
    ("openai chat, cached", rec("openai", "gpt-4o", input_tokens=1000, cache_read_tokens=200,
                                output_tokens=500), "0.00725", "ok"),
    ("openai dated name present in the table",
     rec("openai", "gpt-4o", "gpt-4o-2024-08-06", input_tokens=1000, cache_read_tokens=200,
         output_tokens=500), "0.00725", "ok"),
    ("openai dated name absent: falls back to its base",
     rec("openai", "gpt-4o", "gpt-4o-2099-01-01", input_tokens=1000, cache_read_tokens=200,
         output_tokens=500), "0.00725", "ok"),
    # reasoning is inside completion: 1000 x 1 + 2000 x 4 (flex) = 9,000 -> 0.009
    ("openai reasoning, flex tier", rec("openai", "o3", input_tokens=1000, output_tokens=2000,
                                        reasoning_tokens=1500, service_tier="flex"),
     "0.009", "ok"),
    # 100 x 4.25 + 100 x 17 = 2,125 -> 0.002125
    ("openai priority tier", rec("openai", "gpt-4o", input_tokens=100, output_tokens=100,
                                 service_tier="priority"), "0.002125", "ok"),
    ("openai default tier uses base prices",
     rec("openai", "gpt-4o", input_tokens=100, output_tokens=100, service_tier="default"),
     "0.00125", "ok"),
    # responses: 20 x 2 + 10 x 0.5 = 45; 20 x 8 = 160 -> 0.000205
    ("openai responses, streamed or not", rec("openai", "o3", input_tokens=30,
                                              cache_read_tokens=10, output_tokens=20,
                                              reasoning_tokens=8), "0.000205", "ok"),
    # 8 x 0.02 = 0.16 -> 0.00000016
    ("openai embeddings: input only", rec("openai", "text-embedding-3-small", input_tokens=8),
     "0.00000016", "ok"),
    # 1000 x 3 + 500 x 15 = 10,500 -> 0.0105
    ("anthropic plain", rec("anthropic", "claude-sonnet-4-5", input_tokens=1000,
                            output_tokens=500), "0.0105", "ok"),
    # 40 x 3 + 200 x 0.3 + 100 x 3.75 + 200 x 6 = 1,755; 15 x 15 = 225 -> 0.00198
    ("anthropic cache reads and both write TTLs",
     rec("anthropic", "claude-sonnet-4-5", input_tokens=540, cache_read_tokens=200,
         cache_write_tokens=300, cache_write_5m_tokens=100, cache_write_1h_tokens=200,
         output_tokens=15), "0.00198", "ok"),
    ("anthropic dated snapshot",
     rec("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929", input_tokens=540,
         cache_read_tokens=200, cache_write_tokens=300, cache_write_5m_tokens=100,
         cache_write_1h_tokens=200, output_tokens=15), "0.00198", "ok"),
    # 1000 x 3.75 = 3,750 -> 0.00375 (no TTL split reported: all 5-minute writes)
    ("anthropic writes without a TTL split",
     rec("anthropic", "claude-sonnet-4-5", input_tokens=1000, cache_write_tokens=1000),
     "0.00375", "ok"),
    # 8000 x 1.25 + 2000 x 0.125 = 10,250; 600 x 10 + 400 x 10 = 10,000 -> 0.02025
    ("gemini prefixed name, cached, thoughts",
     rec("gemini", "gemini-2.5-pro", input_tokens=10000, cache_read_tokens=2000,
         output_tokens=1000, reasoning_tokens=400), "0.02025", "ok"),
    # over 200k: 200000 x 2.5 + 50000 x 0.25 = 512,500; 2000 x 15 = 30,000 -> 0.5425
    ("gemini long-context tier crossing",
     rec("gemini", "gemini-2.5-pro", input_tokens=250000, cache_read_tokens=50000,
         output_tokens=2000), "0.5425", "ok"),
    ("gemini exactly at the threshold stays in the base tier",
     rec("gemini", "gemini-2.5-pro", input_tokens=200000), "0.25", "ok"),
    # 1000 x 0.3 = 300; 200 x 2.5 + 300 x 2.5 (reasoning price) = 1,250 -> 0.00155
    ("gemini reasoning price", rec("gemini", "models/gemini-2.5-flash", input_tokens=1000,
                                   output_tokens=500, reasoning_tokens=300), "0.00155", "ok"),
    # (1000 + 100 tool-use prompt) x 0.3 = 330 -> 0.00033
    ("gemini tool-use prompt tokens", rec("gemini", "gemini-2.5-flash", input_tokens=1000,
                                          tool_use_prompt_tokens=100), "0.00033", "ok"),
    # 900 x 1.5 + 100 x 0.15 = 1,365; 1000 x 2 = 2,000 -> 0.003365
    ("override for a model not in the table",
     rec("openai", "my-model", input_tokens=1000, cache_read_tokens=100, output_tokens=1000),
     "0.003365", "override"),
    ("override wins over the table",
     rec("openai", "gpt-4o-mini-override", input_tokens=1000, output_tokens=1000), "0.002",
     "override"),
    ("the provider's model wins over the requested one",
     rec("openai", "gpt-4o", "o3", input_tokens=1000, output_tokens=1000), "0.01", "ok"),
    ("an unknown reported model falls back to the requested one",
     rec("openai", "gpt-4o", "gpt-4o-internal-preview", input_tokens=100, output_tokens=100),
     "0.00125", "ok"),
    ("unknown model: cost null, never 0", rec("openai", "llama-9000", input_tokens=10),
     None, "unknown_model"),
    ("no usage reported: cost null", rec("openai", "gpt-4o", input_tokens=None), None,
     "no_usage"),
    ("zero tokens cost zero", rec("openai", "gpt-4o"), "0", "ok"),
]


@pytest.mark.parametrize(("record", "cost", "status"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_costs(record: dict, cost: str | None, status: str) -> None:
    fields = Pricer(BUNDLED, "bundled", OVERRIDES).cost(record)
    assert fields["cost"] == cost
    assert fields["pricing_status"] == status
    assert fields["pricing_version"] == f"{BUNDLED['version']}@{BUNDLED['date']}"
    if cost is not None:
        assert Decimal(fields["input_cost"]) + Decimal(fields["output_cost"]) == Decimal(cost)


def test_unknown_model_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    pricer = Pricer(BUNDLED, "bundled")
    for _ in range(3):
        pricer.cost(rec("openai", "llama-9000", input_tokens=1))
    assert sum("llama-9000" in r.message for r in caplog.records) == 1


def test_bundled_table_records_its_source() -> None:
    assert BUNDLED["source"].startswith("litellm ") and BUNDLED["date"]
    assert len(BUNDLED["models"]) > 100
    assert {m["provider"] for m in BUNDLED["models"].values()} == {
        f.name for f in FORMATS.values() if f.price_providers}


# -- pricing update -------------------------------------------------------------------------


def litellm_table(gpt4o_input: float) -> dict:
    return {
        "sample_spec": {"input_cost_per_token": 0},
        "gpt-4o": {"litellm_provider": "openai", "mode": "chat",
                   "input_cost_per_token": gpt4o_input, "output_cost_per_token": 1e-05},
        "claude-sonnet-4-5": {"litellm_provider": "anthropic", "input_cost_per_token": 3e-06,
                              "output_cost_per_token": 1.5e-05},
        "gemini/gemini-2.5-pro": {"litellm_provider": "gemini", "input_cost_per_token": 1e-06,
                                  "output_cost_per_token": 1e-05},
        "cohere-only": {"litellm_provider": "cohere", "input_cost_per_token": 1},
    }


class Server(http.server.ThreadingHTTPServer):
    pages: dict[str, tuple[int, bytes]]


class Handler(QuietHandler):
    def do_GET(self) -> None:
        status, body = self.server.pages[self.path]  # type: ignore[attr-defined]
        self.send(status, body)


@pytest.fixture
def price_server() -> Iterator[Server]:
    good = json.dumps(litellm_table(5e-06)).encode()
    with serving(Handler, Server) as server:
        server.pages = {
            "/good.json": (200, good), "/truncated.json": (200, good[:len(good) // 2]),
            "/shape.json": (200, b'["not", "a", "table"]'),
            "/negative.json": (200, json.dumps(litellm_table(-1.0)).encode()),
            "/sparse.json": (200, b'{"gpt-4o": {"litellm_provider": "openai", '
                                  b'"input_cost_per_token": 1}}'),
            "/error.json": (500, b"oops")}
        yield server


def test_pricing_update_keeps_the_last_good_table(fresh_home: tuple[Path, str],
                                                  price_server: Server) -> None:
    home, _ = fresh_home
    base = f"http://127.0.0.1:{price_server.server_address[1]}"
    assert "version" in cli("pricing", "update", "--url", f"{base}/good.json", home=home).stdout
    good = (home / "prices.json").read_bytes()
    for page, why in [("truncated", "not valid JSON"), ("shape", "not a price table"),
                      ("negative", "not a non-negative number"),
                      ("sparse", "well-known models missing"), ("error", "answered 500")]:
        result = cli("pricing", "update", "--url", f"{base}/{page}.json", home=home,
                     check=False)
        assert result.returncode == 1, page
        assert why in result.stderr and "keeping the current table" in result.stderr, page
        assert "Traceback" not in result.stderr
        assert (home / "prices.json").read_bytes() == good
    shown = json.loads(cli("pricing", "show", "gpt-4o", "--json", home=home).stdout)
    assert shown["models"] == [{"model": "gpt-4o", "source": "updated", "input": "5",
                                "output": "10", "cache_read": None, "cache_write": None,
                                "cache_write_1h": None}]
    assert "cohere-only" not in (home / "prices.json").read_text()


def test_overrides_from_the_cli(fresh_home: tuple[Path, str]) -> None:
    home, _ = fresh_home
    cli("pricing", "set", "gpt-4o", "--input", "1", "--output", "2", "--cache-read", "0.5",
        home=home)
    shown = json.loads(cli("pricing", "show", "gpt-4o", "--json", home=home).stdout)["models"]
    assert shown[0]["source"] == "override" and shown[0]["input"] == "1"
    assert shown[0]["cache_read"] == "0.5"
    cli("pricing", "unset", "gpt-4o", home=home)
    shown = json.loads(cli("pricing", "show", "gpt-4o", "--json", home=home).stdout)["models"]
    assert shown[0]["source"] == "bundled" and shown[0]["input"] == "2.5"
    missing = cli("pricing", "unset", "gpt-4o", home=home, check=False)
    assert missing.returncode == 1 and "no price override" in missing.stderr


def test_the_running_daemon_picks_up_new_prices(fresh_home: tuple[Path, str],
                                               upstream: FakeUpstream, tmp_path: Path) -> None:
    """The fake upstream answers gpt-4o with 25 input (5 cached) and 12 output tokens."""
    home, key = fresh_home
    daemon = Daemon(home, env=provider_env(upstream.url)).start()
    headers = {"X-Majordomo-Key": key, "Authorization": "Bearer sk"}
    body = {"model": "gpt-4o", "messages": [], "stream": True,
            "stream_options": {"include_usage": True}}

    def cost() -> str | None:
        httpx.post(daemon.url + "/v1/chat/completions", json=body, headers=headers)
        return daemon.records()[-1]["cost"]

    try:
        # bundled: 20 x 2.5 + 5 x 1.25 + 12 x 10 = 176.25 per million
        assert cost() == "0.00017625"
        assert daemon.records()[-1]["stream"] is True
        table = tmp_path / "t.json"
        table.write_text(json.dumps(litellm_table(5e-06)))
        cli("pricing", "update", "--file", str(table), home=home)
        # updated: 25 x 5 (no cache-read price: input price) + 12 x 10 = 245 per million
        wait_for(lambda: cost() == "0.000245", 10, "the updated table")
        cli("pricing", "set", "gpt-4o-2024-08-06", "--input", "1", "--output", "1", home=home)
        wait_for(lambda: cost() == "0.000037", 10, "the override")  # 37 tokens x 1
        assert daemon.records()[-1]["pricing_status"] == "override"
    finally:
        daemon.stop()


def test_reduce_rejects_bad_numbers() -> None:
    with pytest.raises(StewardError, match="not a non-negative number"):
        price_table.reduce({"gpt-4o": {"litellm_provider": "openai",
                                       "input_cost_per_token": "NaN"}}, "x")


def test_override_rejects_negative_prices(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "s.db")
    with pytest.raises(StewardError, match="non-negative"):
        pricing.set_override(conn, "m", {"input": Decimal(-1), "output": Decimal(1)})
