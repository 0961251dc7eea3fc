"""What a rank reports about itself: counters in a small shared-memory block, rejection logs.

The progress block (`melissa_nb_<study>_r<rank>_progress`) holds named int64 counters and the
wall-clock time of their last refresh, so `melissa-nb status` can show every rank's progress.
Besides the totals it holds gauges refreshed at each publication: resident memory, the frames
handled in the last poll (256 means a backlog was waiting: ZeroMQ does not expose its queue
length) and message and byte rates over the last `RATE_WINDOW` seconds.
Rejected messages are counted per reason and logged at most once per reason per interval, never
once per message (a misbehaving peer must not flood the log).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque

import numpy as np

from melissa_nb.server.live.state import StateBlock, progress_block_name

COUNTERS = (
    "messages",
    "accepted",
    "duplicates",
    "rejected",
    "running",
    "finished",
    "dropped",
    "slices",
    "state_bytes",
    "member_buffer_bytes",
    "bytes",
    "kernel_ns",
    "kernel_passes",
    "stage_ns",
    "stage_errors",
    "forwarded",
    "last_burst",
    "rss_bytes",
    "message_rate",
    "byte_rate",
    "connections",
    "disconnections",
    "open_files_limit",
)
LOG_INTERVAL = 10.0  # seconds between two log lines about the same rejection reason
RATE_WINDOW = 5.0  # seconds the published rates average over


class LogThrottle:
    """Counts events per key and lets a key be logged at most once per `interval` seconds."""

    def __init__(self, interval: float = LOG_INTERVAL) -> None:
        self.interval = interval
        self._unlogged: Counter[str] = Counter()
        self._last_logged: dict[str, float] = {}

    def count(self, key: str, now: float) -> int:
        """Count one event of `key` at time `now`.

        Returns the events of `key` since its last log line when a line is due now (the caller
        logs them in one line), else 0.
        """
        self._unlogged[key] += 1
        if now - self._last_logged.get(key, -np.inf) < self.interval:
            return 0
        self._last_logged[key] = now
        return self._unlogged.pop(key)


def resident_bytes() -> int:
    """Resident memory of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Progress:
    """Counters of one rank, mirrored into its progress block by `publish`."""

    def __init__(self, study_id: str, rank: int, log: logging.Logger) -> None:
        self.log = log
        self.counts: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.rejections: Counter[str] = Counter()
        self._throttle = LogThrottle()
        self.block = StateBlock.create(
            progress_block_name(study_id, rank),
            {"counters": ((len(COUNTERS),), np.int64), "times": ((2,), np.float64)},
            {
                "study_id": study_id,
                "rank": rank,
                "counters": list(COUNTERS),
                "times": ["started_at", "updated_at"],
            },
        )
        self.block.arrays["times"][0] = time.time()
        self._history: deque[tuple[float, int, int]] = deque()

    def reject(self, reason: str, detail: str, now: float) -> None:
        """Count one rejected message; log the reason if it was not logged recently."""
        self.counts["rejected"] += 1
        self.rejections[reason] += 1
        unlogged = self._throttle.count(reason, now)
        if unlogged:
            self.log.warning(
                "rejected %d message(s): %s (total %d; latest: %s)",
                unlogged,
                reason,
                self.rejections[reason],
                detail,
            )

    def publish(self, **current: int) -> None:
        """Refresh the shared counters (`current` overrides gauges such as running)."""
        self.counts.update(current)
        now = time.monotonic()
        history = self._history
        history.append((now, self.counts["messages"], self.counts["bytes"]))
        while len(history) > 2 and now - history[1][0] >= RATE_WINDOW:
            history.popleft()
        elapsed = now - history[0][0]
        if elapsed > 0:
            self.counts["message_rate"] = round((history[-1][1] - history[0][1]) / elapsed)
            self.counts["byte_rate"] = round((history[-1][2] - history[0][2]) / elapsed)
        self.counts["rss_bytes"] = resident_bytes()
        self.block.arrays["counters"][:] = [self.counts[name] for name in COUNTERS]
        self.block.arrays["times"][1] = time.time()

    def release(self) -> None:
        """Remove the progress block."""
        self.block.release()
