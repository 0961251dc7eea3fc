"""Jobs on a Slurm cluster: sbatch to submit, one `squeue` call for the state of every open job
of the study (at most `at_once` and the server: never the whole cluster's queue), `scontrol show
job` once per job that ended (its exit code), scancel to stop. The runner stays on the login
node and keeps the launcher's sockets; the server and the simulations run on compute nodes
(docs/study.md, "On a cluster").

Each job is a batch script written under `<output>/jobs/`: its tasks start together in the
background, each with its own environment additions and log, and the job ends with the first
non-zero exit status of its tasks. Every task is an `srun` job step (`parallel`): a Sobol
group's members, each of `[simulation] ranks` MPI processes, share one allocation of
members x ranks tasks that may span nodes; the server's ranks are one step, spread over
`[server] nodes`. Slurm's own messages about a job (a node lost, a time limit) go to
`<output>/jobs/<name>.out`.

States: PENDING (and any other waiting state) leaves `running_seconds` at 0; COMPLETED gives
the tasks' exit code; FAILED, CANCELLED, TIMEOUT, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE and
OUT_OF_MEMORY give a non-zero code (the runner relaunches, then drops); a job that vanishes from
the controller is VANISHED, non-zero too. Jobs are submitted with `--no-requeue`: a job whose
node fails ends NODE_FAIL at once, and the runner (which knows what the server already has)
resubmits it, rather than Slurm requeueing it minutes later.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from melissa_nb.errors import ConfigurationError, StudyError
from melissa_nb.job_queue import QUEUE_FILE, QueuedJob, write_queue
from melissa_nb.study.jobs import Task
from melissa_nb.study.scheduler_config import SchedulerConfig
from melissa_nb.study.simulations import STOP_GRACE_SECONDS

COMMANDS = ("sbatch", "scontrol", "scancel", "squeue")
POLL_SECONDS = 0.5  # one `squeue` at most this often, for every open job of the study at once
COMMAND_SECONDS = 30.0  # bound on one Slurm command (a busy controller answers slowly)
VANISH_SECONDS = 10.0  # a job the controller never listed for this long is gone
CLOSE_SECONDS = 30.0  # bound on waiting for cancelled jobs to leave the queue
ENDED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
    "VANISHED",
}
# sbatch refusals that pass: a busy or restarting controller, a drained partition, a submit limit
# our own jobs ending will lift. Submission backs off and tries again, up to `submit_patience`.
PASSING_REFUSALS = (
    "Unable to contact slurm controller",
    "Socket timed out",
    "temporarily unavailable",
    "temporarily unable",
    "Required partition not available",
    "MaxSubmitJob",
    "Job violates accounting/QOS policy",
    "did not answer within",
)
BACKOFF_SECONDS = (1.0, 60.0)  # first and longest wait before sbatch is tried again
_JOB_LINE = re.compile(r"\bJobId=(\d+)\b.*?\bJobState=(\S+).*?\bExitCode=(\d+):(\d+)")


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=COMMAND_SECONDS, check=False
        )
    except subprocess.TimeoutExpired:
        raise StudyError(f"{argv[0]} did not answer within {COMMAND_SECONDS:g} s") from None


def _final_state(job_id: str) -> tuple[str, int, int] | None:
    """(JobState, exit code, signal) of one job as `scontrol show job` says, None if unknown."""
    shown = _run(["scontrol", "show", "job", "--oneliner", job_id])
    match = _JOB_LINE.search(shown.stdout) if shown.returncode == 0 else None
    if match is None:
        return None
    _, state, code, signal = match.groups()
    return state.rstrip("+"), int(code), int(signal)


def exit_code(state: str, code: int, signal: int) -> int:
    """The exit code the runner sees for a job that ended in `state` (ExitCode=code:signal)."""
    if state == "COMPLETED":
        return code
    if state == "FAILED":
        return code or (128 + signal if signal else 1)
    if state == "CANCELLED":
        return 128 + (signal or 15)
    return 124 if state == "TIMEOUT" else 1


class SchedulerBusy(StudyError):
    """sbatch refused a job for now (PASSING_REFUSALS): submit again from `retry_at` on."""

    def __init__(self, message: str, retry_at: float) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class SlurmJob:
    """One submitted batch job."""

    def __init__(self, jobs: SlurmJobs, job_id: str, name: str) -> None:
        self.jobs = jobs
        self.job_id = job_id
        self.name = name
        self.label = f"job {job_id}"
        self.submitted = time.monotonic()
        self.seen = False
        self.slurm_state = "PENDING"
        self.reason = ""  # why it waits, as squeue says (Resources, Priority, ...)
        self.warned = False  # told once that it waits long
        self.code: int | None = None
        self.running_since: float | None = None

    def observe(self, state: str, code: int, signal: int, now: float, reason: str = "") -> None:
        """What the controller says of this job now (`reason`: why it pends)."""
        self.seen = True
        if self.code is not None:
            return
        self.slurm_state = state
        # "None": Slurm has not looked at the job yet, no reason to tell
        self.reason = reason if state == "PENDING" and reason != "None" else ""
        if state in ("RUNNING", "COMPLETING") and self.running_since is None:
            self.running_since = now
        if state in ENDED:
            self.code = exit_code(state, code, signal)

    def missing(self, now: float) -> None:
        """The controller does not list this job (any more)."""
        if self.code is None and (self.seen or now - self.submitted > VANISH_SECONDS):
            self.slurm_state = "VANISHED"
            self.code = 1

    @property
    def state(self) -> str:
        """PENDING, RUNNING, ... as Slurm says, or VANISHED."""
        self.jobs.refresh()
        return self.slurm_state

    @property
    def running_seconds(self) -> float:
        """Seconds since the job was first seen running (0 while it waits in the queue)."""
        self.jobs.refresh()
        return 0.0 if self.running_since is None else time.monotonic() - self.running_since

    def poll(self) -> int | None:
        """The exit code once the job ended, else None."""
        self.jobs.refresh()
        return self.code

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Cancel the job (Slurm signals every process of it, SIGKILL after its KillWait)."""
        if self.code is None:
            _run(["scancel", self.job_id])
            self.slurm_state, self.code = "CANCELLED", 128 + 15


