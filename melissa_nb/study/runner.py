"""`melissa-nb run`: a whole study on one machine, the runner playing Melissa's launcher.

(Over 400 lines: the runner is one state machine of attempts, retries, drops and server
restarts; its parts read in the order a study runs.)

Order of events: draw the design, bind the launcher sockets, start the server (directly, or
under the mpiexec next to the interpreter for several ranks), wait for every rank's SERVER
message, then keep at most `at_once` simulations running while answering the server, until it
says STOP. A failed or timed-out simulation is relaunched (the server drops timesteps it already
has) until its retries are spent, then DROPped; with Sobol the rest of its group goes with it,
since a group missing a member cannot contribute. Everything waits with a deadline, and the
`finally` path stops every child process group whatever happened (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import enum
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import zmq
from rich.console import Console
from rich.markup import escape

from melissa_nb.auth import KEY_ENVIRONMENT, KEY_FILE
from melissa_nb.errors import ConfigurationError, MelissaError, StudyError, StudyInterrupted
from melissa_nb.ports import free_port
from melissa_nb.protocol import (
    NON_FINITE,
    SIMU_FINISHED,
    ConfidenceInterval,
    Drop,
    Job,
    LauncherMessage,
    Server,
    SimuStatus,
    Stop,
    Timeout,
)
from melissa_nb.server.checkpoint.files import checkpoint_path
from melissa_nb.server.checkpoint.restart import finished_in_checkpoint
from melissa_nb.server.live.state import progress_block_name, reading
from melissa_nb.server.results.convergence import CONVERGED
from melissa_nb.study.config import StudyConfig
from melissa_nb.study.display import ProgressDisplay
from melissa_nb.study.jobs import Attempt, Jobs, LocalJobs, SubmittedJob, Task
from melissa_nb.study.launcher_sockets import HEARTBEAT_SECONDS, Launcher, LauncherPorts
from melissa_nb.study.previous_run import clear_previous_run, hold_output, resume_point
from melissa_nb.study.report import (
    StudyReport,
    accepted_in_results,
    annotate_results,
    print_summary,
    server_rejections,
)
from melissa_nb.study.sampling import SimulationSpec, design, write_parameters_csv
from melissa_nb.study.slurm import SlurmJobs

SERVER_START_SECONDS = 120.0
"""Bound on the server's start (numba import and kernel compilation on a cold cache)."""
SERVER_EXIT_SECONDS = 120.0
"""Bound on the server's exit after STOP (it writes the netCDF files first)."""
POLL_SECONDS = 0.02
PROGRESS_SECONDS = 0.25
LAUNCHER_TIMEOUT_SECONDS = 60.0
"""The server's --launcher-timeout: 12 missed HELLOs (Melissa 0.6 waits about 250 s)."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Status(enum.Enum):
    """Where a simulation stands, as the runner sees it."""

    PENDING = "pending"
    RUNNING = "running"
    EXITED = "exited"  # the process ended well; the server has not confirmed all its data yet
    FINISHED = "finished"  # the server confirmed every timestep
    DROPPED = "dropped"


@dataclass
class Simulation:
    """A simulation of the design and its history in this study."""

    spec: SimulationSpec
    status: Status = Status.PENDING
    attempts: int = 0
    failures: int = 0


def executable(name: str) -> str:
    """`name` from the interpreter's own bin directory, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StudyError(f"cannot find {name!r} next to {sys.executable} or on PATH")
    return found


def server_arguments(
    config: StudyConfig, ports: LauncherPorts, connection_port: int, study_id: str
) -> list[str]:
    """The `melissa-nb server` options for this study (Melissa 0.6 names where they exist).

    On a cluster the server connects to the runner's host name and binds every interface,
    advertising its own node's name to the simulations (never loopback); locally everything
    stays on loopback.
    """
    colon = ":".join
    if config.scheduler.cluster:
        hosts = ["-n", socket.gethostname(), "--bind", "0.0.0.0"]
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
        # The runner says HELLO every few seconds: if it dies, the server gives up soon.
        "--launcher-timeout",
        f"{LAUNCHER_TIMEOUT_SECONDS:g}",
    ]
    # "--name=value": a negative threshold must not look like an option.
    if config.thresholds:
        arguments.append("--thresholds=" + colon(repr(value) for value in config.thresholds))
    if config.quantiles:
        arguments.append("--quantiles=" + colon(repr(value) for value in config.quantiles))
    if config.sobol or "correlation" in config.statistics:
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


