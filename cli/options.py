"""What every `steward` command shares: its console and its common options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console()
HomeOption = Annotated[Path | None, typer.Option(
    "--home", help="Steward home (default: $STEWARD_HOME, $STATE_DIRECTORY, or the user data "
    "directory).", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