@dataclass(frozen=True)
class Shape:
    """What one job asks of the partition: `ranks` tasks of `cpus` CPUs, on `nodes` nodes."""

    what: str  # how the user knows it: "a Sobol group (7 members x 2 CPUs)"
    ranks: int
    cpus: int
    nodes: int | None = None


@dataclass(frozen=True)
class Partition:
    """The CPUs of every node of the partition, as `sinfo` lists them."""

    cpus: dict[str, int]
    where: str  # "partition batch", or "Slurm" for the default one

    def refusal(self, shape: Shape) -> str | None:
        """Why a job of `shape` could never start here, None when it can."""
        largest, total = max(self.cpus.values()), sum(self.cpus.values())
        if shape.cpus > largest:
            return (
                f"{shape.what}: one task needs {shape.cpus} CPUs on one node, the largest node "
                f"of {self.where} has {largest}"
            )
        if shape.ranks * shape.cpus > total:
            return (
                f"{shape.what} needs {shape.ranks * shape.cpus} CPUs at once "
                f"({shape.ranks} tasks x {shape.cpus}), the {len(self.cpus)} nodes of "
                f"{self.where} have {total}"
            )
        if shape.nodes is not None and shape.nodes > len(self.cpus):
            return f"{shape.what} asks for {shape.nodes} nodes, {self.where} has {len(self.cpus)}"
        return None


