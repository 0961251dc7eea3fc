"""Where a study's programs run, behind one small interface the runner drives.

A `Task` is one program (command line, environment additions, log file); a job runs one or
more tasks at once and ends when they all have. `LocalJobs` starts each task as a child process
of the runner (`study/simulations.py`); `SlurmJobs` (`study/slurm.py`) submits each job with
sbatch, so a Sobol group's members run in one allocation and are never half-scheduled. A program
of several MPI ranks (a simulation with `[simulation] ranks`, the server with `[server] ranks`)
runs under the scheduler's own launcher, `parallel(argv, ranks, cpus)`: mpiexec here, srun
job steps on Slurm (so that one allocation's members and ranks may span nodes).

Every job answers `poll()` (None while pending or running, else an exit code, non-zero for any
failure), `running_seconds` (0 while pending: a job waiting in a queue has not used its attempt's
time), `state` (PENDING, RUNNING, or how it ended) and `stop()`.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from melissa_nb.errors import StudyError
from melissa_nb.study.simulations import STOP_GRACE_SECONDS, start_process, stop_process
from melissa_nb.study.watchdog import Watchdog


def executable(name: str) -> str:
    """`name` from the interpreter's own bin directory, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise StudyError(f"cannot find {name!r} next to {sys.executable} or on PATH")
    return found


@dataclass(frozen=True)
class Task:
    """One program of a job: its command line, what it adds to the environment, its log."""

    argv: tuple[str, ...]
    log_path: Path
    environment: Mapping[str, str] = field(default_factory=dict)


class SubmittedJob(Protocol):
    """A submitted job (see the module docstring)."""

    label: str  # how the user finds it: "pid 1234", "job 5678"

    @property
    def state(self) -> str: ...

    @property
    def running_seconds(self) -> float: ...

    def poll(self) -> int | None: ...

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None: ...


class Jobs(Protocol):
    """Starts jobs and cleans up after them."""

    groups_in_one_job: bool  # True: a Sobol group's members are the tasks of one job

    def parallel(self, argv: Sequence[str], ranks: int, cpus: int) -> tuple[str, ...]:
        """`argv` as `ranks` processes of `cpus` CPUs each, under this scheduler's launcher."""
        ...

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
    ) -> SubmittedJob: ...

    def close(self) -> list[str]: ...


@dataclass
class Attempt:
    """One attempt at one simulation: its job (on a cluster, shared by the members of a Sobol
    group) and its log."""

    number: int
    job: SubmittedJob
    log_path: Path

    @property
    def elapsed(self) -> float:
        """Seconds the attempt has run (not counting time spent waiting in a queue)."""
        return self.job.running_seconds

    def poll(self) -> int | None:
        """The exit code of its job, or None while it waits or runs."""
        return self.job.poll()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop its job."""
        self.job.stop(grace)


class LocalJob:
    """One child process and everything it starts, in a process group of its own; the
    watchdog stops it if the runner dies first."""

    def __init__(self, task: Task, cwd: Path, watchdog: Watchdog) -> None:
        self.process = start_process(task.argv, cwd, task.log_path, task.environment)
        self.watchdog = watchdog
        watchdog.watch(self.process.pid)
        self.watched = True
        self.label = f"pid {self.process.pid}"
        self.started = time.monotonic()

    @property
    def state(self) -> str:
        """RUNNING, or ENDED once the process exited."""
        return "RUNNING" if self.process.poll() is None else "ENDED"

    @property
    def running_seconds(self) -> float:
        """Seconds since the process started."""
        return time.monotonic() - self.started

    def poll(self) -> int | None:
        """The exit code, or None while it runs."""
        code = self.process.poll()
        if code is not None:
            self._ended()
        return code

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Terminate the process group (SIGKILL after `grace` s)."""
        stop_process(self.process, grace=grace)
        self._ended()

    def _ended(self) -> None:
        if self.watched:
            self.watched = False
            self.watchdog.forget(self.process.pid)


class LocalJobs:
    """Every job a child process of the runner, on this machine (the default)."""

    groups_in_one_job = False

    def __init__(self) -> None:
        self.watchdog: Watchdog | None = None  # started with the first job

    def parallel(self, argv: Sequence[str], ranks: int, cpus: int) -> tuple[str, ...]:
        """`mpiexec -n ranks argv` (the one next to the interpreter: the mpich wheel's) for
        several ranks, `argv` itself for one; `cpus` is not enforced here."""
        if ranks == 1:
            return tuple(argv)
        return (executable("mpiexec"), "-n", str(ranks), *argv)

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
    ) -> LocalJob:
        """Start the one task of a local job (its ranks are mpiexec's, in its command line;
        `cpus`, `time_limit` and `nodes` mean nothing on one machine)."""
        (task,) = tasks
        if self.watchdog is None:
            self.watchdog = Watchdog()
        return LocalJob(task, cwd, self.watchdog)

    def close(self) -> list[str]:
        """The runner stopped its children itself: the watchdog ends with nothing to do."""
        if self.watchdog is not None:
            self.watchdog.close()
            self.watchdog = None
        return []
