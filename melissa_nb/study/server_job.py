"""The study's server, as the runner sees it: its command line (Melissa 0.6's option names), its
job (started, restarted from its checkpoint, waited for, stopped) and what its log says when it
fails. One SERVER message from every rank means it is ready; after STOP it writes its results
and must exit with code 0."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable

from melissa_nb.errors import MelissaError, StudyError
from melissa_nb.protocol import LauncherMessage, Server
from melissa_nb.server.checkpoint.files import checkpoint_path
from melissa_nb.server.checkpoint.restart import finished_in_checkpoint
from melissa_nb.study.config import StudyConfig
from melissa_nb.study.fingerprint import describe, fingerprint
from melissa_nb.study.jobs import Jobs, SubmittedJob, Task, executable
from melissa_nb.study.launcher_sockets import Launcher, LauncherPorts
from melissa_nb.study.slurm import SchedulerBusy
from melissa_nb.study.stop_signals import stop_signals_held

SERVER_START_SECONDS = 120.0
"""Bound on the server's start (numba import and kernel compilation on a cold cache)."""
SERVER_EXIT_SECONDS = 120.0
"""Bound on the server's exit after STOP (it writes the netCDF files first)."""
LAUNCHER_TIMEOUT_SECONDS = 60.0
"""The server's --launcher-timeout: 12 missed HELLOs (Melissa 0.6 waits about 250 s)."""


def server_arguments(
    config: StudyConfig, ports: LauncherPorts, connection_port: int, study_id: str
) -> list[str]:
    """The `melissa-nb server` options for this study (Melissa 0.6 names where they exist).

    On a cluster the server connects to the runner's host name and binds every interface,
    advertising its own node's name to the simulations (never loopback), or the address of the
    interface `[server] advertise` names; locally everything stays on loopback.
    """
    colon = ":".join
    if config.scheduler.cluster:
        hosts = ["-n", socket.gethostname(), "--bind", "0.0.0.0"]
        if config.advertise is not None:
            hosts += ["--advertise", config.advertise]
    else:
        hosts = ["-n", "127.0.0.1", "--bind", "127.0.0.1", "--advertise", "127.0.0.1"]
    arguments = [
        "-p",
        str(len(config.parameters)),
        "-s",
        str(config.sample_size),
        "-t",
        str(config.timesteps),
        "-o",
        colon(config.operations),
        "-f",
        colon(config.fields),
        *hosts,
        "-w",
        f"{config.simulation_timeout:g}",
        "-c",
        f"{config.checkpoint_interval:g}",
        "-v",
        str(config.verbosity),
        "--txt_push_port",
        str(ports.push),
        "--txt_pull_port",
        str(ports.pull),
        "--txt_req_port",
        str(ports.req),
        "--data_port",
        "0",
        "--connection-port",
        str(connection_port),
        "--output-dir",
        str(config.output_dir),
        "--study-id",
        study_id,
        "--study-fingerprint",
        fingerprint(describe(config)),
        # The runner says HELLO every few seconds: if it dies, the server gives up soon.
        "--launcher-timeout",
        f"{LAUNCHER_TIMEOUT_SECONDS:g}",
    ]
    # "--name=value": a negative threshold must not look like an option.
    if config.thresholds:
        arguments.append("--thresholds=" + colon(repr(value) for value in config.thresholds))
    if config.quantiles:
        arguments.append("--quantiles=" + colon(repr(value) for value in config.quantiles))
    chaos = config.chaos
    if chaos:
        arguments += ["--chaos-degree", str(chaos.degree)]
        arguments.append("--chaos-laws=" + colon(config.chaos_laws))
        if chaos.fields != config.fields:
            arguments += ["--chaos-fields", colon(chaos.fields)]
        if len(chaos.timesteps) < config.timesteps:
            arguments += ["--chaos-timesteps", colon(str(step) for step in chaos.timesteps)]
    if config.sobol or "correlation" in config.statistics or chaos:
        arguments += ["--confidence", repr(config.confidence)]
        arguments += ["--parameter-names", colon(config.parameter_names)]
    if config.auth:
        arguments.append("--auth")
    if config.grid_shape is not None and len(config.grid_shape) == 2:
        arguments += ["--grid-shape", colon(str(size) for size in config.grid_shape)]
    if config.target_width is not None:
        arguments += ["--target-width", repr(config.target_width)]
    arguments += ["--heartbeat", repr(config.heartbeat)]  # also the pace of the widths
    return arguments


def server_command(config: StudyConfig, arguments: list[str], jobs: Jobs) -> tuple[str, ...]:
    """`melissa-nb server ...` (or `python SCRIPT ...` with `[server] script`) as the study's
    `[server] ranks` under the scheduler's launcher (mpiexec here, srun on Slurm)."""
    if config.server_script is not None:  # a user script reading them with from_arguments
        command = [sys.executable, str(config.server_script), *arguments]
    else:
        command = [executable("melissa-nb"), "server", *arguments]
    return jobs.parallel(command, config.server_ranks, config.server_threads)