def server_command(config: StudyConfig, arguments: list[str]) -> list[str]:
    """`melissa-nb server ...` (or `python SCRIPT ...` with `[server] script`), under
    `mpiexec -n M` when the study asks for M > 1 ranks."""
    if config.server_script is not None:  # a user script reading them with from_arguments
        command = [sys.executable, str(config.server_script), *arguments]
    else:
        command = [executable("melissa-nb"), "server", *arguments]
    if config.server_ranks > 1:
        command = [executable("mpiexec"), "-n", str(config.server_ranks), *command]
    return command


@contextmanager
def stop_signals(handler: Callable[[int, FrameType | None], None] | int) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) go to `handler` (or are ignored:
    signal.SIG_IGN) inside the block."""
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """A stop signal inside the block is held and acted on (StudyInterrupted) at its end: a
    process started in the block is recorded before the cleanup looks for it; interrupted
    between its start and its record, nobody would stop it."""
    held: list[int] = []
    with stop_signals(lambda signum, frame: held.append(signum)):
        yield
    if held:
        raise StudyInterrupted(held[0])


def interrupt(signum: int, frame: FrameType | None) -> None:
    """The study's SIGINT/SIGTERM/SIGHUP handler: unwind to the cleanup."""
    raise StudyInterrupted(signum)


