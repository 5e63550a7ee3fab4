"""Wire formats, one module each, behind one interface (`base.WireFormat`).

A module in this package that defines `FORMAT` (a WireFormat instance) is a built-in format.
A format shipped in another package is registered by its distribution's entry point in the
group `steward.formats` (`toy = mypackage.toy:FORMAT`), loaded when a configuration names a
format Steward does not have built in; `register()` does the same in-process. Everything else
in Steward asks this registry, never a format by name.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points

from steward.providers.base import Meter, Route, WireFormat

ENTRY_POINT_GROUP = "steward.formats"

FORMATS: dict[str, WireFormat] = {}
# Headers and query parameters that carry a provider credential in any format, kept up to date
# by register(): they are redacted from stored bodies and searched for a gateway key.
CREDENTIAL_HEADERS: set[bytes] = set()
CREDENTIAL_PARAMS: set[str] = set()
_DETECTION: list[WireFormat] = []  # by detection_rank
_plugins_loaded = False


def register(fmt: WireFormat) -> None:
    """Make a format known: routable, configurable, metered and redacted like the built-ins."""
    if not isinstance(fmt, WireFormat):
        raise TypeError(f"{fmt!r} is not a WireFormat")
    FORMATS[fmt.name] = fmt
    CREDENTIAL_HEADERS.update(fmt.credential_headers)
    if fmt.credential_param:
        CREDENTIAL_PARAMS.add(fmt.credential_param)
    _DETECTION[:] = sorted(FORMATS.values(), key=lambda f: (f.detection_rank, f.name))


def load_plugins() -> None:
    """Register the formats other installed packages declare (once per process)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        register(point.load())


BUILT_IN: tuple[str, ...] = ()  # set below: the formats in this package, by name


def find(name: str) -> WireFormat | None:
    """The format of this name, looking in installed plugins when it is not built in."""
    if name not in FORMATS:
        load_plugins()
    return FORMATS.get(name)


def detection_order() -> list[WireFormat]:
    return list(_DETECTION)


def default_format() -> WireFormat:
    """See WireFormat.is_default."""
    return next(f for f in _DETECTION if f.is_default)


def paths_help() -> str:
    return "; ".join(f.paths_help for f in _DETECTION)


def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        fmt = getattr(importlib.import_module(f"{__name__}.{module.name}"), "FORMAT", None)
        if isinstance(fmt, WireFormat):
            register(fmt)


_discover()
BUILT_IN = tuple(FORMATS)

__all__ = ["BUILT_IN", "CREDENTIAL_HEADERS", "CREDENTIAL_PARAMS", "FORMATS", "Meter", "Route",
           "WireFormat", "default_format", "detection_order", "find", "load_plugins", "paths_help",
           "register"]
