"""`steward` commands. Each one resolves the home, calls into `steward`, and prints.

Failures print one line and exit non-zero; a traceback is a bug.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from steward import db, gateway_keys
from steward.config import effective_dict, load_config, parse_duration, set_value, with_server
from steward.errors import StewardError
from steward.home import DB_FILE, init_home, require_home, resolve_home

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Steward: a self-hosted gateway for OpenAI, Anthropic and Gemini.")
config_app = typer.Typer(no_args_is_help=True, help="Show and change steward.toml.")
keys_app = typer.Typer(no_args_is_help=True, help="Gateway keys that callers send as "
                       "X-Majordomo-Key.")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")

out = Console()
HomeOption = Annotated[Path | None, typer.Option(
    "--home", help="Steward home (default: $STEWARD_HOME, $STATE_DIRECTORY, or the user data "
    "directory).", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _home(home: Path | None) -> Path:
    return require_home(resolve_home(home))


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@app.command()
def init(home: HomeOption = None,
         force: Annotated[bool, typer.Option(
             help="Reset steward.toml to the defaults (the old file is kept as .bak).")] = False,
         quiet_existing: Annotated[bool, typer.Option(
             "--quiet-if-exists", hidden=True, help="Say nothing when the home exists.")] = False,
         ) -> None:
    """Create a Steward home: config, database, directories, and a first gateway key."""
    target = resolve_home(home)
    result = init_home(target, force=force)
    if quiet_existing and not result.first_time and not force:
        return
    out.print(f"Steward home: [bold]{target}[/]")
    for name in result.created:
        out.print(f"  created  {name}")
    for name in result.existing:
        out.print(f"  exists   {name} (kept)")
    if result.first_time:
        conn = db.connect(target / DB_FILE)
        try:
            key, plaintext = gateway_keys.add_key(conn, "default")
        finally:
            conn.close()
        out.print(f"\nGateway key [bold]{key.name}[/] ({key.id}) — shown once, store it now:")
        print(plaintext)
        out.print("Send it as the X-Majordomo-Key header. Start the gateway with `steward run`.")


@app.command()
def run(home: HomeOption = None,
        host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
        port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
        workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None) -> None:
    """Start the gateway (foreground; Ctrl-C or SIGTERM stops it)."""
    from steward.server import serve

    target = _home(home)
    config = with_server(load_config(target), host=host, port=port, workers=workers)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s", stream=sys.stderr)
    out.print(f"Steward home: {target}", highlight=False)
    out.print(f"Listening on http://{config.server.host}:{config.server.port} "
              f"({config.server.workers} worker{'s' if config.server.workers > 1 else ''})",
              highlight=False)
    if not gateway_keys_exist(target):
        out.print("No active gateway key yet: create one with `steward keys add NAME`.")
    serve(config)


def gateway_keys_exist(home: Path) -> bool:
    conn = db.connect(home / DB_FILE)
    try:
        return any(k.status() == "active" for k in gateway_keys.list_keys(conn))
    finally:
        conn.close()


@config_app.command("show")
def config_show(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Print the effective configuration (file plus STEWARD_* environment), secrets masked."""
    config = load_config(_home(home))
    data = effective_dict(config)
    if as_json:
        print(json.dumps(data, indent=2))
        return
    import tomlkit

    out.print(f"# {config.path}", highlight=False)
    print(tomlkit.dumps(data), end="")


@config_app.command("set")
def config_set(key: Annotated[str, typer.Argument(help="Dotted key, e.g. server.port")],
               value: Annotated[str, typer.Argument(help="New value")],
               home: HomeOption = None) -> None:
    """Change one setting in steward.toml after validating it."""
    target = _home(home)
    stored = set_value(target, key, value)
    out.print(f"{key} = {stored!r}  ({target / 'steward.toml'})", highlight=False)


def _parse_tags(tags: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for tag in tags:
        name, sep, value = tag.partition("=")
        if not sep or not name.strip():
            raise StewardError(f"--tag {tag!r}: expected NAME=VALUE")
        parsed[name.strip().lower()] = value.strip()
    return parsed


def _key_dict(key: gateway_keys.GatewayKey) -> dict[str, Any]:
    return {"id": key.id, "name": key.name, "prefix": key.prefix, "tags": key.tags,
            "created_at": key.created_at, "expires_at": key.expires_at,
            "last_used_at": key.last_used_at, "status": key.status()}


@keys_app.command("add")
def keys_add(name: Annotated[str, typer.Argument(help="A name for the key's owner")],
             tag: Annotated[list[str] | None, typer.Option(
                 help="NAME=VALUE added to every record of this key (repeatable).")] = None,
             expires_in: Annotated[str | None, typer.Option(
                 help="Lifetime such as 30d or 12h; default never.")] = None,
             home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Create a gateway key and print it once."""
    target = _home(home)
    lifetime = None
    if expires_in is not None:
        try:
            lifetime = parse_duration(expires_in)
        except ValueError as exc:
            raise StewardError(f"--expires-in: {exc}") from None
    conn = db.connect(target / DB_FILE)
    try:
        key, plaintext = gateway_keys.add_key(conn, name, _parse_tags(tag or []), lifetime)
    finally:
        conn.close()
    if as_json:
        print(json.dumps({**_key_dict(key), "key": plaintext}))
        return
    out.print(f"Created gateway key [bold]{key.name}[/] ({key.id}). It is shown once:")
    print(plaintext)


@keys_app.command("list")
def keys_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List gateway keys (never the keys themselves)."""
    conn = db.connect(_home(home) / DB_FILE)
    try:
        keys = gateway_keys.list_keys(conn)
    finally:
        conn.close()
    if as_json:
        print(json.dumps([_key_dict(k) for k in keys], indent=2))
        return
    table = Table("id", "name", "prefix", "tags", "created", "expires", "last used", "status")
    for k in keys:
        status = k.status()
        color = {"active": "green", "revoked": "red", "expired": "yellow"}[status]
        table.add_row(k.id, k.name, k.prefix + "…", ",".join(f"{a}={b}" for a, b in k.tags.items()),
                      _when(k.created_at), _when(k.expires_at), _when(k.last_used_at),
                      f"[{color}]{status}[/]")
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or name")],
                home: HomeOption = None) -> None:
    """Revoke a gateway key; running gateways refuse it within seconds."""
    conn = db.connect(_home(home) / DB_FILE)
    try:
        revoked = gateway_keys.revoke_key(conn, key)
    finally:
        conn.close()
    out.print(f"Revoked {revoked.name} ({revoked.id}).")


def main() -> None:
    try:
        app()
    except StewardError as exc:
        print(f"steward: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug: still one line, with what to report
        print(f"steward: internal error: {exc.__class__.__name__}: {exc} "
              "(please report this with the command you ran)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
