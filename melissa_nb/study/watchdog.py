"""The runner's watchdog: the children of a runner that dies (SIGKILL, a lost login node) are
stopped all the same.

The runner's own cleanup stops its children on every exit it lives through (a `finally` path,
signals held around each start). A SIGKILL leaves no such chance, and its simulations (each in
a session of its own) would run on with no server to send to. So a local study starts this
small process first, in its own session, with a pipe on its standard input: the runner writes
`+PID START` for each child it starts and `-PID` for each that ended. When the pipe closes
(the runner exited, whatever the way), every child still listed whose start time still matches
(the pid was not reused) is stopped with its process group and descendants, SIGTERM then
SIGKILL. After a normal end the list is empty and the watchdog just exits.

Run as `python -m melissa_nb.study.watchdog`; it imports only the standard library.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from typing import IO

from melissa_nb.study.simulations import STOP_GRACE_SECONDS, start_time, stop_group

CLOSE_SECONDS = 30.0  # bound on the watchdog's own exit once the runner closes the pipe


class Watchdog:
    """The runner's end of the pipe to its watchdog process."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "melissa_nb.study.watchdog"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _say(self, line: str) -> None:
        pipe = self.process.stdin
        assert pipe is not None
        try:
            pipe.write(f"{line}\n".encode())
            pipe.flush()
        except (BrokenPipeError, ValueError):  # the watchdog is gone, or closed already
            pass

    def watch(self, pid: int) -> None:
        """A child started: stop it if the runner dies before it ends."""
        started = start_time(pid)
        if started is not None:
            self._say(f"+{pid} {started}")

    def forget(self, pid: int) -> None:
        """A child ended (or was stopped by the runner)."""
        self._say(f"-{pid}")

    def close(self) -> None:
        """The runner ends: the watchdog stops what is still listed (nothing, normally)."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def read_children(pipe: IO[str]) -> dict[int, str]:
    """Every child announced and not forgotten when `pipe` closes: pid -> its start time."""
    children: dict[int, str] = {}
    for line in pipe:
        words = line.split()
        if len(words) == 2 and words[0].startswith("+") and words[0][1:].isdigit():
            children[int(words[0][1:])] = words[1]
        elif len(words) == 1 and words[0].startswith("-") and words[0][1:].isdigit():
            children.pop(int(words[0][1:]), None)
    return children


def main() -> None:
    """Wait for the runner's pipe to close, then stop its children that still run."""
    for sig in (signal.SIGINT, signal.SIGHUP):  # a terminal's Ctrl-C or hang-up is the runner's
        signal.signal(sig, signal.SIG_IGN)
    children = read_children(sys.stdin)
    stoppers = [
        threading.Thread(target=stop_group, args=(pid, signal.SIGTERM, STOP_GRACE_SECONDS))
        for pid, started in children.items()
        if start_time(pid) == started
    ]
    for stopper in stoppers:
        stopper.start()
    for stopper in stoppers:
        stopper.join()


if __name__ == "__main__":
    main()
