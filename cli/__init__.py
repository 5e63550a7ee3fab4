"""The `steward` command: a thin Typer layer over the steward library."""
