"""`steward` commands. Each one resolves the home, calls into `steward`, and prints.

Failures print one line and exit non-zero; a traceback is a bug.
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from steward import db, gateway_keys, master_key, provider_keys
from steward.config import effective_dict, load_config, parse_duration, set_value, with_server
from steward.crypto import Vault
from steward.errors import StewardError
from steward.home import DB_FILE, init_home, require_home, resolve_home

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Steward: a self-hosted gateway for OpenAI, Anthropic and Gemini.")
config_app = typer.Typer(no_args_is_help=True, help="Show and change steward.toml.")
keys_app = typer.Typer(no_args_is_help=True, help="Gateway keys that callers send as "
                       "X-Majordomo-Key.")
secrets_app = typer.Typer(no_args_is_help=True, help="The master key that encrypts stored "
                          "secrets.")
providers_app = typer.Typer(no_args_is_help=True, help="Provider API keys stored encrypted and "
                            "injected into requests.")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.add_typer(secrets_app, name="secrets")
app.add_typer(providers_app, name="providers")


class KeyStore(enum.StrEnum):
    auto = "auto"
    keyring = "keyring"
    file = "file"

out = Console()
HomeOption = Annotated[Path | None, typer.Option(
    "--home", help="Steward home (default: $STEWARD_HOME, $STATE_DIRECTORY, or the user data "
    "directory).", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _home(home: Path | None) -> Path:
    return require_home(resolve_home(home))


def _db(home: Path) -> contextlib.closing[sqlite3.Connection]:
    return contextlib.closing(db.connect(home / DB_FILE))


def _vault(home: Path, conn: sqlite3.Connection) -> Vault:
    vault, _ = master_key.open_vault(home, conn)
    return vault


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


@app.command()
def init(home: HomeOption = None,
         force: Annotated[bool, typer.Option(
             help="Reset steward.toml to the defaults (the old file is kept as .bak).")] = False,
         key_store: Annotated[KeyStore, typer.Option(
             help="Where a new master key goes: the OS keyring if one works (auto), or a "
             "0600 file in the home.")] = KeyStore.auto,
         quiet_existing: Annotated[bool, typer.Option(
             "--quiet-if-exists", hidden=True, help="Say nothing when the home exists.")] = False,
         ) -> None:
    """Create a Steward home: config, database, master key, directories, a first gateway key."""
    target = resolve_home(home)
    result = init_home(target, force=force)
    with _db(target) as conn:
        master, note = master_key.ensure(target, conn, key_store.value)
    if quiet_existing and not result.first_time and not force and note is None:
        return
    out.print(f"Steward home: [bold]{target}[/]")
    for name in result.created:
        out.print(f"  created  {name}")
    for name in result.existing:
        out.print(f"  exists   {name} (kept)")
    if note is not None:
        out.print(f"  master key: {note}", highlight=False)
    else:
        out.print(f"  master key: {master.store} ({master.detail}), kept", highlight=False)
    if result.first_time:
        with _db(target) as conn:
            key, plaintext = gateway_keys.add_key(conn, "default")
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
    with _db(target) as conn:
        _vault(target, conn)  # fail now, in one line, if the master key is missing or wrong
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
    with _db(home) as conn:
        return any(k.status() == "active" for k in gateway_keys.list_keys(conn))


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
    with _db(target) as conn:
        key, plaintext = gateway_keys.add_key(conn, name, _parse_tags(tag or []), lifetime)
    if as_json:
        print(json.dumps({**_key_dict(key), "key": plaintext}))
        return
    out.print(f"Created gateway key [bold]{key.name}[/] ({key.id}). It is shown once:")
    print(plaintext)


@keys_app.command("list")
def keys_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List gateway keys (never the keys themselves)."""
    with _db(_home(home)) as conn:
        keys = gateway_keys.list_keys(conn)
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
    with _db(_home(home)) as conn:
        revoked = gateway_keys.revoke_key(conn, key)
    out.print(f"Revoked {revoked.name} ({revoked.id}).")


@secrets_app.command("status")
def secrets_status(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Which store holds the master key and whether it opens this home's secrets."""
    target = _home(home)
    with _db(target) as conn:
        vault, master = master_key.open_vault(target, conn)
        opened = len(provider_keys.load_all(conn, vault))
    status = {"store": master.store, "detail": master.detail, "decrypts_database": True,
              "provider_keys": opened}
    if as_json:
        print(json.dumps(status))
        return
    out.print(f"master key: {master.store} ({master.detail})", highlight=False)
    out.print(f"decrypts this home's database: yes ({opened} provider key(s) checked)")


@secrets_app.command("rotate-master")
def secrets_rotate(home: HomeOption = None) -> None:
    """Generate a new master key and re-encrypt every stored secret in one transaction."""
    target = _home(home)
    with _db(target) as conn:
        master, count = master_key.rotate(target, conn, provider_keys.reseal_all)
    out.print(f"Rotated the master key ({master.store}); re-encrypted {count} secret(s). "
              "Running gateways switch to it within seconds.")


ProviderArg = Annotated[str, typer.Argument(help="openai, anthropic, gemini, or a provider "
                                            "configured in steward.toml")]
ForOption = Annotated[str | None, typer.Option(
    "--for", help="A gateway key id or name: the key applies to that key only.")]


def _scope(conn: sqlite3.Connection, for_key: str | None) -> str:
    return gateway_keys.find_key(conn, for_key).id if for_key else provider_keys.DEFAULT_SCOPE


def _check_provider(home: Path, provider: str) -> None:
    providers = load_config(home).providers
    if provider not in providers:
        raise StewardError(f"unknown provider {provider!r}; configured: "
                           f"{', '.join(sorted(providers))}")


@providers_app.command("set")
def providers_set(provider: ProviderArg, for_key: ForOption = None,
                  api_key_stdin: Annotated[bool, typer.Option(
                      "--api-key-stdin", help="Read the key from standard input.")] = False,
                  home: HomeOption = None) -> None:
    """Store a provider API key (read from stdin or a hidden prompt, never an argument)."""
    target = _home(home)
    _check_provider(target, provider)
    if api_key_stdin or not sys.stdin.isatty():
        api_key = sys.stdin.readline().strip()
    else:
        api_key = typer.prompt(f"{provider} API key", hide_input=True).strip()
    with _db(target) as conn:
        vault = _vault(target, conn)
        info = provider_keys.set_key(conn, vault, provider, _scope(conn, for_key), api_key)
    scope = "default" if info.scope == provider_keys.DEFAULT_SCOPE else f"for {info.scope}"
    out.print(f"Stored the {provider} key …{info.last4} ({scope}), encrypted.", highlight=False)


@providers_app.command("list")
def providers_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Stored provider keys: provider, scope, last four characters, dates."""
    with _db(_home(home)) as conn:
        keys = provider_keys.list_keys(conn)
    rows = [{"provider": k.provider, "scope": "default" if k.scope == "*" else k.scope,
             "last4": k.last4, "created_at": k.created_at, "last_used_at": k.last_used_at}
            for k in keys]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("provider", "scope", "key", "created", "last used")
    for row in rows:
        table.add_row(row["provider"], row["scope"], "…" + row["last4"],
                      _when(row["created_at"]), _when(row["last_used_at"]))
    out.print(table)


@providers_app.command("remove")
def providers_remove(provider: ProviderArg, for_key: ForOption = None,
                     home: HomeOption = None) -> None:
    """Delete a stored provider key."""
    with _db(_home(home)) as conn:
        provider_keys.remove_key(conn, provider, _scope(conn, for_key))
    out.print(f"Removed the stored {provider} key.")


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
