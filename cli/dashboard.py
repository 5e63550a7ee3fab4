"""`steward dashboard`: the dashboard's store, rebuilt from the spool on demand."""

from __future__ import annotations

import typer
from steward.cli.options import HomeOption, out

from steward.dashboard.store import rebuild as rebuild_store
from steward.home import Home, require_home, resolve_home

dashboard_app = typer.Typer(no_args_is_help=True, help="The web dashboard on the admin "
                            "listener (http://ADMIN_HOST:ADMIN_PORT/).")


@dashboard_app.command("rebuild")
def rebuild(home: HomeOption = None) -> None:
    """Drop the dashboard's store and index again every spool segment still on disk (a
    running gateway keeps serving, and its figures fill in as the rebuild goes)."""
    done = rebuild_store(Home(require_home(resolve_home(home))))
    out.print(f"dashboard rebuilt: {done.records} records from {done.segments} spool segments "
              f"in {done.seconds:.1f}s", highlight=False)
