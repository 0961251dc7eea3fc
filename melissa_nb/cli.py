"""The `melissa-nb` command line: one typer app, one sub-command per job."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Annotated, Any

import typer

from melissa_nb.server.options import server_parameters
from melissa_nb.version import __version__

if TYPE_CHECKING:
    from melissa_nb.server.signals import EarlySignals

app = typer.Typer(
    name="melissa-nb",
    help="In-transit sensitivity analysis server (Melissa 0.6 compatible).",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """In-transit sensitivity analysis server (Melissa 0.6 compatible)."""


@app.command()
def version() -> None:
    """Print the melissa_nb version."""
    typer.echo(__version__)


def server(**options: Any) -> None:
    """Run one rank of the statistics server (start M ranks with mpiexec -n M)."""
    from melissa_nb.errors import ConfigurationError
    from melissa_nb.server.options import config_from_options
    from melissa_nb.server.signals import EarlySignals

    early = _EARLY[0] if _EARLY else EarlySignals()
    try:
        config = config_from_options(options)
    except ConfigurationError as error:
        typer.echo(f"melissa-nb server: error: {error}", err=True)
        raise typer.Exit(2) from None
    from melissa_nb.server.loop import serve

    raise typer.Exit(serve(config, early))


server.__signature__ = inspect.Signature(server_parameters())  # type: ignore[attr-defined]
app.command()(server)
_EARLY: list[EarlySignals] = []  # the signals `melissa-nb server` caught before this module loaded


def run_app(early: EarlySignals | None) -> None:
    """Run the app; `early`: the signal handlers a server process installed first thing (see
    `melissa_nb.__main__`), which the `server` command takes over."""
    if early is not None:
        _EARLY.append(early)
    app()


@app.command()
def status(
    output_dir: str = typer.Argument("results", help="The server's --output-dir."),
    watch: float = typer.Option(
        0.0, "--watch", help="Refresh the tables live for this many seconds (0: print once)."
    ),
) -> None:
    """Show the progress of a running server (its shared memory, else its control endpoint)."""
    from melissa_nb.server.results.status import show_status

    raise typer.Exit(show_status(output_dir, watch))


@app.command()
def run(
    study_file: str = typer.Argument(..., help="The study file (TOML), see docs/study.md."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Take up an interrupted run from its server's checkpoint (finished samples stay).",
    ),
) -> None:
    """Run a whole study (here, or through Slurm): server, simulations, results."""
    from melissa_nb.study.runner import run_study_file

    raise typer.Exit(run_study_file(study_file, show_progress=progress, resume=resume))


@app.command()
def results(
    directory: str = typer.Argument(..., help="A results directory (the study's output_dir)."),
    timestep: int = typer.Option(-1, "--timestep", help="Timestep of the maps (-1: the last)."),
    cell: int = typer.Option(0, "--cell", help="Global cell of the time plots."),
    shape: str = typer.Option(
        None, "--shape", help="Grid of the maps, e.g. 100x100 (default: the grid_shape attribute)."
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots."),
    plot_dir: str = typer.Option(None, "--plot-dir", help="Where plots go (default DIR/plots)."),
) -> None:
    """Summarise a study's netCDF results and plot maps and time series."""
    from melissa_nb.results import show_results

    raise typer.Exit(show_results(directory, timestep, cell, shape, plots, plot_dir))


@app.command()
def predict(
    target: str = typer.Argument(
        ..., help="A result file with a polynomial chaos, or a results directory."
    ),
    settings: Annotated[
        list[str] | None,
        typer.Option("--set", help="NAME=VALUE of a parameter (each parameter once)."),
    ] = None,
    field: str = typer.Option(None, "--field", help="The field, in a directory of several."),
    output: str = typer.Option(None, "--output", help="Write the predicted field (netCDF)."),
    plot: str = typer.Option(None, "--plot", help="Draw the field at --timestep (PNG)."),
    timestep: int = typer.Option(
        -1, "--timestep", help="Timestep printed and drawn (-1: the last one fitted)."
    ),
) -> None:
    """Evaluate a study's polynomial chaos at new parameters: the field at every timestep."""
    from melissa_nb.results.surrogate import predict_command

    raise typer.Exit(predict_command(target, settings or [], field, output, plot, timestep))


@app.command()
def validate(
    study: str = typer.Argument(..., help="The study file whose polynomial chaos to check."),
    points: int = typer.Option(10, "--points", help="New simulations to run and compare."),
    seed: int = typer.Option(None, "--seed", help="Seed of the new points (default: another)."),
) -> None:
    """Run the study's simulations at new points and print the polynomial chaos's error."""
    from melissa_nb.study.validation import validate_command

    raise typer.Exit(validate_command(study, points, seed))
