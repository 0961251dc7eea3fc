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
    """Stop a child and everything it started; return its exit code.

    `sig` goes to the child's process group; after up to `grace` s, SIGKILL goes to the group
    and to every descendant still alive: mpiexec's proxies and ranks run in sessions of their
    own, and a rank blocked in an MPI collective never runs its SIGTERM handler.
    """
    family = descendants(process.pid) if process.poll() is None else []
    if process.poll() is None:
        _signal_group(process, sig)
        deadline = time.monotonic() + grace
        while (process.poll() is None or any(map(alive, family))) and (time.monotonic() < deadline):
            time.sleep(0.02)
    _signal_group(process, signal.SIGKILL)
    for pid in family:
        _kill(pid)
    return process.wait(grace)


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


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the child is a session leader: its pgid is its pid
    except ProcessLookupError:
        pass
