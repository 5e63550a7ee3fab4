"""`steward` commands. Each one resolves the home, calls into `steward`, and prints.

Failures print one line and exit non-zero; a traceback is a bug.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from steward.cli.admin import admin_app
from steward.cli.budgets import budgets_app, limits_app
from steward.cli.dashboard import dashboard_app
from steward.cli.database import database_app
from steward.cli.options import HomeOption, JsonOption, out
from steward.cli.telemetry import telemetry_app

import steward
from steward import db, providers
from steward.bodies.bucket import CREDENTIALS, bucket_settings, probe, store_credentials
from steward.bodies.stores import LocalStore, open_store
from steward.bodies.writer import disk_status, read_document
from steward.config import effective_dict, load_config, parse_duration, set_value, with_server
from steward.daemon.logs import configure as configure_logging
from steward.errors import StewardError
from steward.home import Home, init_home, require_home, resolve_home
from steward.pricing import pricer as pricing
from steward.providers import WireFormat
from steward.records.flush import flush
from steward.records.formats import UPLOAD_TOKEN, majordomo_ingest_url
from steward.records.report import Group, check_grouping, parse_since, summarize
from steward.records.spool import read_records
from steward.records.upload import backlog
from steward.secrets import gateway_keys, master_key, provider_keys
from steward.secrets.crypto import Vault

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
upload_app = typer.Typer(no_args_is_help=True, help="Where metadata records are uploaded.")
spool_app = typer.Typer(no_args_is_help=True, help="The local metadata spool.")
app.add_typer(upload_app, name="upload")
app.add_typer(spool_app, name="spool")
pricing_app = typer.Typer(no_args_is_help=True, help="Prices used to compute cost.")
app.add_typer(pricing_app, name="pricing")
bucket_app = typer.Typer(no_args_is_help=True, help="Where request and response bodies go.")
app.add_typer(bucket_app, name="bucket")
bodies_app = typer.Typer(no_args_is_help=True, help="Stored request and response bodies.")
app.add_typer(bodies_app, name="bodies")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(budgets_app, name="budgets")
app.add_typer(limits_app, name="limits")
app.add_typer(database_app, name="db")
app.add_typer(dashboard_app, name="dashboard")
app.add_typer(admin_app, name="admin")


class KeyStore(enum.StrEnum):
    auto = "auto"
    keyring = "keyring"
    file = "file"



def _home(home: Path | None) -> Path:
    return require_home(resolve_home(home))


def _db(home: Path) -> contextlib.closing[db.Connection]:
    return contextlib.closing(db.open_home(home))


def _vault(home: Path, conn: db.Connection) -> Vault:
    vault, _ = master_key.open_vault(home, conn)
    return vault


def _print_version(value: bool) -> None:
    if value:
        print(f"steward {steward.__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print Steward's version and exit.")] = False) -> None:
    """Steward: a self-hosted gateway for OpenAI, Anthropic and Gemini."""


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
        for warning in result.warnings:
            out.print(f"WARNING: {warning}", highlight=False)
        return
    out.print(f"Steward home: [bold]{target}[/]")
    for name in result.created:
        out.print(f"  created  {name}")
    for name in result.existing:
        out.print(f"  exists   {name} (kept)")
    for warning in result.warnings:
        out.print(f"  WARNING: {warning}", highlight=False)
    if note is not None:
        out.print(f"  master key: {note}", highlight=False)
    else:
        out.print(f"  master key: {master.store} ({master.detail}), kept", highlight=False)
    if result.first_time:
        with _db(target) as conn:
            first = _first_key(conn)
        if first is None:
            out.print("The shared database already has gateway keys (`steward keys list`).")
            return
        key, plaintext = first
        out.print(f"\nGateway key [bold]{key.name}[/] ({key.id}) — shown once, store it now:")
        print(plaintext)
        out.print("Send it as the X-Majordomo-Key header. Start the gateway with `steward run`.")


def _first_key(conn: db.Connection) -> tuple[gateway_keys.GatewayKey, str] | None:
    """A new home's first key; None when the database is shared and already has keys (another
    node's init, even one running at this moment, made them)."""
    if gateway_keys.list_keys(conn):
        return None
    try:
        return gateway_keys.add_key(conn, "default")
    except StewardError:
        if gateway_keys.list_keys(conn):
            return None
        raise


