"""Wire-format plugins. Each module here (but `base`) defines `FORMAT`, a WireFormat instance."""

from __future__ import annotations

import importlib
import pkgutil

from steward.providers.base import Meter, Route, WireFormat


def _discover() -> dict[str, WireFormat]:
    found: dict[str, WireFormat] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        fmt = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FORMAT", None)
        if isinstance(fmt, WireFormat):
            found[fmt.name] = fmt
    return found


FORMATS: dict[str, WireFormat] = _discover()

__all__ = ["FORMATS", "Meter", "Route", "WireFormat"]
