"""`steward admin token`: the tokens the dashboard asks for off loopback."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Annotated

import typer
from rich.table import Table
from steward.cli.options import HomeOption, JsonOption, out

from steward import db
from steward.dashboard import tokens
from steward.home import require_home, resolve_home

admin_app = typer.Typer(no_args_is_help=True, help="Administration of the dashboard.")
token_app = typer.Typer(no_args_is_help=True, help="Admin tokens for the dashboard and its "
                        "API (needed when the admin listener is not on loopback).")
admin_app.add_typer(token_app, name="token")


def _db(home: HomeOption) -> contextlib.closing[db.Connection]:
    return contextlib.closing(db.open_home(require_home(resolve_home(home))))


def _when(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _as_dict(token: tokens.AdminToken) -> dict[str, object]:
    return {"name": token.name, "prefix": token.prefix, "created_at": token.created_at,
            "revoked_at": token.revoked_at,
            "status": "revoked" if token.revoked_at is not None else "active"}


@token_app.command("create")
def create(name: Annotated[str, typer.Argument(help="Who or what the token is for")],
           home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Create an admin token and print it once (it is stored only as a SHA-256 hash)."""
    with _db(home) as conn:
        token, plaintext = tokens.create(conn, name)
    if as_json:
        print(json.dumps({**_as_dict(token), "token": plaintext}))
        return
    out.print(f"Created admin token [bold]{token.name}[/]. It is shown once:")
    print(plaintext)


@token_app.command("list")
def list_tokens(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """List admin tokens (never the tokens themselves)."""
    with _db(home) as conn:
        found = tokens.list_tokens(conn)
    if as_json:
        print(json.dumps([_as_dict(t) for t in found], indent=2))
        return
    table = Table("name", "prefix", "created", "status")
    for t in found:
        status = "[red]revoked[/]" if t.revoked_at is not None else "[green]active[/]"
        table.add_row(t.name, t.prefix + "…", _when(t.created_at), status)
    out.print(table)


@token_app.command("revoke")
def revoke(name: Annotated[str, typer.Argument(help="The token's name")],
           home: HomeOption = None) -> None:
    """Revoke an admin token; running gateways refuse it (and its sessions) within seconds."""
    with _db(home) as conn:
        revoked = tokens.revoke(conn, name)
    out.print(f"Revoked admin token {revoked.name}.", highlight=False)
