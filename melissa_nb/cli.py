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
    heartbeat: float = typer.Option(
        20.0, "--heartbeat", help="Seconds between ALIVE/TIMEOUT messages to the launcher."
    ),
) -> None:
    """Run one rank of the statistics server (start M ranks with mpiexec -n M)."""
    from melissa_nb.errors import ConfigurationError
    from melissa_nb.server.config import ServerConfig, parse_colon_list

    try:
        config = ServerConfig(
            parameters=parameters,
            sampling_size=sampling_size,
            timesteps=timesteps,
            operations=parse_colon_list(operations, "-o/--operations"),
            thresholds=parse_colon_list(thresholds, "-e/--thresholds", float),
            quantiles=parse_colon_list(quantiles, "-q/--quantiles", float),
            field_names=parse_colon_list(field_names, "-f/--fieldnames"),
            launcher_name=launcher_name,
            check_interval=check_interval,
            timeout=timeout,
            verbosity=verbosity,
            restart_dir=restart_dir,
            txt_push_port=txt_push_port,
            txt_pull_port=txt_pull_port,
            txt_req_port=txt_req_port,
            data_port=data_port,
            output_dir=output_dir,
            bind=bind,
            advertise=advertise,
            connection_port=connection_port,
            port_table_width=port_table_width,
            study_id=study_id,
            confidence=confidence,
            launcher_timeout=launcher_timeout,
            max_cells=max_cells,
            member_buffer_mb=member_buffer_mb,
            heartbeat=heartbeat,
            checkpoint_dir=checkpoint_dir,
            target_width=target_width,
        )
    except ConfigurationError as error:
        typer.echo(f"melissa-nb server: error: {error}", err=True)
        raise typer.Exit(2) from None
    from melissa_nb.server.loop import serve

    raise typer.Exit(serve(config))


@app.command()
def status(
    output_dir: str = typer.Argument("results", help="The server's --output-dir."),
) -> None:
    """Show the live progress of a running server (reads its shared-memory state)."""
    from melissa_nb.server.status import show_status

    raise typer.Exit(show_status(output_dir))


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
