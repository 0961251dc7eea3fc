"""`melissa-nb run`: a whole study on one machine, the runner playing Melissa's launcher.

Order of events: draw the design, bind the launcher sockets, start the server (directly, or
under the mpiexec next to the interpreter for several ranks), wait for every rank's SERVER
message, then keep at most `at_once` simulations running while answering the server, until it
says STOP. A failed or timed-out simulation is relaunched (the server drops timesteps it already
has) until its retries are spent, then DROPped; with Sobol the rest of its group goes with it,
since a group missing a member cannot contribute. Everything waits with a deadline, and the
`finally` path stops every child process group whatever happened (Ctrl-C and SIGTERM included).
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import time
from collections import deque
from pathlib import Path

import zmq
from rich.console import Console
from rich.markup import escape

from melissa_nb.errors import ConfigurationError, MelissaError, StudyError, StudyInterrupted
from melissa_nb.job_queue import queue_summary
from melissa_nb.ports import free_port
from melissa_nb.protocol import (
    NON_FINITE,
    SIMU_FINISHED,
    ConfidenceInterval,
    LauncherMessage,
    Server,
    SimuStatus,
    Stop,
    Timeout,
)
from melissa_nb.server.live.state import progress_block_name, reading
from melissa_nb.server.results.convergence import CONVERGED
from melissa_nb.study.config import StudyConfig
from melissa_nb.study.display import ProgressDisplay
from melissa_nb.study.fingerprint import write_design
from melissa_nb.study.jobs import Attempt
from melissa_nb.study.launcher_sockets import Launcher
from melissa_nb.study.previous_run import clear_previous_run, hold_output, resume_point
from melissa_nb.study.report import (
    StudyReport,
    accepted_in_results,
    annotate_results,
    chaos_size,
    print_summary,
    why_all_dropped,
)
from melissa_nb.study.samples import Samples, Simulation, Status
from melissa_nb.study.sampling import write_parameters_csv
from melissa_nb.study.schedulers import make_jobs
from melissa_nb.study.server_job import (
    SERVER_EXIT_SECONDS,
    SERVER_START_SECONDS,
    StudyServer,
    server_arguments,
)
from melissa_nb.study.simulation_task import simulation_task
from melissa_nb.study.slurm import SchedulerBusy, SlurmJobs
from melissa_nb.study.stop_signals import interrupt, stop_signals, stop_signals_held

POLL_SECONDS = 0.02
PROGRESS_SECONDS = 0.25


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
        self.rejected: dict[str, int] = {}
        self.stopped = False
        self.intervals: dict[tuple[str, str], float] = {}  # (statistic, field) -> worst width
        self.log_dir = config.output_dir / "logs"
        self.next_refresh = 0.0
        self.messages = 0
        self.converged = False  # the server said every Sobol interval is below the target
        self.submit_after = 0.0  # the scheduler refuses jobs for now: none before then
        # Unique per run (shared-memory names), within the server's 32 characters.
        self.study_id = re.sub(r"[^A-Za-z0-9_]", "_", config.name)[:20] + f"_{os.getpid()}"
        self.samples = Samples(config, self.study_id)
        self.display = ProgressDisplay(self.console, len(self.samples.simulations), show_progress)
        self.jobs = make_jobs(config, self.study_id, self.tell)
        self.server = StudyServer(config, self.jobs)

    def tell(self, text: str) -> None:
        """A line for the user, above the progress display."""
        self.console.print(text, markup=False)

    # --- the launcher's messages -----------------------------------------------------------

    def handle(self, message: LauncherMessage, launcher: Launcher) -> None:
        """React to one message from the server."""
        if isinstance(message, Server):
            self.server.heard(message)
        elif isinstance(message, Stop):
            self.stopped = True
        elif isinstance(message, SimuStatus) and message.status == SIMU_FINISHED:
            if 0 <= message.simu_id < self.config.sample_size:
                for simulation in self.samples.members(message.simu_id):
                    if simulation.status != Status.DROPPED:
                        simulation.status = Status.FINISHED
        elif isinstance(message, Timeout):
            if 0 <= message.simu_id < self.config.sample_size:
                self.samples.timed_out(message.simu_id, launcher)
        elif isinstance(message, ConfidenceInterval):
            if message.stat_name == CONVERGED:
                self.converge(launcher)
            elif message.stat_name == NON_FINITE:
                self.samples.sent_non_finite(int(message.value), message.field_name, launcher)
            else:
                self.intervals[(message.stat_name, message.field_name)] = message.value
        # ALIVE and SIMU_STATUS "running" need nothing: the runner watches its processes itself.

    # --- simulations ------------------------------------------------------------------------

    def launch(self, simulation: Simulation, launcher: Launcher, connection_port: int) -> bool:
        """Start an attempt, after telling the server its sample's JOB. On a cluster, the
        pending members of its Sobol group start with it, as the tasks of one job. False when
        the scheduler refuses jobs for now: the simulation waits at the head of the queue."""
        launcher.publish(self.samples.job(simulation.spec.group))
        together = [simulation]
        if self.jobs.groups_in_one_job:
            together = [
                member
                for member in self.samples.members(simulation.spec.group)
                if member.status == Status.PENDING
            ]
        scheduler, ranks = self.config.scheduler, self.config.simulation_ranks
        server = (self.server.host, connection_port)
        tasks = [
            simulation_task(
                self.config,
                self.jobs,
                member.spec.simulation_id,
                member.spec.values,
                server,
                self.log_dir,
            )
            for member in together
        ]
        with stop_signals_held():
            try:
                job = self.jobs.submit(
                    f"simulation_{simulation.spec.simulation_id}.{simulation.attempts + 1}",
                    tasks,
                    self.config.working_dir,
                    ranks=ranks * len(tasks),
                    cpus=scheduler.cpus_per_simulation,
                    time_limit=scheduler.time_limit,
                )
            except SchedulerBusy as busy:
                self.samples.queue.appendleft(simulation.spec.simulation_id)
                self.submit_after = busy.retry_at
                return False
            for member, task in zip(together, tasks, strict=True):
                member.attempts += 1
                with open(task.log_path, "ab") as log:
                    log.write(f"--- attempt {member.attempts}: {shlex.join(task.argv)}\n".encode())
                self.samples.active[member.spec.simulation_id] = Attempt(
                    member.attempts, job, task.log_path
                )
                member.status = Status.RUNNING
        return True

    def converge(self, launcher: Launcher) -> None:
        """Every Sobol interval is below the target: DROP every sample none of whose members
        started; samples under way finish, and the study ends with what the server received."""
        if self.converged:
            return
        self.converged = True
        unstarted = self.samples.unstarted()
        for sample in unstarted:
            self.samples.drop(
                sample, launcher, "not launched: the target interval width was reached"
            )
        self.console.print(
            f"target interval width {self.config.target_width:g} reached: "
            f"{len(unstarted)} samples not launched",
            markup=False,
        )

    def watch(self, launcher: Launcher) -> None:
        """Collect exits, enforce the wall-clock timeout of each attempt.

        A simulation the server already confirmed (FINISHED) may still be running; whatever
        its process does next cannot change the results, so only its slot is freed.
        """
        for simu_id, run in list(self.samples.active.items()):
            if self.samples.active.get(simu_id) is not run:
                continue  # halted meanwhile: its group was dropped by an earlier failure
            simulation = self.samples.simulations[simu_id]
            code = run.poll()
            if code is None and run.elapsed <= self.config.simulation_timeout:
                continue
            if code == 0 or simulation.status == Status.FINISHED:
                self.samples.halt(simulation)
                if simulation.status == Status.RUNNING:
                    simulation.status = Status.EXITED
                if code == 0 and simulation.failures == 0:
                    run.log_path.unlink(missing_ok=True)  # keep the logs of failures only
            elif code is None:
                self.samples.fail(
                    simulation, launcher, f"ran longer than {self.config.simulation_timeout:g} s"
                )
            else:
                ended = f"exit code {code}"
                if self.config.scheduler.cluster:
                    ended = f"{run.job.label} {run.job.state}, {ended}"
                self.samples.fail(simulation, launcher, ended)

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
            resumed = resume_point(config, self.samples.specs())
        removed = clear_previous_run(config, keep_checkpoints=resumed is not None)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Logs of this run only: an earlier run's would mislead.
        self.server.log.unlink(missing_ok=True)
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
            for simulation in self.samples.members(sample):
                simulation.status = Status.FINISHED
        for sample in resumed.dropped:
            for simulation in self.samples.members(sample):
                simulation.status = Status.DROPPED
            self.samples.dropped[sample] = "dropped in the interrupted run"
        self.samples.queue = deque(
            simu_id
            for simu_id, simulation in self.samples.simulations.items()
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
                launcher = Launcher(context, self.samples.job_of, options="", host=host)
                write_design(config)  # before the server: a checkpoint names this design
                if config.chaos:
                    self.tell(chaos_size(config))
                arguments = server_arguments(config, launcher.ports, connection_port, self.study_id)
                launcher.options = shlex.join(arguments)
                self.server.start([*arguments, *restart])
                deadline = started + config.study_timeout
                self.server.wait_ready(
                    launcher, min(deadline, started + SERVER_START_SECONDS), self.handle
                )
                with self.display:
                    self.drive(launcher, arguments, connection_port, deadline)
                    self.wait_for_exit(launcher, time.monotonic() + SERVER_EXIT_SECONDS)
                    # STOP and a clean exit: every sample not dropped is complete on the
                    # server, including those whose last SIMU_STATUS it had no time to send.
                    for simulation in self.samples.simulations.values():
                        if simulation.status != Status.DROPPED:
                            simulation.status = Status.FINISHED
                    self.refresh(force=True)
                annotate_results(config)
        finally:
            # A second Ctrl-C must not cut the cleanup short and leave orphans behind.
            with stop_signals(signal.SIG_IGN):
                for simulation in self.samples.simulations.values():
                    self.samples.halt(simulation)
                self.server.stop()
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
                    (simulation.spec for simulation in self.samples.simulations.values()),
                    {
                        simu_id: simulation.status.value
                        for simu_id, simulation in self.samples.simulations.items()
                    },
                )
        return StudyReport(
            config.output_dir,
            self.samples.count(Status.FINISHED),
            [
                simu_id
                for simu_id, simulation in self.samples.simulations.items()
                if simulation.status == Status.DROPPED
            ],
            self.samples.retried,
            time.monotonic() - started,
            self.rejected,
            {sample: sorted(fields) for sample, fields in self.samples.non_finite.items()},
            dict(self.samples.dropped),
        )

    def restart_server(self, launcher: Launcher, arguments: list[str], deadline: float) -> None:
        """The server died before STOP: restart it from its last checkpoint and run again
        every sample that is not finished (or dropped) in that checkpoint.

        Samples finished after the checkpoint run again too: the restarted server drops the
        timesteps it already has, so nothing counts twice (docs/fault-tolerance.md). A server
        that died before its first checkpoint starts afresh and every started sample runs again.
        """
        server = self.server
        what = server.ended()
        if server.restarts >= self.config.server_restarts:
            raise server.failed(f"{what} ({server.restarts} restarts already)")
        server.stop()  # whatever it left running
        restart, done = server.checkpoint(what)
        server.restarts += 1
        again = 0
        for sample in range(self.config.sample_size):
            if sample in self.samples.dropped:
                continue
            for simulation in reversed(self.samples.members(sample)):
                if done[sample]:
                    self.samples.halt(simulation)
                    simulation.status = Status.FINISHED
                elif simulation.attempts:
                    self.samples.halt(simulation)
                    simulation.status = Status.PENDING
                    self.samples.queue.appendleft(simulation.spec.simulation_id)
                    again += 1
        source = f"from {restart[1]}" if restart else "afresh (no checkpoint yet)"
        self.console.print(
            f"{what}: restart {server.restarts} {source}, {again} simulations run again",
            markup=False,
        )
        server.start([*arguments, *restart])
        server.wait_ready(
            launcher, min(deadline, time.monotonic() + SERVER_START_SECONDS), self.handle
        )
        self.samples.next_drops = 0.0  # DROPs after the checkpoint: tell the new server at once

    def drive(
        self, launcher: Launcher, arguments: list[str], connection_port: int, deadline: float
    ) -> None:
        """The main loop: answer the server, keep `at_once` simulations running, until STOP."""
        while not self.stopped:
            if time.monotonic() > deadline:
                raise StudyError(
                    f"the study did not finish within its timeout ({self.config.study_timeout:g} s)"
                )
            if self.server.poll() is not None:
                self.restart_server(launcher, arguments, deadline)
            for message in launcher.service(POLL_SECONDS):
                self.handle(message, launcher)
            self.watch(launcher)
            self.follow_scheduler()
            self.samples.repeat_drops(launcher)
            while (
                self.samples.queue
                and len(self.samples.active) < self.config.at_once
                and time.monotonic() >= self.submit_after
            ):
                simulation = self.samples.simulations[self.samples.queue.popleft()]
                if simulation.status == Status.PENDING:
                    if not self.launch(simulation, launcher, connection_port):
                        break
            self.refresh()

    def follow_scheduler(self) -> None:
        """On Slurm: the queue file for `melissa-nb status`, and once per job a warning when it
        waits in the queue past `[scheduler] pending_warning`."""
        if isinstance(self.jobs, SlurmJobs):
            self.jobs.write_queue()
            for job, waited in self.jobs.long_pending():
                self.console.print(
                    f"warning: {job.label} has waited {waited:.0f} s in Slurm's queue: "
                    f"{job.reason or job.slurm_state}",
                    markup=False,
                )

    def wait_for_exit(self, launcher: Launcher, deadline: float) -> None:
        """After STOP the server writes its results and exits; it must exit with code 0."""
        code = self.server.wait_exit(launcher, deadline, self.handle)
        if code != 0:
            if self.samples.all_dropped():
                raise StudyError(why_all_dropped(self.server.log, self.log_dir))
            raise self.server.failed(f"the server exited with code {code}")

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
        samples = self.samples
        failures = sum(simulation.failures for simulation in samples.simulations.values())
        line = (
            f"running {len(samples.active)} · failed {failures} · retried {samples.retried} · "
            f"dropped {samples.count(Status.DROPPED)} · received {self.messages:,} messages"
        )
        for statistic in ("sobol_first", "sobol_total"):
            widths = [value for (name, _), value in self.intervals.items() if name == statistic]
            if widths:
                line += f" · {statistic} CI width {max(widths):.3g}"
        if isinstance(self.jobs, SlurmJobs):
            line += " · " + queue_summary(self.jobs.queued())

        self.display.show(self.samples.count(Status.FINISHED, Status.DROPPED), line, final=force)


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
