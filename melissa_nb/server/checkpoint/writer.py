"""When a rank checkpoints (every -c seconds, on SIGUSR1, on request) and the writer thread."""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from melissa_nb.server.checkpoint.files import checkpoint_path, write_atomically
from melissa_nb.server.checkpoint.snapshot import Snapshot
from melissa_nb.server.config import ServerConfig


class Checkpointer:
    """When to checkpoint (every -c seconds, on SIGUSR1, on request) and the writer thread."""

    def __init__(self, config: ServerConfig, rank: int, log: logging.Logger, now: float) -> None:
        self.directory = config.checkpoint_directory
        self.interval = config.check_interval
        self.rank = rank
        self.log = log
        self._next = now + self.interval
        self._thread: threading.Thread | None = None
        self._requested = False
        self.written = 0
        self.failures = 0
        self._previous_handler: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self._requested = True

    def request(self) -> None:
        """Checkpoint at the next turn of the loop (SIGUSR1, control `checkpoint`)."""
        self._requested = True

    def due(self, now: float) -> bool:
        """True when the interval has passed or SIGUSR1 asked for one (and none is in flight)."""
        if self.busy:
            return False
        return self._requested or now >= self._next

    @property
    def busy(self) -> bool:
        """True while a write is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, snapshot: Snapshot, now: float) -> None:
        """Write `snapshot` in the writer thread (the caller checked `due`)."""
        self.wait()
        self._requested = False
        self._next = now + self.interval
        self._thread = threading.Thread(
            target=self._write, args=(snapshot,), name=f"checkpoint-r{self.rank}", daemon=True
        )
        self._thread.start()

    def write_now(self, snapshot: Snapshot) -> Path | None:
        """Write `snapshot` and wait for it (signal, launcher gone): the last checkpoint.

        Returns where it went, or None if it failed (logged).
        """
        self.wait()
        return self._write(snapshot)

    def wait(self) -> None:
        """Wait for the write in flight, if any (before any other netCDF call of this rank)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(self, snapshot: Snapshot) -> Path | None:
        started = time.monotonic()
        try:
            path = write_atomically(self.directory, self.rank, snapshot)
        except Exception as error:  # a failed checkpoint must not end the study
            self.failures += 1
            kept = [
                p for p in (False, True) if checkpoint_path(self.directory, self.rank, p).exists()
            ]
            self.log.error(
                "checkpoint failed: %s: %s (%s)",
                type(error).__name__,
                error,
                "the previous one stays valid" if kept else "no earlier checkpoint exists",
            )
            return None
        self.written += 1
        self.log.info("checkpoint %s written in %.3f s", path, time.monotonic() - started)
        return path

    def close(self) -> None:
        """Wait for the write in flight and restore the SIGUSR1 handler."""
        self.wait()
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._previous_handler = None
