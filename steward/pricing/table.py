"""Price tables in LiteLLM's model_prices_and_context_window format, reduced to what Steward
uses: each wire format's entries, their per-token prices and their maximum tokens."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from steward import providers
from steward.errors import StewardError

BUNDLED = Path(__file__).parent / "data" / "prices.json"
PRICE_FIELD = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost"
    r"|cache_creation_input_token_cost|cache_creation_input_token_cost_above_1hr"
    r"|output_cost_per_reasoning_token)(_above_\d+k_tokens)?(_priority|_flex)?$")
WELL_KNOWN = ("gpt-4o", "claude-sonnet-4-5", "gemini/gemini-2.5-pro")


class PriceTableError(StewardError):
    pass


def reduce(raw: Any, source: str, fetched: str | None = None) -> dict[str, Any]:
    """Validate a LiteLLM-format table and keep what Steward prices with."""
    if not isinstance(raw, dict):
        raise PriceTableError("not a price table: expected a JSON object of models")
    models: dict[str, dict[str, Any]] = {}
    owners = {litellm: fmt.name for fmt in providers.FORMATS.values()
              for litellm in fmt.price_providers}  # LiteLLM's provider -> our format
    for name, entry in raw.items():
        if not isinstance(entry, dict) or entry.get("litellm_provider") not in owners:
            continue
        prices: dict[str, Any] = {"provider": owners[entry["litellm_provider"]],
                                  "mode": entry.get("mode")}
        for key, value in entry.items():
            if not PRICE_FIELD.match(key):
                continue
            try:
                number = Decimal(str(value))
            except InvalidOperation:
                raise PriceTableError(f"{name}.{key}: {value!r} is not a number") from None
            if isinstance(value, bool) or not number.is_finite() or number < 0:
                raise PriceTableError(f"{name}.{key}: {value!r} is not a non-negative number")
            prices[key] = str(number)
        for key in ("max_input_tokens", "max_output_tokens"):  # budgets bound a request by them
            value = entry.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                prices[key] = value
        if "input_cost_per_token" in prices:
            models[name] = prices
    missing = [m for m in WELL_KNOWN if m not in models]
    if missing:
        raise PriceTableError(f"implausible price table: well-known models missing "
                              f"({', '.join(missing)})")
    body = json.dumps(models, sort_keys=True)
    return {"source": source, "date": fetched or date.today().isoformat(),
            "version": hashlib.sha256(body.encode()).hexdigest()[:12], "models": models}


def load(path: Path) -> dict[str, Any]:
    table = json.loads(path.read_text())
    if not isinstance(table, dict) or not isinstance(table.get("models"), dict):
        raise PriceTableError(f"{path}: not a Steward price table")
    return table
