"""The clouds' entries in the bundled table, and which entry a record is priced by: its own
format's first (Vertex's bare Gemini names must not price AI Studio calls, nor OpenAI's bare
names Azure's), then a configured alias (an Azure deployment's model and data zone)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from steward.pricing import table as price_table
from steward.pricing.pricer import Pricer
from steward.providers.vertex import FORMAT as VERTEX

BUNDLED = price_table.load(price_table.BUNDLED)


def priced(fmt: str, model: str, response_model: str | None = None,
           aliases: dict[tuple[str, str], str] | None = None) -> dict[str, Any]:
    pricer = Pricer(BUNDLED, "bundled")
    pricer.aliases = aliases or {}
    return pricer.cost({"provider": fmt, "format": fmt, "model": model,
                        "response_model": response_model, "input_tokens": 1000,
                        "output_tokens": 100})


@pytest.mark.parametrize(("fmt", "model", "response_model", "entry"), [
    ("gemini", "gemini-2.5-flash", None, "gemini/gemini-2.5-flash"),
    ("vertex", "gemini-2.5-flash", "gemini-2.5-flash", "gemini-2.5-flash"),
    ("vertex", "claude-sonnet-4-5@20250929", "claude-sonnet-4-5-20250929",
     "vertex_ai/claude-sonnet-4-5"),
    ("vertex", "claude-sonnet-4-5@20250929", None, "vertex_ai/claude-sonnet-4-5@20250929"),
    ("anthropic", "claude-sonnet-4-5", "claude-sonnet-4-5-20250929",
     "claude-sonnet-4-5-20250929"),
    ("azure", "prod-4o", "gpt-4o-2024-08-06", "azure/gpt-4o-2024-08-06"),
    ("openai", "gpt-4o", "gpt-4o-2024-08-06", "gpt-4o-2024-08-06"),
])
def test_each_format_prices_by_its_own_entries(fmt: str, model: str, response_model: str | None,
                                               entry: str) -> None:
    cost = priced(fmt, model, response_model)
    assert (cost["pricing_status"], cost["pricing_model"]) == ("ok", entry)
    assert BUNDLED["models"][entry]["provider"] == fmt


def test_an_alias_names_the_data_zone_entry() -> None:
    aliases = {("azure", "eu-4o"): "eu/gpt-4o-2024-08-06"}
    cost = priced("azure", "eu-4o", "gpt-4o-2024-08-06", aliases)
    assert cost["pricing_model"] == "azure/eu/gpt-4o-2024-08-06"
    # 1000 x 2.75 + 100 x 11 USD per million
    assert (cost["input_cost"], cost["output_cost"]) == ("0.00275", "0.0011")
    # another provider's deployment of the same name is not aliased
    assert priced("openai", "eu-4o", "gpt-4o-2024-08-06", aliases)["pricing_model"] == \
        "gpt-4o-2024-08-06"


def test_vertex_priority_traffic_is_priced_as_priority() -> None:
    meter = VERTEX.meter(VERTEX.classify("POST", "/v1/projects/p/locations/global/publishers/"
                                         "google/models/gemini-2.5-flash:generateContent"),
                         200, "application/json")
    meter.feed(json.dumps({"modelVersion": "gemini-2.5-flash", "usageMetadata": {
        "promptTokenCount": 1000, "candidatesTokenCount": 100,
        "trafficType": "ON_DEMAND_PRIORITY"}}).encode())
    reading = meter.finish()
    assert reading.service_tier == "priority"
    pricer = Pricer(BUNDLED, "bundled")
    cost = pricer.cost({"provider": "vertex", "format": "vertex", "model": "gemini-2.5-flash",
                        "response_model": reading.response_model,
                        "service_tier": reading.service_tier, **reading.usage.as_dict()})
    # 1000 x 0.54 in, 100 x 4.50 out USD per million: gemini-2.5-flash's priority prices
    assert (cost["input_cost"], cost["output_cost"]) == ("0.00054", "0.00045")