@app.command()
def run(home: HomeOption = None,
        host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
        port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
        workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None) -> None:
    """Start the gateway (foreground; Ctrl-C or SIGTERM stops it)."""
    from steward.daemon.server import serve

    target = _home(home)
    config = with_server(load_config(target), host=host, port=port, workers=workers)
    # Kept as the environment overrides they are, so every worker and every reload loads the
    # same [server] as this start did.
    for name, given in (("host", host), ("port", port), ("workers", workers)):
        if given is not None:
            os.environ[f"STEWARD_SERVER__{name.upper()}"] = str(given)
    with _db(target) as conn:
        _vault(target, conn)  # fail now, in one line, if the master key is missing or wrong
    configure_logging(config.server.log_format, access=config.server.access_log)
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
    out.print(f"{key} = {stored!r}  ({Home(target).config})", highlight=False)


def _parse_tags(tags: list[str]) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for tag in tags:
        name, sep, value = tag.partition("=")
        if not sep or not name.strip():
            raise StewardError(f"--tag {tag!r}: expected NAME=VALUE")
        parsed[name.strip().lower()] = value.strip()
    return parsed


def _key_dict(key: gateway_keys.GatewayKey) -> dict[str, Any]:
    return {"id": key.id, "uuid": key.uuid, "majordomo_key_id": key.majordomo_key_id,
            "name": key.name, "prefix": key.prefix, "tags": key.tags,
            "created_at": key.created_at, "expires_at": key.expires_at,
            "last_used_at": key.last_used_at, "status": key.status(),
            "scopes": sorted(key.scopes)}