class StudyRunner:
    """Runs one study; `run()` returns a StudyReport or raises StudyError/StudyInterrupted."""

    def __init__(
        self,
        config: StudyConfig,
        console: Console | None = None,
        show_progress: bool = True,
        resume: bool = False,
    ) -> None:
        self.config = config
        self.console = console or Console(stderr=True)
        self.show_progress = show_progress
        self.resume = resume  # take up an interrupted run from its server's checkpoints
        self.simulations = {spec.simulation_id: Simulation(spec) for spec in design(config)}
        self.queue: deque[int] = deque(self.simulations)
        self.active: dict[int, Attempt] = {}  # attempts under way, by simulation id
        self.rejected: dict[str, int] = {}
        self.retried = 0
        self.stopped = False
        self.server_ranks: set[int] = set()
        self.intervals: dict[tuple[str, str], float] = {}  # (statistic, field) -> worst width
        self.log_dir = config.output_dir / "logs"
        self.server_log = config.output_dir / "server.log"
        self.display = ProgressDisplay(self.console, len(self.simulations), show_progress)
        self.next_refresh = 0.0
        self.dropped_samples: dict[int, str] = {}  # sample -> why it was dropped
        self.non_finite: dict[int, set[str]] = {}  # sample -> fields it sent NaN or inf in
        self.next_drops = 0.0
        self.messages = 0
        self.server: SubmittedJob | None = None
        self.server_host = "127.0.0.1"  # rank 0's node, as its SERVER message names it
        self.restarts = 0  # of the server, from its checkpoint
        self.converged = False  # the server said every Sobol interval is below the target
        # Unique per run (shared-memory names), within the server's 32 characters.
        self.study_id = re.sub(r"[^A-Za-z0-9_]", "_", config.name)[:20] + f"_{os.getpid()}"
        self.jobs = make_jobs(config, self.study_id)

    # --- protocol ---------------------------------------------------------------------------
    # The server names samples, not processes: with Sobol its ids are group ids (one JOB, one
    # SIMU_STATUS, one TIMEOUT, one DROP per group), as for Melissa 0.6's group jobs.

    def members(self, sample: int) -> list[Simulation]:
        """The simulations of a sample: its Sobol group in member order, or the one simulation."""
        size = self.config.group_size
        return [self.simulations[simu_id] for simu_id in range(sample * size, (sample + 1) * size)]

    def job_id(self, sample: int) -> str:
        """The job id the server is told for a sample."""
        return f"{self.study_id}.{sample}"

    def job(self, sample: int) -> Job:
        """The JOB of a sample (with Sobol: the group's A draw)."""
        return Job(sample, self.job_id(sample), self.members(sample)[0].spec.values)

    def job_of(self, sample: int) -> Job | None:
        """The answer to `simu_info <sample>`: its JOB, None for an id the study lacks."""
        return self.job(sample) if 0 <= sample < self.config.sample_size else None

    def handle(self, message: LauncherMessage, launcher: Launcher) -> None:
        """React to one message from the server."""
        if isinstance(message, Server):
            self.server_ranks.add(message.rank)
            if message.rank == 0 and self.config.scheduler.cluster:
                self.server_host = message.node_name
        elif isinstance(message, Stop):
            self.stopped = True
        elif isinstance(message, SimuStatus) and message.status == SIMU_FINISHED:
            if 0 <= message.simu_id < self.config.sample_size:
                for simulation in self.members(message.simu_id):
                    if simulation.status != Status.DROPPED:
                        simulation.status = Status.FINISHED
        elif isinstance(message, Timeout):
            if 0 <= message.simu_id < self.config.sample_size:
                self.timed_out(message.simu_id, launcher)
        elif isinstance(message, ConfidenceInterval):
            if message.stat_name == CONVERGED:
                self.converge(launcher)
            elif message.stat_name == NON_FINITE:
                self.sent_non_finite(int(message.value), message.field_name, launcher)
            else:
                self.intervals[(message.stat_name, message.field_name)] = message.value
        # ALIVE and SIMU_STATUS "running" need nothing: the runner watches its processes itself.

    def sent_non_finite(self, sample: int, field: str, launcher: Launcher) -> None:
        """The server refused NaN or infinite values of `field` from a sample: the attempt
        failed. Its members that run or ran are relaunched, or the sample is dropped once
        their retries are spent (a Sobol group needs every member's data of a timestep)."""
        if not 0 <= sample < self.config.sample_size:
            return
        self.non_finite.setdefault(sample, set()).add(field)
        for simulation in self.members(sample):
            if simulation.status in (Status.RUNNING, Status.EXITED):
                self.fail(simulation, launcher, f"sent NaN or infinite values in {field}")

    def timed_out(self, sample: int, launcher: Launcher) -> None:
        """The server heard nothing from a sample for too long.

        While a member is still pending or running the sample is in progress as far as the
        runner knows (a hung process hits the runner's own timeout). When every member ran to
        completion yet the server lacks data, the exited members are relaunched (the server
        keeps what it already has).
        """
        group = self.members(sample)
        if any(simulation.status in (Status.PENDING, Status.RUNNING) for simulation in group):
            return
        for simulation in group:
            if simulation.status == Status.EXITED:
                self.fail(simulation, launcher, "exited without sending every timestep")

    # --- simulations ------------------------------------------------------------------------

    def launch(self, simulation: Simulation, launcher: Launcher, connection_port: int) -> None:
        """Start an attempt, after telling the server its sample's JOB. On a cluster, the
        pending members of its Sobol group start with it, as the tasks of one job."""
        launcher.publish(self.job(simulation.spec.group))
        together = [simulation]
        if self.jobs.groups_in_one_job:
            together = [
                member
                for member in self.members(simulation.spec.group)
                if member.status == Status.PENDING
            ]
        tasks = []
        for member in together:
            member.attempts += 1
            spec = member.spec
            argv = self.config.command_for(
                dict(zip(self.config.parameter_names, spec.values, strict=True))
            )
            log_path = self.log_dir / f"simulation_{spec.simulation_id}.log"
            with open(log_path, "ab") as log:
                log.write(f"--- attempt {member.attempts}: {' '.join(argv)}\n".encode())
            environment = {
                "MELISSA_SIMU_ID": str(spec.simulation_id),
                "MELISSA_SERVER_NODE_NAME": self.server_host,
                "MELISSA_SERVER_PORT": str(connection_port),
            }
            if self.config.auth:
                environment[KEY_ENVIRONMENT] = str(self.config.output_dir / KEY_FILE)
            tasks.append(Task(tuple(argv), log_path, environment))
        scheduler = self.config.scheduler
        with stop_signals_held():
            job = self.jobs.submit(
                f"simulation_{simulation.spec.simulation_id}.{simulation.attempts}",
                tasks,
                self.config.working_dir,
                cpus=scheduler.cpus_per_simulation * len(tasks),
                time_limit=scheduler.time_limit,
            )
            for member, task in zip(together, tasks, strict=True):
                self.active[member.spec.simulation_id] = Attempt(
                    member.attempts, job, task.log_path
                )
                member.status = Status.RUNNING

    def halt(self, simulation: Simulation) -> None:
        """Stop the simulation's process, if it has one alive."""
        run = self.active.pop(simulation.spec.simulation_id, None)
        if run is not None:
            run.stop()

    def fail(self, simulation: Simulation, launcher: Launcher, why: str) -> None:
        """A failed or timed-out attempt: relaunch next, or drop its sample once retries are spent.

        A relaunch goes to the front of the queue so that its group completes soon. `why`
        (exit code, timeout, ...) is what the summary says of a sample dropped for it.
        """
        self.halt(simulation)
        simulation.failures += 1
        if simulation.failures > self.config.retries:
            member = ""
            if self.config.group_size > 1:
                member = f"simulation {simulation.spec.simulation_id} "
            attempts = simulation.failures
            self.drop(
                simulation.spec.group,
                launcher,
                f"{member}{why}, {attempts} attempt{'s' if attempts > 1 else ''}",
            )
        else:
            simulation.status = Status.PENDING
            self.retried += 1
            self.queue.appendleft(simulation.spec.simulation_id)

    def drop(self, sample: int, launcher: Launcher, why: str) -> None:
        """Give a sample up for good (a whole Sobol group) and tell the server."""
        for simulation in self.members(sample):
            self.halt(simulation)
            simulation.status = Status.DROPPED
        self.dropped_samples.setdefault(sample, why)
        launcher.publish(Drop(sample, self.job_id(sample)))

    def converge(self, launcher: Launcher) -> None:
        """Every Sobol interval is below the target: DROP every sample none of whose members
        started; samples under way finish, and the study ends with what the server received."""
        if self.converged:
            return
        self.converged = True
        unstarted = [
            sample
            for sample in range(self.config.sample_size)
            if all(
                member.status == Status.PENDING and member.attempts == 0
                for member in self.members(sample)
            )
        ]
        for sample in unstarted:
            self.drop(sample, launcher, "not launched: the target interval width was reached")
        self.console.print(
            f"target interval width {self.config.target_width:g} reached: "
            f"{len(unstarted)} samples not launched",
            markup=False,
        )

    def repeat_drops(self, launcher: Launcher) -> None:
        """Publish every DROP again now and then: PUB/SUB gives no delivery guarantee, and a
        lost DROP would leave the server waiting for that sample until the deadline (the
        server ignores a repeated DROP)."""
        now = time.monotonic()
        if now < self.next_drops:
            return
        self.next_drops = now + HEARTBEAT_SECONDS
        for sample in sorted(self.dropped_samples):
            launcher.publish(Drop(sample, self.job_id(sample)))

    def watch(self, launcher: Launcher) -> None:
        """Collect exits, enforce the wall-clock timeout of each attempt.

        A simulation the server already confirmed (FINISHED) may still be running; whatever
        its process does next cannot change the results, so only its slot is freed.
        """
        for simu_id, run in list(self.active.items()):
            if self.active.get(simu_id) is not run:
                continue  # halted meanwhile: its group was dropped by an earlier failure
            simulation = self.simulations[simu_id]
            code = run.poll()
            if code is None and run.elapsed <= self.config.simulation_timeout:
                continue
            if code == 0 or simulation.status == Status.FINISHED:
                self.halt(simulation)
                if simulation.status == Status.RUNNING:
                    simulation.status = Status.EXITED
                if code == 0 and simulation.failures == 0:
                    run.log_path.unlink(missing_ok=True)  # keep the logs of failures only
            elif code is None:
                self.fail(
                    simulation, launcher, f"ran longer than {self.config.simulation_timeout:g} s"
                )
            else:
                ended = f"exit code {code}"
                if self.config.scheduler.cluster:
                    ended = f"{run.job.label} {run.job.state}, {ended}"
                self.fail(simulation, launcher, ended)

    def count(self, *statuses: Status) -> int:
        """How many simulations are in one of `statuses`."""
        return sum(simulation.status in statuses for simulation in self.simulations.values())

    # --- the study --------------------------------------------------------------------------

    def run(self) -> StudyReport:
        """Run the whole study; every child is stopped on the way out, whatever happens."""
        started = time.monotonic()
        config = self.config
        lock = hold_output(config)  # one run of a study at a time
        try:
            restart = self.take_over_previous_run()
            return self.run_study(started, restart)
        finally:
            lock.close()

    def take_over_previous_run(self) -> list[str]:
        """Clear what an earlier run left, or resume it: the server's `-r` options."""
        config = self.config
        resumed = None
        if self.resume:
            resumed = resume_point(config, [item.spec for item in self.simulations.values()])
        removed = clear_previous_run(config, keep_checkpoints=resumed is not None)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Logs of this run only: an earlier run's would mislead.
        self.server_log.unlink(missing_ok=True)
        for old in self.log_dir.glob("simulation_*.log"):
            old.unlink()
        if removed:
            self.console.print(
                f"removed what an earlier run left in {config.output_dir}: {', '.join(removed)}",
                markup=False,
            )
        if resumed is None:
            return []
        for sample in resumed.finished:
            for simulation in self.members(sample):
                simulation.status = Status.FINISHED
        for sample in resumed.dropped:
            for simulation in self.members(sample):
                simulation.status = Status.DROPPED
            self.dropped_samples[sample] = "dropped in the interrupted run"
        self.queue = deque(
            simu_id
            for simu_id, simulation in self.simulations.items()
            if simulation.status == Status.PENDING
        )
        done = len(resumed.finished) + len(resumed.dropped)
        self.console.print(
            f"resuming from {resumed.checkpoints}: {len(resumed.finished)} samples finished, "
            f"{len(resumed.dropped)} dropped, {config.sample_size - done} to run",
            markup=False,
        )
        return ["-r", str(resumed.checkpoints)]

    def run_study(self, started: float, restart: list[str]) -> StudyReport:
        """The study itself (the output directory is this run's)."""
        config = self.config
        context = zmq.Context()
        launcher = None
        try:
            with stop_signals(interrupt):
                connection_port = free_port()
                host = "0.0.0.0" if config.scheduler.cluster else "127.0.0.1"
                launcher = Launcher(context, self.job_of, options="", host=host)
                arguments = server_arguments(config, launcher.ports, connection_port, self.study_id)
                launcher.options = shlex.join(arguments)
                with stop_signals_held():
                    self.server = self.start_server([*arguments, *restart])
                deadline = started + config.study_timeout
                self.wait_for_server(
                    launcher, self.server, min(deadline, started + SERVER_START_SECONDS)
                )
                with self.display:
                    self.drive(launcher, arguments, connection_port, deadline)
                    self.wait_for_exit(
                        launcher, self.server, time.monotonic() + SERVER_EXIT_SECONDS
                    )
                    # STOP and a clean exit: every sample not dropped is complete on the
                    # server, including those whose last SIMU_STATUS it had no time to send.
                    for simulation in self.simulations.values():
                        if simulation.status != Status.DROPPED:
                            simulation.status = Status.FINISHED
                    self.refresh(force=True)
                annotate_results(config)
        finally:
            # A second Ctrl-C must not cut the cleanup short and leave orphans behind.
            with stop_signals(signal.SIG_IGN):
                for simulation in self.simulations.values():
                    self.halt(simulation)
                if self.server is not None:
                    self.server.stop(grace=10.0)
                left = self.jobs.close()
                if left:
                    self.console.print(
                        f"[red]warning[/]: jobs {', '.join(left)} were still queued after scancel"
                    )
                if launcher is not None:
                    self.rejected = dict(launcher.rejected)
                    launcher.close()
                context.term()
                write_parameters_csv(
                    config.output_dir / "parameters.csv",
                    config.parameter_names,
                    (simulation.spec for simulation in self.simulations.values()),
                    {
                        simu_id: simulation.status.value
                        for simu_id, simulation in self.simulations.items()
                    },
                )
        return StudyReport(
            config.output_dir,
            self.count(Status.FINISHED),
            [
                simu_id
                for simu_id, simulation in self.simulations.items()
                if simulation.status == Status.DROPPED
            ],
            self.retried,
            time.monotonic() - started,
            self.rejected,
            {sample: sorted(fields) for sample, fields in self.non_finite.items()},
            dict(self.dropped_samples),
        )

    def server_failed(self, what: str) -> StudyError:
        """An error quoting the end of the server's log."""
        try:
            tail = "\n".join(self.server_log.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            tail = "(no server log)"
        return StudyError(f"{what}; end of {self.server_log}:\n{tail}")

    def wait_for_server(self, launcher: Launcher, server: SubmittedJob, deadline: float) -> None:
        """Wait for a SERVER message from every rank (the time its job waits in a queue does
        not count against the start-up deadline)."""
        while len(self.server_ranks) < self.config.server_ranks:
            code = server.poll()
            if code is not None:
                raise self.server_failed(f"the server exited with code {code} during start-up")
            if server.running_seconds == 0:  # still queued
                deadline = max(deadline, time.monotonic() + SERVER_START_SECONDS)
            elif time.monotonic() > deadline:
                raise self.server_failed("the server did not start in time")
            for message in launcher.service(POLL_SECONDS * 5):
                self.handle(message, launcher)

    def start_server(self, arguments: list[str]) -> SubmittedJob:
        """Start the server (its output appended to server.log)."""
        # Simulations share the cores: numba's worker threads would spin against them
        # (measured: 1 thread per rank needs a quarter of the server CPU time of 2).
        config = self.config
        task = Task(
            tuple(server_command(config, arguments)),
            self.server_log,
            {"NUMBA_NUM_THREADS": str(config.server_threads)},
        )
        return self.jobs.submit(
            f"server.{self.restarts}",
            [task],
            config.working_dir,
            ranks=config.server_ranks,
            cpus=config.server_threads,
            time_limit=config.scheduler.server_time_limit,
        )

    def restart_server(self, launcher: Launcher, arguments: list[str], deadline: float) -> None:
        """The server died before STOP: restart it from its last checkpoint and run again
        every sample that is not finished (or dropped) in that checkpoint.

        Samples finished after the checkpoint run again too: the restarted server drops the
        timesteps it already has, so nothing counts twice (docs/fault-tolerance.md). A server
        that died before its first checkpoint starts afresh and every started sample runs again.
        """
        assert self.server is not None
        code = self.server.poll()
        checkpoints = self.config.output_dir / "checkpoint"
        what = f"the server exited with code {code} before the study finished"
        if self.config.scheduler.cluster:
            what = f"the server's {self.server.label} ended {self.server.state} ({code})"
        if self.restarts >= self.config.server_restarts:
            raise self.server_failed(f"{what} ({self.restarts} restarts already)")
        self.server.stop(grace=10.0)  # whatever it left running
        first = (checkpoint_path(checkpoints, 0), checkpoint_path(checkpoints, 0, previous=True))
        restart = ["-r", str(checkpoints)] if any(path.exists() for path in first) else []
        done = [False] * self.config.sample_size
        if restart:
            try:
                done = list(
                    finished_in_checkpoint(
                        checkpoints,
                        self.config.fields,
                        self.config.timesteps,
                        self.config.sample_size,
                    )
                )
            except MelissaError as error:
                raise self.server_failed(f"{what}; its checkpoint is unusable: {error}") from None
        self.restarts += 1
        again = 0
        for sample in range(self.config.sample_size):
            if sample in self.dropped_samples:
                continue
            for simulation in reversed(self.members(sample)):
                if done[sample]:
                    self.halt(simulation)
                    simulation.status = Status.FINISHED
                elif simulation.attempts:
                    self.halt(simulation)
                    simulation.status = Status.PENDING
                    self.queue.appendleft(simulation.spec.simulation_id)
                    again += 1
        source = f"from {checkpoints}" if restart else "afresh (no checkpoint yet)"
        self.console.print(
            f"{what}: restart {self.restarts} {source}, {again} simulations run again", markup=False
        )
        self.server_ranks.clear()
        with stop_signals_held():
            self.server = self.start_server([*arguments, *restart])
        self.wait_for_server(
            launcher, self.server, min(deadline, time.monotonic() + SERVER_START_SECONDS)
        )
        self.next_drops = 0.0  # DROPs after the checkpoint: tell the new server at once

    def drive(
        self, launcher: Launcher, arguments: list[str], connection_port: int, deadline: float
    ) -> None:
        """The main loop: answer the server, keep `at_once` simulations running, until STOP."""
        while not self.stopped:
            if time.monotonic() > deadline:
                raise StudyError(
                    f"the study did not finish within its timeout ({self.config.study_timeout:g} s)"
                )
            assert self.server is not None
            if self.server.poll() is not None:
                self.restart_server(launcher, arguments, deadline)
            for message in launcher.service(POLL_SECONDS):
                self.handle(message, launcher)
            self.watch(launcher)
            self.repeat_drops(launcher)
            while self.queue and len(self.active) < self.config.at_once:
                simulation = self.simulations[self.queue.popleft()]
                if simulation.status == Status.PENDING:
                    self.launch(simulation, launcher, connection_port)
            self.refresh()

    def wait_for_exit(self, launcher: Launcher, server: SubmittedJob, deadline: float) -> None:
        """After STOP the server writes its results and exits; it must exit with code 0."""
        while server.poll() is None:
            if time.monotonic() > deadline:
                raise self.server_failed("the server did not exit after STOP")
            for message in launcher.service(POLL_SECONDS * 5):
                self.handle(message, launcher)
        code = server.poll()
        if code != 0:
            if all(simulation.status == Status.DROPPED for simulation in self.simulations.values()):
                raise StudyError(self.all_dropped())
            raise self.server_failed(f"the server exited with code {code}")

    def all_dropped(self) -> str:
        """Why a study whose every sample was dropped has no results: what the server refused
        (its reasons, with counts and the latest detail) and the end of the log of the
        simulation that failed last (its own words: a missing file, a wrong field name)."""
        why = "every sample was dropped after its retries: no results"
        refused = server_rejections(self.server_log)
        if refused:
            why += "; the server refused their data: " + "; ".join(
                f"{reason} x{count} (latest: {detail})"
                for reason, (count, detail) in sorted(refused.items())
            )
        logs = sorted(self.log_dir.glob("simulation_*.log"), key=lambda path: path.stat().st_mtime)
        if not logs:
            return why
        tail = "\n".join(logs[-1].read_text(errors="replace").splitlines()[-10:])
        return f"{why}; {logs[-1]} (the last to fail) ends with:\n{tail}"

    def received(self) -> int | None:
        """Data messages the server ranks accepted so far, from their progress blocks (None
        while a block is not readable: not created yet, or being removed)."""
        total = 0
        for rank in range(self.config.server_ranks):
            try:
                with reading(progress_block_name(self.study_id, rank)) as block:
                    counters = block.metadata["counters"]
                    total += int(block.arrays["counters"][counters.index("accepted")])
            except (OSError, ValueError, KeyError):
                return None
        return total

    def refresh(self, force: bool = False) -> None:
        """Redraw the progress, at most every PROGRESS_SECONDS unless forced (the end: then the
        counts are the final ones, messages included, from the result files)."""
        now = time.monotonic()
        if not self.show_progress or (now < self.next_refresh and not force):
            return
        self.next_refresh = now + PROGRESS_SECONDS
        self.messages = (accepted_in_results(self.config) if force else None) or (
            self.received() or self.messages
        )
        failures = sum(simulation.failures for simulation in self.simulations.values())
        line = (
            f"running {len(self.active)} · failed {failures} · retried {self.retried} · "
            f"dropped {self.count(Status.DROPPED)} · received {self.messages:,} messages"
        )
        for statistic in ("sobol_first", "sobol_total"):
            widths = [value for (name, _), value in self.intervals.items() if name == statistic]
            if widths:
                line += f" · {statistic} CI width {max(widths):.3g}"
        if isinstance(self.jobs, SlurmJobs):
            states = self.jobs.counts()
            line += " · jobs " + (
                " ".join(f"{state.lower()} {n}" for state, n in sorted(states.items())) or "none"
            )
        self.display.show(self.count(Status.FINISHED, Status.DROPPED), line, final=force)


def make_jobs(config: StudyConfig, study_id: str) -> Jobs:
    """Where this study's programs run: here, or as jobs of the scheduler its file names
    (checked before anything starts: a missing sbatch is an error at once)."""
    if config.scheduler.kind == "slurm":
        return SlurmJobs(config.scheduler, config.output_dir / "jobs", study_id)
    return LocalJobs()


def run_study_file(path: str | Path, show_progress: bool = True, resume: bool = False) -> int:
    """`melissa-nb run`: load, run, summarise; returns the process exit code."""
    from melissa_nb.study.config import load_study

    console = Console(stderr=True, soft_wrap=True)
    try:
        config = load_study(path)
        report = StudyRunner(config, console, show_progress, resume).run()
    except StudyInterrupted as error:
        console.print(f"[red]interrupted[/]: {escape(str(error))}; every process was stopped")
        return 128 + error.signum
    except MelissaError as error:
        console.print(f"[red]error[/]: {escape(str(error))}")
        return 2 if isinstance(error, ConfigurationError) else 1
    print_summary(report, Console(soft_wrap=True))
    return 0
