"""The progress of `melissa-nb run`: whole at 80 columns on a terminal, plain lines elsewhere."""

from __future__ import annotations

import io

from rich.console import Console

from melissa_nb.study.display import ProgressDisplay

STATUS = (
    "running 4 · failed 1 · retried 1 · dropped 0 · received 123,456 messages · "
    "sobol_first CI width 0.123 · sobol_total CI width 0.456"
)


def test_on_an_80_column_terminal_nothing_is_cut() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True, color_system=None)
    display = ProgressDisplay(console, total=224, enabled=True)
    display.show(37, STATUS)
    for renderable in display.bar.get_renderables():
        console.print(renderable)
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    text = " ".join(line.strip() for line in lines)
    assert "simulations done" in text and "37/224" in text
    for word in STATUS.split(" · "):
        assert word in text, word


def test_elsewhere_plain_lines_at_a_steady_pace_and_at_the_end() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    display = ProgressDisplay(console, total=10, enabled=True)
    with display:
        display.show(1, "running 2")
        display.show(2, "running 2")  # within PLAIN_SECONDS of the start: nothing
        display.next_plain = 0.0  # as if PLAIN_SECONDS had passed
        display.show(3, "running 1")
        display.show(10, "running 0", final=True)
    assert out.getvalue().splitlines() == [
        "00:00:00 simulations done 3/10 · running 1",
        "00:00:00 simulations done 10/10 · running 0",
    ]


def test_no_progress_prints_nothing() -> None:
    out = io.StringIO()
    display = ProgressDisplay(Console(file=out, force_terminal=False), total=3, enabled=False)
    with display:
        display.show(3, "running 0", final=True)
    assert out.getvalue() == ""
