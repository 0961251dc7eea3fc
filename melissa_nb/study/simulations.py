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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

STOP_GRACE_SECONDS = 5.0


def start_process(
    argv: Sequence[str], cwd: Path, log_path: Path, environment: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Start `argv` in a new session, stdout and stderr appended to `log_path`."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **environment},
            start_new_session=True,
        )


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = STOP_GRACE_SECONDS
) -> int:
    """Stop a child and everything it started (`stop_group`); return its exit code."""
    stop_group(process.pid, sig, grace, running=lambda: process.poll() is None)
    return process.wait(grace)


def stop_group(
    leader: int,
    sig: int = signal.SIGTERM,
    grace: float = STOP_GRACE_SECONDS,
    running: Callable[[], bool] | None = None,
) -> None:
    """Stop the process group `leader` leads and every descendant of it.

    `sig` goes to the group; after up to `grace` s, SIGKILL goes to the group and to every
    descendant still alive: mpiexec's proxies and ranks run in sessions of their own, and a
    rank blocked in an MPI collective never runs its SIGTERM handler. `running()` says whether
    the leader still runs (default: it exists and is no zombie).
    """
    running = running or (lambda: alive(leader))
    family = descendants(leader) if running() else []
    if running():
        _signal_group(leader, sig)
        deadline = time.monotonic() + grace
        while (running() or any(map(alive, family))) and (time.monotonic() < deadline):
            time.sleep(0.02)
    _signal_group(leader, signal.SIGKILL)
    for pid in family:
        _kill(pid)


def start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot, Linux /proc): with the pid, it names one
    process, not a later one that reuses its number. None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc; an empty list elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            # "pid (command) state ppid ...": the command may hold spaces and parentheses.
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _signal_group(leader: int, sig: int) -> None:
    try:
        os.killpg(leader, sig)  # the child is a session leader: its pgid is its pid
    except ProcessLookupError:
        pass