@keys_app.command("add")
def keys_add(name: Annotated[str, typer.Argument(help="A name for the key's owner")],
             tag: Annotated[list[str] | None, typer.Option(
                 help="NAME=VALUE added to every record of this key (repeatable).")] = None,
             expires_in: Annotated[str | None, typer.Option(
                 help="Lifetime such as 30d or 12h; default never.")] = None,
             allow: Annotated[list[str] | None, typer.Option(
                 help="Scopes beyond inference, comma-separated or repeated: "
                      f"{', '.join(gateway_keys.SCOPES)}.")] = None,
             majordomo_key_id: Annotated[str | None, typer.Option(
                 help="The UUID of the Majordomo API key this key stands for; the majordomo "
                      "upload format sends it as majordomo_api_key_id.")] = None,
             home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Create a gateway key and print it once. It reaches inference endpoints only, unless
    --allow grants more of the provider account."""
    target = _home(home)
    lifetime = None
    if expires_in is not None:
        try:
            lifetime = parse_duration(expires_in)
        except ValueError as exc:
            raise StewardError(f"--expires-in: {exc}") from None
    with _db(target) as conn:
        key, plaintext = gateway_keys.add_key(conn, name, _parse_tags(tag or []), lifetime,
                                              allow or [], majordomo_key_id)
    if as_json:
        print(json.dumps({**_key_dict(key), "key": plaintext}))
        return
    out.print(f"Created gateway key [bold]{key.name}[/] ({key.id}, UUID {key.uuid}). "
              "It is shown once:")
    print(plaintext)


@keys_app.command("list")
def keys_list(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List gateway keys (never the keys themselves)."""
    with _db(_home(home)) as conn:
        keys = gateway_keys.list_keys(conn)
    if as_json:
        print(json.dumps([_key_dict(k) for k in keys], indent=2))
        return
    table = Table("id", "uuid", "name", "prefix", "tags", "scopes", "created", "expires",
                  "last used",
                  "status")
    for k in keys:
        status = k.status()
        color = {"active": "green", "revoked": "red", "expired": "yellow"}[status]
        table.add_row(k.id, k.uuid, k.name, k.prefix + "…",
                      ",".join(f"{a}={b}" for a, b in k.tags.items()),
                      ",".join(["inference", *sorted(k.scopes)]),
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
    reason = None
    with _db(target) as conn:
        keys = len(provider_keys.list_keys(conn))
        try:  # the key must match the database's check value, then open every sealed row
            vault, master = master_key.open_vault(target, conn)
            opened = provider_keys.open_all(conn, vault)
        except StewardError as exc:
            found = master_key.find(target)
            if found is None:  # no key anywhere: nothing to report on
                raise
            master, opened, reason = found, 0, str(exc)
    status = {"store": master.store, "detail": master.detail,
              "decrypts_database": reason is None, "reason": reason, "provider_keys": keys,
              "secrets_opened": opened}
    if as_json:
        print(json.dumps(status))
    else:
        out.print(f"master key: {master.store} ({master.detail})", highlight=False)
        out.print("decrypts this home's database: " + (
            f"yes ({opened} stored secret(s) opened)" if reason is None else "NO"),
                  highlight=False)
    if reason is not None:
        if as_json:
            raise typer.Exit(1)
        raise StewardError(reason)


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


def _scope(conn: db.Connection, for_key: str | None) -> str:
    return gateway_keys.find_key(conn, for_key).id if for_key else provider_keys.DEFAULT_SCOPE


def _check_provider(home: Path, provider: str) -> WireFormat:
    configured = load_config(home).providers
    if provider not in configured and provider in providers.BUILT_IN:
        raise StewardError(f"{provider} is not configured yet: set its endpoint first with "
                           f"`steward config set providers.{provider}.base_url URL`")
    if provider not in configured:
        raise StewardError(f"unknown provider {provider!r}; configured: "
                           f"{', '.join(sorted(configured))}")
    fmt = providers.find(configured[provider].format)
    assert fmt is not None  # the configuration was validated
    return fmt


def _signing_credential(fmt: WireFormat, provider: str, from_file: Path | None,
                        from_stdin: bool) -> tuple[str, str]:
    """A cloud credential (AWS keys, a service-account key file…) from a file, stdin or prompts: the
    sealed value and what may be shown of it."""
    if from_file is not None:
        try:
            text = from_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise StewardError(f"cannot read {from_file}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    elif from_stdin or not sys.stdin.isatty():
        text = sys.stdin.read()
    else:
        text = "\n".join(typer.prompt(f"{provider} {label}", hide_input=hidden,
                                      default="" if optional else None, show_default=False)
                         for label, hidden, optional in fmt.credential_prompts)
    try:
        return fmt.credential_from_text(text)
    except ValueError as exc:
        raise StewardError(f"{provider} credentials not stored: {exc}") from None


@providers_app.command("set")
def providers_set(provider: ProviderArg, for_key: ForOption = None,
                  api_key_stdin: Annotated[bool, typer.Option(
                      "--api-key-stdin", help="Read the key from standard input.")] = False,
                  from_file: Annotated[Path | None, typer.Option(
                      "--from-file", help="Cloud providers: read the credentials from this "
                      "file (Bedrock: JSON with access_key_id, secret_access_key and "
                      "optionally session_token; Vertex: the service-account key JSON).")] = None,
                  home: HomeOption = None) -> None:
    """Store a provider API key (read from stdin or a hidden prompt, never an argument).

    Bedrock takes AWS access keys: JSON on stdin or in --from-file, or prompted. Vertex takes
    a service-account key file: --from-file, or the JSON on stdin."""
    target = _home(home)
    fmt = _check_provider(target, provider)
    if fmt.caller_auth_headers:
        value, shown = _signing_credential(fmt, provider, from_file, api_key_stdin)
        with _db(target) as conn:
            info = provider_keys.set_key(conn, _vault(target, conn), provider,
                                         _scope(conn, for_key), value, shown=shown)
        scope = "default" if info.scope == provider_keys.DEFAULT_SCOPE else f"for {info.scope}"
        out.print(f"Stored the {provider} credentials …{info.last4} ({scope}), encrypted.",
                  highlight=False)
        return
    if from_file is not None:
        raise StewardError(f"--from-file is for cloud credentials; {provider} takes an API "
                           "key on stdin or at the prompt")
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
    """Stored provider keys: provider, scope, last four characters, dates; and the clouds
    that use their SDK's default credential chain."""
    target = _home(home)
    with _db(target) as conn:
        keys = provider_keys.list_keys(conn)
    rows: list[dict[str, Any]] = [
        {"provider": k.provider, "scope": "default" if k.scope == "*" else k.scope,
         "last4": k.last4, "created_at": k.created_at, "last_used_at": k.last_used_at}
        for k in keys]
    for name, provider in load_config(target).providers.items():
        fmt = providers.find(provider.format)
        if provider.credentials == "default" and fmt is not None and fmt.caller_auth_headers:
            rows.append({"provider": name, "scope": "default", "last4": None,
                         "created_at": None, "last_used_at": None, "source": "default chain"})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("provider", "scope", "key", "created", "last used")
    for row in rows:
        shown = "(default chain)" if row["last4"] is None else "…" + row["last4"]
        table.add_row(row["provider"], row["scope"], shown,
                      _when(row["created_at"]), _when(row["last_used_at"]))
    out.print(table)


@providers_app.command("remove")
def providers_remove(provider: ProviderArg, for_key: ForOption = None,
                     home: HomeOption = None) -> None:
    """Delete a stored provider key."""
    with _db(_home(home)) as conn:
        provider_keys.remove_key(conn, provider, _scope(conn, for_key))
    out.print(f"Removed the stored {provider} key.")


@upload_app.command("set")
def upload_set(url: Annotated[str, typer.Argument(help="The collector's URL")],
               token_stdin: Annotated[bool, typer.Option(
                   "--token-stdin", help="Read a bearer token from standard input.")] = False,
               format: Annotated[str | None, typer.Option(
                   help="ndjson (default) or majordomo.")] = None,
               home: HomeOption = None) -> None:
    """Upload metadata records to URL (the token is stored encrypted).

    With the majordomo format, URL is the control plane's base URL (its ingest path is added)."""
    target = _home(home)
    if (format or load_config(target).metadata.format) == "majordomo":
        url = majordomo_ingest_url(url)
    set_value(target, "metadata.upload_url", url)
    if format is not None:
        set_value(target, "metadata.format", format)
    if token_stdin:
        token = sys.stdin.readline().strip()
        if not token:
            raise StewardError("--token-stdin: no token on standard input")
        with _db(target) as conn:
            provider_keys.set_secret(conn, _vault(target, conn), UPLOAD_TOKEN, "upload-token",
                                     token)
    out.print(f"Metadata will be uploaded to {url}" + (" with a bearer token" if token_stdin
                                                        else "") +
              ". Restart the gateway (or send SIGHUP) to apply.", highlight=False)


@spool_app.command("status")
def spool_status(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Records waiting for upload, the oldest one's age, the last upload, rejected batches."""
    target = _home(home)
    config = load_config(target)
    status = {"upload_url": effective_dict(config)["metadata"]["upload_url"] or None,
              **backlog(Home(target))}
    if as_json:
        print(json.dumps(status, indent=2))
        return
    table = Table("", "", show_header=False, box=None)
    table.add_row("upload to", status["upload_url"] or "nowhere (records stay local)")
    table.add_row("uploader", f"pid {status['uploader_pid']}" if status["uploader_pid"]
                  else "none (no running gateway holds "
                  f"{Home(target).uploader_lock.relative_to(target)})")
    table.add_row("pending records", str(status["pending_records"]))
    table.add_row("oldest pending", status["oldest_pending"] or "-")
    table.add_row("last success", _when(status["last_success_at"]))
    table.add_row("last error", status["last_error"] or "-")
    rejected = status["rejected_batches"]
    table.add_row("rejected batches", f"[red]{rejected}[/] in {status['rejected_dir']}"
                  if rejected else "0")
    out.print(table)


@spool_app.command("flush")
def spool_flush(home: HomeOption = None,
                timeout: Annotated[float, typer.Option(help="Seconds to wait.")] = 60.0) -> None:
    """Upload every pending record now and wait until done."""
    flush(load_config(_home(home)), timeout)
    out.print("All metadata records are uploaded.")


@app.command()
def usage(since: Annotated[str, typer.Option(help="24h, 7d, or a date")] = "24h",
          by: Annotated[str, typer.Option(help="model, provider, key or tag:NAME")] = "model",
          watch: Annotated[bool, typer.Option(help="Refresh every 2 seconds.")] = False,
          home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Requests, tokens, cost and latency per group, from the local spool."""
    target = _home(home)
    start = parse_since(since)
    check_grouping(by)  # before any record is read: an empty spool must not hide a typo
    with _db(target) as conn:
        names = {k.id: k.name for k in gateway_keys.list_keys(conn)}

    def render() -> tuple[Table, list[Group], Group]:
        groups, total = summarize(read_records(Home(target).spool), by, start, names)
        table = Table(by, "requests", "input", "output", "cache read", "cache write",
                      "cost (USD)", "p50 ms", "p95 ms", title=f"Usage since {since}")
        for g in [*groups, total]:
            p50, p95 = g.percentile(50), g.percentile(95)
            cost = f"{g.cost:.6f}" + (f" (+{g.unpriced} unpriced)" if g.unpriced else "")
            style = "bold" if g is total else None
            table.add_row(g.name, f"{g.requests:,}", f"{g.input_tokens:,}",
                          f"{g.output_tokens:,}", f"{g.cache_read_tokens:,}",
                          f"{g.cache_write_tokens:,}", cost,
                          "-" if p50 is None else f"{p50:.1f}",
                          "-" if p95 is None else f"{p95:.1f}", style=style,
                          end_section=g is groups[-1] if groups else False)
        return table, groups, total

    if as_json:
        _, groups, total = render()
        print(json.dumps({"since": start, "by": by, "groups": [g.as_dict() for g in groups],
                          "total": total.as_dict()}, indent=2))
        return
    if not watch:
        out.print(render()[0])
        return
    from rich.live import Live

    with Live(render()[0], console=out, refresh_per_second=1) as live:
        while True:
            time.sleep(2)
            live.update(render()[0])


@pricing_app.command("update")
def pricing_update(url: Annotated[str | None, typer.Option(help="Fetch from this URL "
                                                           "(default: pricing.url).")] = None,
                   file: Annotated[Path | None, typer.Option(help="Read a local file.")] = None,
                   home: HomeOption = None) -> None:
    """Replace the active price table (LiteLLM's format); a bad one keeps the last good."""
    target = _home(home)
    if url and file:
        raise StewardError("give --url or --file, not both")
    raw = None
    if file is not None:
        try:
            raw, source = file.read_bytes(), str(file)
        except OSError as exc:
            raise StewardError(f"--file {file}: {exc.strerror}") from None
    else:
        source = url or load_config(target).pricing.url
    try:
        table = pricing.update_table(target, source, raw)
    except StewardError as exc:
        raise StewardError(f"price table not updated: {exc}; keeping the current table"
                           ) from None
    out.print(f"Price table updated: {len(table['models'])} models, version "
              f"{table['version']} ({source}). Running gateways use it within seconds.",
              highlight=False)


PerMillion = Annotated[float | None, typer.Option(help="US dollars per million tokens")]


@pricing_app.command("set")
def pricing_set(model: Annotated[str, typer.Argument(help="Model name as the provider reports it")],
                input: Annotated[float, typer.Option(help="USD per million input tokens")],
                output: Annotated[float, typer.Option(help="USD per million output tokens")],
                cache_read: PerMillion = None, cache_write: PerMillion = None,
                cache_write_1h: PerMillion = None, home: HomeOption = None) -> None:
    """Override a model's prices (wins over the table)."""
    from decimal import Decimal

    def dec(value: float | None) -> Decimal | None:
        return None if value is None else Decimal(str(value))

    with _db(_home(home)) as conn:
        pricing.set_override(conn, model, {
            "input": dec(input), "output": dec(output), "cache_read": dec(cache_read),
            "cache_write": dec(cache_write), "cache_write_1h": dec(cache_write_1h)})
    out.print(f"Prices for {model} set (USD per million tokens): input {input}, "
              f"output {output}.", highlight=False)


@pricing_app.command("unset")
def pricing_unset(model: Annotated[str, typer.Argument(help="Model name")],
                  home: HomeOption = None) -> None:
    """Remove a price override."""
    with _db(_home(home)) as conn:
        pricing.unset_override(conn, model)
    out.print(f"Override for {model} removed.")


@pricing_app.command("show")
def pricing_show(model: Annotated[str | None, typer.Argument(help="One model")] = None,
                 provider: Annotated[str | None, typer.Option(help="A wire format's name, e.g. "
                                                              "openai")] = None,
                 home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Prices per million tokens, and where each came from (bundled, updated, override)."""
    from decimal import Decimal

    target = _home(home)
    with _db(target) as conn:
        pricer = pricing.load_pricer(target, conn)
    if model is not None:
        found = pricer.match(model, provider)
        if found is None:
            raise StewardError(f"no price for {model!r}: set one with `steward pricing set`")
        rows = [found]
    else:
        names = sorted(set(pricer.models) | set(pricer.overrides))
        rows = [m for n in names if (m := pricer.match(n, None)) is not None
                and (provider is None or m.prices.get("provider") == provider
                     or m.source == "override")]
    fields = list(pricing.OVERRIDE_FIELDS.items())

    def per_million(match: pricing.Match, key: str) -> str | None:
        value = match.prices.get(key)
        return None if value is None else format((Decimal(value) * pricing.MILLION).normalize(),
                                                 "f")

    data = [{"model": m.name, "source": m.source,
             **{name: per_million(m, key) for name, key in fields}} for m in rows]
    if as_json:
        print(json.dumps({"table": pricer.table["source"], "version": pricer.version,
                          "models": data}, indent=2))
        return
    table = Table("model", *[n.replace("_", " ") for n, _ in fields], "source",
                  title=f"USD per million tokens — {pricer.table['source']}, {pricer.version}")
    for row in data:
        table.add_row(row["model"], *[row[n] or "-" for n, _ in fields], row["source"])
    out.print(table)


@bucket_app.command("set")
def bucket_set(url: Annotated[str, typer.Argument(help="file:///path, s3://bucket[/prefix] or "
                                                  "gs://bucket[/prefix]")],
               region: Annotated[str | None, typer.Option(help="S3 region")] = None,
               endpoint_url: Annotated[str | None, typer.Option(
                   help="S3-compatible endpoint or GCS emulator")] = None,
               sse: Annotated[str | None, typer.Option(help="AES256 or aws:kms")] = None,
               kms_key_id: Annotated[str | None, typer.Option(help="KMS key for aws:kms")] = None,
               credentials_file: Annotated[str | None, typer.Option(
                   help="GCS service-account JSON")] = None,
               access_key_id: Annotated[str | None, typer.Option(
                   help="S3 access key id; the secret is asked for with a hidden prompt, or "
                   "read from standard input")] = None,
               secret_stdin: Annotated[bool, typer.Option(
                   "--secret-stdin", help="Read the secret access key from standard "
                   "input.")] = False,
               home: HomeOption = None) -> None:
    """Send bodies to URL (S3 access keys are stored encrypted)."""
    target = _home(home)
    settings = {"bodies.url": url, "bodies.region": region, "bodies.endpoint_url": endpoint_url,
                "bodies.sse": sse, "bodies.kms_key_id": kms_key_id,
                "bodies.credentials_file": credentials_file}
    secret = ""
    if access_key_id is not None:  # asked first: an abandoned prompt changes nothing
        if secret_stdin or not sys.stdin.isatty():
            secret = sys.stdin.readline().strip()
        else:  # a person at a terminal: never echo the secret or leave it in shell history
            secret = typer.prompt("S3 secret access key", hide_input=True).strip()
        if not secret:
            raise StewardError("--access-key-id: no secret access key given (type it at the "
                               "prompt, or pipe it with --secret-stdin)")
    for key, value in settings.items():
        if value is not None:
            set_value(target, key, value)
    if access_key_id is not None:
        with _db(target) as conn:
            store_credentials(conn, _vault(target, conn), access_key_id, secret)
    out.print(f"Bodies will be stored in {url}. Check it with `steward bucket test`; running "
              "gateways use it after a restart.", highlight=False)


@bucket_app.command("show")
def bucket_show(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """The body destination and its settings (credentials masked)."""
    target = _home(home)
    config = load_config(target)
    shown = {**effective_dict(config)["bodies"], "url": config.bodies_url()}
    with _db(target) as conn:
        shown["access_keys"] = "stored (encrypted)" if provider_keys.get_secret(
            conn, _vault(target, conn), CREDENTIALS) else "default credential chain"
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    for key, value in shown.items():
        out.print(f"{key} = {value!r}", highlight=False)


def _open_bucket(target: Path) -> Any:
    config = load_config(target)
    with _db(target) as conn:
        settings = bucket_settings(config, conn, _vault(target, conn))
    return open_store(settings)


@bucket_app.command("test")
def bucket_test(home: HomeOption = None) -> None:
    """Write, read back and delete a probe object; say which step failed and why."""
    result = probe(_open_bucket(_home(home)))
    if not result.ok:
        raise StewardError(f"bucket test failed at {result.step}: {result.detail}")
    out.print(f"bucket OK: {result.detail}", highlight=False)


@bucket_app.command("status")
def bucket_status(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Bodies waiting on local disk for the bucket, and the gateway's last upload error."""
    status = disk_status(load_config(_home(home)))
    if as_json:
        print(json.dumps(status, indent=2))
        return
    for key, value in status.items():
        out.print(f"{key}: {value if value is not None else '-'}", highlight=False)


@bodies_app.command("get")
def bodies_get(request_id: Annotated[str, typer.Argument(help="The request's id "
                                                         "(X-Majordomo-Request-Id).")],
               home: HomeOption = None,
               raw: Annotated[bool, typer.Option(
                   "--raw", help="The stored document as it is, not pretty-printed.")] = False,
               ) -> None:
    """Print one request's stored request and response (credentials already redacted)."""
    target = _home(home)
    document = read_document(target, _open_bucket(target), request_id)
    if raw:
        sys.stdout.buffer.write(document + b"\n")
        return
    data = json.loads(document)
    for side in ("request", "response"):
        part = data.get(side) or {}
        if part.get("body_encoding") == "json" and isinstance(part.get("body"), str):
            part["body"] = json.loads(part["body"])
    print(json.dumps(data, indent=2, ensure_ascii=False))


@bodies_app.command("du")
def bodies_du(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Space used by the local bodies store, per day and gateway key."""
    target = _home(home)
    store = _open_bucket(target)
    if not isinstance(store, LocalStore):
        raise StewardError(f"bodies du reads the local store; bodies go to {store.url('')} "
                           "(use the bucket's own storage metrics)")
    rows = store.usage()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("day", "key", "bodies", "bytes", "files", "on disk")
    for row in rows:
        table.add_row(row["day"], row["key"], str(row["bodies"]), _size(row["bytes"]),
                      str(row["files"]), _size(row["disk_bytes"]))
    table.add_row("total", "", str(sum(r["bodies"] for r in rows)),
                  _size(sum(r["bytes"] for r in rows)), str(sum(r["files"] for r in rows)),
                  _size(sum(r["disk_bytes"] for r in rows)))
    out.print(table)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@bucket_app.command("lifecycle")
def bucket_lifecycle(home: HomeOption = None,
                     apply: Annotated[bool, typer.Option(
                         "--apply", help="Set the rule on the bucket (other rules are kept)."
                     )] = False,
                     days: Annotated[int | None, typer.Option(
                         min=1, help="Expire bodies after this many days (default: "
                         "bodies.retention, rounded up).")] = None) -> None:
    """Print (or, with --apply, set) the S3/GCS lifecycle rule matching bodies.retention."""
    target = _home(home)
    store = _open_bucket(target)
    if isinstance(store, LocalStore):
        raise StewardError("the local bodies directory needs no lifecycle rule: Steward "
                           "deletes old days itself (bodies.retention)")
    if days is None:
        retention = load_config(target).bodies.retention
        if not retention:
            raise StewardError("bodies.retention is off: give --days N for the rule")
        days = max(1, math.ceil(retention / 86400))
    rule = store.lifecycle_rule(days)
    if not apply:
        print(json.dumps(rule, indent=2))
        return
    try:
        store.apply_lifecycle(days)
    except Exception as exc:  # each SDK raises its own kinds
        raise StewardError(f"could not set the lifecycle rule on {store.url('')}: "
                           f"{exc.__class__.__name__}: {exc}"[:400]) from None
    out.print(f"lifecycle rule set on {store.url('')}: bodies expire after {days} days",
              highlight=False)


@app.command()
def doctor(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Check config, home, master key, database, bucket, upload endpoint, ports, providers."""
    from steward.daemon.doctor import run_checks

    target = resolve_home(home)
    checks = run_checks(target)
    failed = [c for c in checks if not c.ok]
    if as_json:
        print(json.dumps({"ok": not failed, "checks": [c.as_dict() for c in checks]}, indent=2))
    else:
        out.print(f"Steward doctor — {target}", highlight=False)
        for check in checks:
            mark = "[green]✓[/]" if check.ok else "[red]✗[/]"
            out.print(f" {mark} {check.name}: {check.detail}", highlight=False)
            if not check.ok:
                out.print(f"     fix: {check.fix}", highlight=False)
    if failed:
        raise typer.Exit(1)


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
