"""The `melissa-nb` command line: one typer app, one sub-command per job."""

from __future__ import annotations

import typer

from melissa_nb import __version__

app = typer.Typer(
    name="melissa-nb",
    help="In-transit sensitivity analysis server (Melissa 0.6 compatible).",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the melissa_nb version."""
    typer.echo(__version__)
