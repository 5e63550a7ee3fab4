"""`steward db`: the gateway database's schema, applied on purpose before a rollout.

Every command (and every node at start-up) also migrates, one node at a time; `db migrate`
lets an operator do it once, ahead of starting the new version everywhere.
"""

from __future__ import annotations

import contextlib
import json

import typer
from steward.cli.options import HomeOption, JsonOption, out

from steward import db
from steward.config import load_config
from steward.home import Home, require_home, resolve_home

database_app = typer.Typer(no_args_is_help=True, help="The gateway database (SQLite, or "
                           "PostgreSQL shared by several nodes).")


def _describe(home: HomeOption) -> dict[str, object]:
    target = require_home(resolve_home(home))
    config = load_config(target)
    with contextlib.closing(db.open_home(target)) as conn:
        version = db.schema_version(conn)
        where = getattr(conn, "target", None)
    return {"backend": "postgresql" if where else "sqlite",
            "database": where.name if where else str(Home(target).db),
            "schema_version": version, "code_schema_version": db.SCHEMA_VERSION,
            "node_name": config.server.node_name}


@database_app.command("migrate")
def migrate(home: HomeOption = None, as_json: JsonOption = False) -> None:
    """Apply pending schema migrations (under an advisory lock on PostgreSQL)."""
    info = _describe(home)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    out.print(f"{info['backend']} {info['database']}: schema version {info['schema_version']}"
              " (current)", highlight=False)
