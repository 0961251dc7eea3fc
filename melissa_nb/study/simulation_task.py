"""One simulation of a study as a program to run: its command line with the parameter values in
place, under the scheduler's launcher for its ranks, and the environment that tells the Melissa
client where the server is (docs/study.md, "What a simulation sees")."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from melissa_nb.auth import KEY_ENVIRONMENT, KEY_FILE
from melissa_nb.study.config import StudyConfig
from melissa_nb.study.jobs import Jobs, Task


def simulation_task(
    config: StudyConfig,
    jobs: Jobs,
    simulation_id: int,
    values: Sequence[float],
    server: tuple[str, int],
    log_dir: Path,
) -> Task:
    """The task of simulation `simulation_id` run at `values` (in parameter order), sending to
    the server at (host, connection port), its output in `log_dir`."""
    argv = config.command_for(dict(zip(config.parameter_names, values, strict=True)))
    host, port = server
    environment = {
        "MELISSA_SIMU_ID": str(simulation_id),
        "MELISSA_SERVER_NODE_NAME": host,
        "MELISSA_SERVER_PORT": str(port),
    }
    if config.auth:
        environment[KEY_ENVIRONMENT] = str(config.output_dir / KEY_FILE)
    command = jobs.parallel(argv, config.simulation_ranks, config.scheduler.cpus_per_simulation)
    return Task(command, log_dir / f"simulation_{simulation_id}.log", environment)
