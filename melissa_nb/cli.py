"""The `melissa-nb` command line: one typer app, one sub-command per job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from melissa_nb import __version__

if TYPE_CHECKING:
    from melissa_nb.server.config import ServerConfig

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


@app.command()
def server(
    parameters: int = typer.Option(0, "-p", "--parameters", help="Uncertain parameters (Sobol)."),
    sampling_size: int = typer.Option(
        ..., "-s", "--samplingsize", help="Simulations, or Sobol groups when sobol is on."
    ),
    timesteps: int = typer.Option(..., "-t", "--timesteps", help="Timesteps per field."),
    operations: str = typer.Option(
        "mean:variance",
        "-o",
        "--operations",
        help="Colon list: mean variance skewness kurtosis min max threshold quantile sobol.",
    ),
    thresholds: str = typer.Option(
        None,
        "-e",
        "--thresholds",
        "--threshold",
        "--treshold",
        "--tresholds",
        help="Colon list of thresholds (exceedance counts x > t).",
    ),
    quantiles: str = typer.Option(
        None, "-q", "--quantiles", "--quantile", help="Colon list of quantile orders in (0, 1)."
    ),
    field_names: str = typer.Option(..., "-f", "--fieldnames", help="Colon list of field names."),
    launcher_name: str = typer.Option(
        None, "-n", "--launchername", help="Launcher host; omitted = run without a launcher."
    ),
    check_interval: float = typer.Option(300.0, "-c", "--checkintervals", help="Seconds."),
    timeout: float = typer.Option(
        300.0, "-w", "--timeout", help="Seconds of silence before a simulation times out."
    ),
    verbosity: int = typer.Option(1, "-v", "--verbosity", help="0 quiet .. 3 debug."),
    restart_dir: str = typer.Option(
        None, "-r", "--restart", help="Restart from the checkpoints in this directory."
    ),
    checkpoint_dir: str = typer.Option(
        None, "--checkpoint-dir", help="Where checkpoints go (default <output-dir>/checkpoint)."
    ),
    target_width: float = typer.Option(
        None,
        "--target-width",
        help="Tell the launcher when every Sobol interval is narrower than this.",
    ),
    txt_push_port: int = typer.Option(5555, "--txt_push_port", help="Launcher PULL port."),
    txt_pull_port: int = typer.Option(5556, "--txt_pull_port", help="Launcher PUB port."),
    txt_req_port: int = typer.Option(5554, "--txt_req_port", help="Launcher REP port."),
    data_port: int = typer.Option(
        2004, "--data_port", help="Data port of rank 0 (0 = chosen by ZeroMQ)."
    ),
    output_dir: str = typer.Option("results", "--output-dir", help="Results directory."),
    bind: str = typer.Option(
        None, "--bind", help="Bind address (default 127.0.0.1 for a local study, else all)."
    ),
    advertise: str = typer.Option(None, "--advertise", help="Host written in the port table."),
    connection_port: int = typer.Option(2003, "--connection-port", help="Handshake REP port."),
    port_table_width: int = typer.Option(
        256, "--port-table-width", help="Bytes per port-table entry (MPICH clients: 128)."
    ),
    study_id: str = typer.Option(None, "--study-id", help="Id used in shared-memory names."),
    confidence: float = typer.Option(0.95, "--confidence", help="Sobol interval level."),
    launcher_timeout: float = typer.Option(
        250.0, "--launcher-timeout", help="Seconds without HELLO before the launcher is gone."
    ),
    max_cells: int = typer.Option(
        1 << 24, "--max-cells", help="Largest vector one message may carry (sets MAXMSGSIZE)."
    ),
    member_buffer_mb: float = typer.Option(
        256.0, "--member-buffer-mb", help="Memory for assembling single Sobol members."
    ),
    batch_mb: float = typer.Option(
        64.0,
        "--batch-mb",
        help="Received data folded together per pass over the state (0: one message at a time).",
    ),
    heartbeat: float = typer.Option(
        20.0, "--heartbeat", help="Seconds between ALIVE/TIMEOUT messages to the launcher."
    ),
    control_port: int = typer.Option(
        0, "--control-port", help="Rank 0's control port (0: a free port, see server.json)."
    ),
    control_bind: str = typer.Option(
        "127.0.0.1", "--control-bind", help="Interface the control endpoint binds."
    ),
    forward_to: str = typer.Option(
        None, "--forward-to", help="A consumer's address: push every accepted message there."
    ),
    forward_ack: str = typer.Option(
        None, "--forward-ack", help="The consumer's address acknowledging the end of stream."
    ),
    forward_timeout: float = typer.Option(
        60.0, "--forward-timeout", help="Seconds a forward or the final acknowledgement may wait."
    ),
) -> None:
    """Run one rank of the statistics server (start M ranks with mpiexec -n M)."""
    options = dict(locals())  # the parsed options, each named after its ServerConfig field
    from melissa_nb.server.signals import EarlySignals

    early = EarlySignals()  # first, before the slow imports: SIGUSR1 must not kill us
    from melissa_nb.errors import ConfigurationError

    try:
        config = config_from_options(options)
    except ConfigurationError as error:
        typer.echo(f"melissa-nb server: error: {error}", err=True)
        raise typer.Exit(2) from None
    from melissa_nb.server.loop import serve

    raise typer.Exit(serve(config, early))


COLON_LISTS = {
    "operations": ("-o/--operations", str),
    "thresholds": ("-e/--thresholds", float),
    "quantiles": ("-q/--quantiles", float),
    "field_names": ("-f/--fieldnames", str),
}


def config_from_options(options: dict[str, Any]) -> ServerConfig:
    """The ServerConfig of the `server` command's parsed options (ConfigurationError if bad).

    Every option of `server` is named after its ServerConfig field, so the command line and
    an embedded server (`MelissaServer.from_arguments`) share one definition of the settings.
    """
    from melissa_nb.server.config import ServerConfig, parse_colon_list

    values = dict(options)
    for name, (option, kind) in COLON_LISTS.items():
        values[name] = parse_colon_list(values[name], option, kind)
    return ServerConfig(**values)


@app.command()
def status(
    output_dir: str = typer.Argument("results", help="The server's --output-dir."),
    watch: float = typer.Option(
        0.0, "--watch", help="Refresh the tables live for this many seconds (0: print once)."
    ),
) -> None:
    """Show the progress of a running server (its shared memory, else its control endpoint)."""
    from melissa_nb.server.status import show_status

    raise typer.Exit(show_status(output_dir, watch))


@app.command()
def run(
    study_file: str = typer.Argument(..., help="The study file (TOML), see docs/study.md."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run a whole study on this machine: server, simulations, results."""
    from melissa_nb.study.runner import run_study_file

    raise typer.Exit(run_study_file(study_file, show_progress=progress))


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
