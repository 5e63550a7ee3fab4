"""`steward telemetry`: where OpenTelemetry spans and metrics go, with sealed header values.

Header values often hold a collector's token, so they are asked for with a hidden prompt (or
read from standard input) and stored encrypted, like provider keys; `show` never prints them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from steward.cli.options import HomeOption, JsonOption, out

from steward import db
from steward.config import load_config, set_value
from steward.errors import StewardError
from steward.home import require_home, resolve_home
from steward.secrets import master_key

telemetry_app = typer.Typer(no_args_is_help=True, help="OpenTelemetry export of spans and "
                            "GenAI metrics over OTLP/HTTP.")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP header name (RFC 9110)
MASK = "********"


def _header(spec: str) -> tuple[str, str | None]:
    """NAME=VALUE, or NAME alone (the value is asked for, hidden)."""
    name, sep, value = spec.partition("=")
    name = name.strip()
    if not _TOKEN.fullmatch(name):
        raise StewardError(f"--header {name!r}: not an HTTP header name")
    if sep and any(c in value for c in "\r\n\0"):
        raise StewardError(f"--header {name}: the value holds a line break or NUL")
    return name, value.strip() if sep else None


@telemetry_app.command("set")
def telemetry_set(
        endpoint: Annotated[str | None, typer.Option(
            help="The collector's OTLP/HTTP base URL, e.g. http://collector:4318 (\"\" turns "
            "export off)")] = None,
        header: Annotated[list[str] | None, typer.Option(
            help="NAME (value asked for, hidden, or read from standard input) or NAME=VALUE; "
            "stored encrypted. NAME= removes one. Repeatable.")] = None,
        clear_headers: Annotated[bool, typer.Option(
            "--clear-headers", help="Remove every stored header first.")] = False,
        service_name: Annotated[str | None, typer.Option(help="service.name of the spans")] = None,
        sample_ratio: Annotated[float | None, typer.Option(
            help="Share of traces exported, 0 to 1 (metrics count every request)")] = None,
        home: HomeOption = None) -> None:
    """Export spans and GenAI metrics to an OpenTelemetry collector."""
    target = require_home(resolve_home(home))
    wanted = [_header(spec) for spec in header or []]
    values: dict[str, str] = {}
    for name, value in wanted:  # asked first: an abandoned prompt changes nothing
        if value is None:
            if sys.stdin.isatty():
                value = typer.prompt(f"value of the {name} header", hide_input=True).strip()
            else:
                value = sys.stdin.readline().strip()
            if not value:
                raise StewardError(f"--header {name}: no value given (type it at the prompt, "
                                   "pipe it on standard input, or write NAME=VALUE)")
        values[name] = value
    for key, given in (("otlp_endpoint", endpoint), ("service_name", service_name),
                       ("sample_ratio", None if sample_ratio is None else str(sample_ratio))):
        if given is not None:
            set_value(target, f"telemetry.{key}", given)
    if values or clear_headers:
        from steward.daemon.telemetry import sealed_headers, store_headers

        with contextlib.closing(db.open_home(target)) as conn:
            vault, _ = master_key.open_vault(target, conn)
            stored = {} if clear_headers else sealed_headers(conn, vault)
            for name, value in values.items():
                stored = {k: v for k, v in stored.items() if k.lower() != name.lower()}
                if value:
                    stored[name] = value
            store_headers(conn, vault, stored)
    settings = _effective(target)
    where = settings["traces_url"] or settings["metrics_url"]
    out.print(("OpenTelemetry export to " + where if where else "OpenTelemetry export is off") +
              (f" with headers {', '.join(settings['headers'])} (values encrypted)"
               if settings["headers"] else "") +
              ". Restart the gateway (or send SIGHUP) to apply.", highlight=False)


def _effective(target: Path) -> dict[str, object]:
    # Here, not at the top: the exporter's aiohttp and protobuf imports cost every other
    # `steward` command (and each daemon start) a quarter of a second or more.
    from steward.daemon.telemetry import resolve, sealed_headers

    config = load_config(target)
    with contextlib.closing(db.open_home(target)) as conn:
        vault, _ = master_key.open_vault(target, conn)
        sealed = sealed_headers(conn, vault)
    settings = resolve(config.telemetry, os.environ, sealed)
    if settings is None:
        return {"enabled": False, "traces_url": None, "metrics_url": None, "headers": {},
                "service_name": config.telemetry.service_name,
                "sample_ratio": config.telemetry.sample_ratio}
    sealed_names = {name.lower() for name in sealed}
    return {"enabled": True, "traces_url": settings.traces_url,
            "metrics_url": settings.metrics_url,
            "headers": {name: MASK + (" (encrypted)" if name.lower() in sealed_names else "")
                        for name, _ in settings.headers},
            "service_name": settings.service_name, "sample_ratio": settings.sample_ratio}


@telemetry_app.command("show")
def telemetry_show(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Where spans and metrics go ([telemetry] and OTEL_* variables); header values hidden."""
    shown = _effective(require_home(resolve_home(home)))
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    for key, value in shown.items():
        out.print(f"{key} = {value!r}", highlight=False)
