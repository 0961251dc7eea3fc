"""Child processes of a study (simulations and the server), each in its own process group.

A child gets its own session, so a Ctrl-C in the terminal reaches only the runner, which then
stops children in order; and stopping a child signals its whole group, so nothing it started
(mpiexec's ranks, a simulation's helpers) outlives it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from melissa_nb.study.sampling import SimulationSpec

STOP_GRACE_SECONDS = 5.0


def start_process(argv: Sequence[str], cwd: Path, log_path: Path,
                  environment: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session, stdout and stderr appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(list(argv), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **environment},
                                start_new_session=True)


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 grace: float = STOP_GRACE_SECONDS) -> int:
    """Signal the process group, wait up to `grace` s, then SIGKILL it; return the exit code."""
    if process.poll() is None:
        _signal_group(process, sig)
        try:
            return process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # The leader may be gone while members of its group live on: kill the group regardless.
    _signal_group(process, signal.SIGKILL)
    return process.wait(grace)


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the child is a session leader: its pgid is its pid
    except ProcessLookupError:
        pass


class SimulationRun:
    """One attempt at one simulation: the process, when it started, where its output goes."""

    def __init__(self, spec: SimulationSpec, attempt: int, argv: Sequence[str], cwd: Path,
                 log_dir: Path, environment: Mapping[str, str]) -> None:
        self.spec = spec
        self.attempt = attempt
        self.log_path = log_dir / f"simulation_{spec.simulation_id}.log"
        with open(self.log_path, "ab") as log:
            log.write(f"--- attempt {attempt}: {' '.join(argv)}\n".encode())
        self.started = time.monotonic()
        self.process = start_process(argv, cwd, self.log_path, environment)

    @property
    def elapsed(self) -> float:
        """Seconds since the attempt started."""
        return time.monotonic() - self.started

    def poll(self) -> int | None:
        """The exit code, or None while running."""
        return self.process.poll()

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Terminate the attempt's process group (SIGKILL after `grace` s)."""
        stop_process(self.process, grace=grace)

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the simulation's output, for error reports."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
