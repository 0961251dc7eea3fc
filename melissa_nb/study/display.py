"""What a person watching `melissa-nb run` sees while the study runs.

On a terminal: a progress bar with the count of samples done and the elapsed time, and under it
the status line (running, failed, retried, dropped, messages received, ...), wrapped to the
terminal's width, so that nothing is cut at 80 columns. Elsewhere (CI, `nohup`, a batch job's
output file): one plain line every PLAIN_SECONDS, and one at the end.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

PLAIN_SECONDS = 10.0


class _BarAndStatus(Progress):
    """A rich Progress whose status line sits under the bar, wrapped, not cut."""

    status = ""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.status:
            yield Text(self.status, overflow="fold")


class ProgressDisplay:
    """The study's progress, live on a terminal, periodic plain lines elsewhere."""

    def __init__(self, console: Console, total: int, enabled: bool) -> None:
        self.console = console
        self.total = total
        self.enabled = enabled
        self.live = console.is_terminal
        self.started = time.monotonic()
        self.next_plain = self.started + PLAIN_SECONDS
        self.bar = _BarAndStatus(
            TextColumn("[bold]simulations done"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            disable=not (enabled and self.live),
        )
        self.task = self.bar.add_task("simulations", total=total)

    def __enter__(self) -> ProgressDisplay:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.__exit__(None, None, None)

    def show(self, done: int, status: str, final: bool = False) -> None:
        """Simulations done (finished or dropped) and the status line."""
        if not self.enabled:
            return
        if self.live:
            self.bar.status = status
            self.bar.update(self.task, completed=done)
            return
        now = time.monotonic()
        if now >= self.next_plain or final:
            self.next_plain = now + PLAIN_SECONDS
            elapsed = time.strftime("%H:%M:%S", time.gmtime(now - self.started))
            self.console.print(
                f"{elapsed} simulations done {done}/{self.total} · {status}",
                markup=False,
                highlight=False,
            )
