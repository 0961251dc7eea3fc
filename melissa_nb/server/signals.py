"""Signals a server process takes from its first instant, before its slow imports and the
compilation of its kernels: recorded here, acted on once the rank's loop runs.

Without this, SIGUSR1 (checkpoint) in the first seconds killed the process (its default action),
and SIGTERM there left no trace. This module imports nothing heavy.
"""

from __future__ import annotations

import signal
from types import FrameType

STOPPING = (signal.SIGTERM, signal.SIGINT)


class EarlySignals:
    """Catches SIGTERM, SIGINT and SIGUSR1 at once; `stops` lists the stopping signals received
    (the loop watches this same list), `checkpoint_requested` says whether SIGUSR1 came."""

    def __init__(self) -> None:
        self.stops: list[int] = []
        self.checkpoint_requested = False
        for signum in (*STOPPING, signal.SIGUSR1):
            signal.signal(signum, self._record)

    def _record(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGUSR1:
            self.checkpoint_requested = True
        else:
            self.stops.append(signum)
