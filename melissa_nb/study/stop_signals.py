"""The runner's stop signals: SIGINT, SIGTERM and SIGHUP unwind to the cleanup, which must not be
cut short itself, and a process started in a held block is recorded before a signal acts."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from melissa_nb.errors import StudyInterrupted

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def stop_signals(handler: Callable[[int, FrameType | None], None] | int) -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP (the terminal closed) go to `handler` (or are ignored:
    signal.SIG_IGN) inside the block."""
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """A stop signal inside the block is held and acted on (StudyInterrupted) at its end: a
    process started in the block is recorded before the cleanup looks for it; interrupted
    between its start and its record, nobody would stop it."""
    held: list[int] = []
    with stop_signals(lambda signum, frame: held.append(signum)):
        yield
    if held:
        raise StudyInterrupted(held[0])


def interrupt(signum: int, frame: FrameType | None) -> None:
    """The study's SIGINT/SIGTERM/SIGHUP handler: unwind to the cleanup."""
    raise StudyInterrupted(signum)