WAIT_SECONDS = 0.1  # each wait for the launcher's messages while the server starts or ends
Handler = Callable[[LauncherMessage, Launcher], None]


class StudyServer:
    """The server job of one study run: its ranks heard from, its host, its restarts."""

    def __init__(self, config: StudyConfig, jobs: Jobs) -> None:
        self.config = config
        self.jobs = jobs
        self.log = config.output_dir / "server.log"
        self.job: SubmittedJob | None = None
        self.ranks: set[int] = set()  # ranks whose SERVER message arrived
        self.host = "127.0.0.1"  # rank 0's node, as its SERVER message names it
        self.restarts = 0  # from its checkpoint

    def heard(self, message: Server) -> None:
        """A rank's SERVER message: it is up (on a cluster, rank 0 names its node)."""
        self.ranks.add(message.rank)
        if message.rank == 0 and self.config.scheduler.cluster:
            self.host = message.node_name

    def start(self, arguments: list[str]) -> None:
        """Submit the server (its output appended to server.log); a stop signal waits until
        the job is recorded, so that the cleanup stops it."""
        # Simulations share the cores: numba's worker threads would spin against them
        # (measured: 1 thread per rank needs a quarter of the server CPU time of 2).
        config = self.config
        task = Task(
            server_command(config, arguments, self.jobs),
            self.log,
            {"NUMBA_NUM_THREADS": str(config.server_threads)},
        )
        self.ranks.clear()
        while True:
            try:
                with stop_signals_held():
                    self.job = self.jobs.submit(
                        f"server.{self.restarts}",
                        [task],
                        config.working_dir,
                        ranks=config.server_ranks,
                        cpus=config.server_threads,
                        time_limit=config.scheduler.server_time_limit,
                        nodes=config.server_nodes,
                    )
                return
            except SchedulerBusy as busy:  # nothing to serve meanwhile: wait for the backoff
                time.sleep(max(0.0, busy.retry_at - time.monotonic()))

    def poll(self) -> int | None:
        """The job's exit code, None while it runs (or was never started)."""
        return None if self.job is None else self.job.poll()

    def wait_ready(self, launcher: Launcher, deadline: float, handle: Handler) -> None:
        """Wait for a SERVER message from every rank, handing every message to `handle` (the
        time its job waits in a queue does not count against the start-up deadline)."""
        assert self.job is not None
        while len(self.ranks) < self.config.server_ranks:
            code = self.job.poll()
            if code is not None:
                raise self.failed(f"the server exited with code {code} during start-up")
            if self.job.running_seconds == 0:  # still queued
                deadline = max(deadline, time.monotonic() + SERVER_START_SECONDS)
            elif time.monotonic() > deadline:
                raise self.failed("the server did not start in time")
            for message in launcher.service(WAIT_SECONDS):
                handle(message, launcher)

    def wait_exit(self, launcher: Launcher, deadline: float, handle: Handler) -> int:
        """After STOP: wait for the server to write its results and exit; its exit code."""
        assert self.job is not None
        while self.job.poll() is None:
            if time.monotonic() > deadline:
                raise self.failed("the server did not exit after STOP")
            for message in launcher.service(WAIT_SECONDS):
                handle(message, launcher)
        code = self.job.poll()
        assert code is not None
        return code

    def ended(self) -> str:
        """How the server ended, for the restart message."""
        assert self.job is not None
        code = self.job.poll()
        if self.config.scheduler.cluster:
            return f"the server's {self.job.label} ended {self.job.state} ({code})"
        return f"the server exited with code {code} before the study finished"

    def checkpoint(self, what: str) -> tuple[list[str], list[bool]]:
        """The `-r` options of a restart from the last checkpoint (none: afresh) and, per
        sample, whether that checkpoint has it finished or dropped on every rank."""
        checkpoints = self.config.output_dir / "checkpoint"
        first = (checkpoint_path(checkpoints, 0), checkpoint_path(checkpoints, 0, previous=True))
        if not any(path.exists() for path in first):
            return [], [False] * self.config.sample_size
        try:
            done = finished_in_checkpoint(
                checkpoints, self.config.fields, self.config.timesteps, self.config.sample_size
            )
        except MelissaError as error:
            raise self.failed(f"{what}; its checkpoint is unusable: {error}") from None
        return ["-r", str(checkpoints)], list(done)

    def failed(self, what: str) -> StudyError:
        """An error quoting the end of the server's log."""
        try:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            tail = "(no server log)"
        return StudyError(f"{what}; end of {self.log}:\n{tail}")

    def stop(self) -> None:
        """Stop whatever the job left running (idempotent)."""
        if self.job is not None:
            self.job.stop(grace=10.0)