class SlurmJobs:
    """Submits batch jobs with the study's `[scheduler]` options and tracks them."""

    groups_in_one_job = True

    def __init__(
        self,
        scheduler: SchedulerConfig,
        directory: Path,
        study: str,
        tell: Callable[[str], None] = print,
    ) -> None:
        missing = [name for name in COMMANDS if shutil.which(name) is None]
        if missing:
            raise StudyError(
                f'[scheduler] kind = "slurm" needs {", ".join(COMMANDS)} on PATH; '
                f"{', '.join(missing)} not found (nothing was submitted)"
            )
        self.scheduler = scheduler
        self.directory = directory
        self.study = study
        self.jobs: dict[str, SlurmJob] = {}
        self._next_poll = 0.0
        self._queue_written = -1.0  # the poll whose states the queue file has
        self.tell = tell  # warnings for the user: sbatch refusing, then accepting again
        self.refused_since: float | None = None  # sbatch refuses jobs for now since then
        self.retry_at = 0.0
        self.backoff = 0.0

    def partition(self) -> Partition | None:
        """The partition's nodes and their CPUs (`sinfo`), None when Slurm does not say."""
        partition = ["-p", self.scheduler.partition] if self.scheduler.partition else []
        if shutil.which("sinfo") is None:
            return None
        listed = _run(["sinfo", "-h", "-N", "-o", "%N %c", *partition])
        rows = [line.split() for line in listed.stdout.splitlines()]
        cpus = {row[0]: int(row[1]) for row in rows if len(row) == 2 and row[1].isdigit()}
        if listed.returncode != 0 or not cpus:
            return None
        where = f"partition {self.scheduler.partition}" if self.scheduler.partition else "Slurm"
        return Partition(cpus, where)

    def refuse_what_cannot_fit(self, shapes: Sequence[Shape]) -> None:
        """ConfigurationError, before anything is submitted, for a job the partition could
        never start (it would pend forever, or be refused midway through the study)."""
        partition = self.partition()
        for shape in shapes:
            refusal = None if partition is None else partition.refusal(shape)
            if refusal is not None:
                raise ConfigurationError(f"[scheduler] {refusal}: nothing was submitted")

    def parallel(self, argv: Sequence[str], ranks: int, cpus: int) -> tuple[str, ...]:
        """`argv` as one job step of `ranks` tasks of `cpus` CPUs, CPUs of its own
        (`--exact`: the job's other steps run beside it), MPI through PMI2 for several ranks
        (what the pip mpich wheel speaks), every rank killed when one fails."""
        step = ["srun", "--exact", f"--ntasks={ranks}", f"--cpus-per-task={cpus}"]
        step.append("--kill-on-bad-exit=1")
        if ranks > 1:
            step.append(f"--mpi={self.scheduler.mpi}")
        return (*step, *argv)

    def submit(
        self,
        name: str,
        tasks: Sequence[Task],
        cwd: Path,
        *,
        ranks: int = 1,
        cpus: int = 1,
        time_limit: int | None = None,
        nodes: int | None = None,
    ) -> SlurmJob:
        """Write the job's script and sbatch it (`ranks` tasks of `cpus` CPUs for its steps,
        on `nodes` nodes if given); StudyError with Slurm's words if refused."""
        self.directory.mkdir(parents=True, exist_ok=True)
        script = self.directory / f"{name}.sh"
        script.write_text(batch_script(tasks))
        scheduler = self.scheduler
        options = [
            "--parsable",
            f"--job-name=melissa_nb.{self.study}.{name}",
            f"--output={self.directory / (name + '.out')}",
            f"--chdir={cwd}",
            f"--ntasks={ranks}",
            f"--cpus-per-task={cpus}",
            "--no-requeue",
        ]
        for option, value in (
            ("--nodes", nodes),
            ("--partition", scheduler.partition),
            ("--account", scheduler.account),
            ("--qos", scheduler.qos),
            ("--time", time_limit),
        ):
            if value is not None:
                options.append(f"{option}={value}")
        job_id = self._sbatch(name, [*options, *scheduler.sbatch_arguments, str(script)])
        job = SlurmJob(self, job_id, name)
        self.jobs[job.job_id] = job
        return job

    def _sbatch(self, name: str, arguments: list[str]) -> str:
        """sbatch, its job id; SchedulerBusy for a refusal that passes (backing off, at most
        `submit_patience` s), StudyError with Slurm's words for any other."""
        now = time.monotonic()
        if now < self.retry_at:
            raise SchedulerBusy(f"sbatch is backing off (job {name})", self.retry_at)
        try:
            result = _run(["sbatch", *arguments])
            words = result.stderr.strip() or result.stdout.strip()
        except StudyError as error:  # no answer in COMMAND_SECONDS
            result, words = None, str(error)
        if result is not None and result.returncode == 0:
            if self.refused_since is not None:
                self.tell(f"sbatch accepts jobs again after {now - self.refused_since:.0f} s")
            self.refused_since, self.backoff = None, 0.0
            return result.stdout.strip().split(";")[0]
        patience = self.scheduler.submit_patience
        if not any(refusal in words for refusal in PASSING_REFUSALS):
            raise StudyError(f"sbatch refused job {name}: {words}")
        if self.refused_since is None:
            self.refused_since = now
            self.tell(
                f"warning: sbatch refused job {name} for now: {words}; trying again with "
                f"backoff for up to {patience:g} s ([scheduler] submit_patience)"
            )
        elif now - self.refused_since > patience:
            raise StudyError(f"sbatch refused job {name} for {patience:g} s: {words}")
        first, longest = BACKOFF_SECONDS
        self.backoff = min(2 * self.backoff or first, longest)
        self.retry_at = now + self.backoff
        raise SchedulerBusy(f"sbatch refused job {name} for now: {words}", self.retry_at)

    def refresh(self, force: bool = False) -> None:
        """Ask the controller for the state of every job, at most every POLL_SECONDS."""
        now = time.monotonic()
        if now < self._next_poll and not force:
            return
        self._next_poll = now + POLL_SECONDS
        open_jobs = {job.job_id: job for job in self.jobs.values() if job.code is None}
        if not open_jobs:
            return
        # Only this study's open jobs (at most `at_once` and the server), one squeue call.
        listed = _run(
            [
                "squeue",
                "--noheader",
                "--states=all",
                "--format=%i %T %r",
                f"--jobs={','.join(open_jobs)}",
            ]
        )
        if listed.returncode != 0 and "Invalid job id" not in listed.stderr:
            return  # a controller that does not answer now: ask again at the next poll
        rows = [line.split(maxsplit=2) for line in listed.stdout.splitlines() if line.strip()]
        states = {row[0]: row[1] for row in rows if len(row) >= 2}
        reasons = {row[0]: row[2].strip() for row in rows if len(row) == 3}
        for job_id, job in open_jobs.items():
            state = states.get(job_id, "").rstrip("+")
            if state and state not in ENDED:
                job.observe(state, 0, 0, now, reasons.get(job_id, ""))
                continue
            final = _final_state(job_id)  # its exit code: once per job, when it ended
            if final is not None:
                job.observe(*final, now)
            elif state:
                job.observe(state, 0, 0, now)
            else:
                job.missing(now)

    def queued(self) -> list[QueuedJob]:
        """Every job not ended, as the controller last said (progress line, queue file)."""
        self.refresh()
        now = time.monotonic()
        return [
            QueuedJob(job.job_id, job.name, job.slurm_state, job.reason, now - job.submitted)
            for job in self.jobs.values()
            if job.code is None
        ]

    def write_queue(self) -> None:
        """The queue file `melissa-nb status` reads, at most once per poll of the controller."""
        if self._queue_written != self._next_poll:
            self._queue_written = self._next_poll
            write_queue(self.directory.parent, self.queued())

    def long_pending(self) -> list[tuple[SlurmJob, float]]:
        """Jobs still PENDING after `[scheduler] pending_warning` seconds and not told of
        yet, with their time in the queue (each job once)."""
        self.refresh()
        now, found = time.monotonic(), []
        for job in self.jobs.values():
            waited = now - job.submitted
            pending = job.code is None and job.slurm_state == "PENDING"
            if pending and not job.warned and waited > self.scheduler.pending_warning:
                job.warned = True
                found.append((job, waited))
        return found

    def close(self) -> list[str]:
        """Cancel every job of the study still queued or running, and wait (bounded) until the
        controller lists none of them; the ids still listed then (none, normally)."""
        (self.directory.parent / QUEUE_FILE).unlink(missing_ok=True)
        ids = [job.job_id for job in self.jobs.values()]
        if not ids:
            return []
        _run(["scancel", *ids])
        deadline = time.monotonic() + CLOSE_SECONDS
        while True:
            queued = _run(["squeue", "--noheader", "--format=%i", f"--jobs={','.join(ids)}"])
            left = queued.stdout.split() if queued.returncode == 0 else []
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(POLL_SECONDS)


def batch_script(tasks: Sequence[Task]) -> str:
    """A batch script starting every task at once and ending with the first failure's code."""
    lines = ["#!/bin/bash", "pids=()"]
    for task in tasks:
        exports = "".join(
            f"export {name}={shlex.quote(value)}; " for name, value in task.environment.items()
        )
        command = shlex.join(task.argv)
        lines.append(f"( {exports}exec {command} ) >>{shlex.quote(str(task.log_path))} 2>&1 &")
        lines.append("pids+=($!)")
    lines += [
        "status=0",
        'for pid in "${pids[@]}"; do',
        '    wait "$pid" || { code=$?; [ "$status" = 0 ] && status=$code; }',
        "done",
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"
