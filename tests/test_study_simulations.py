"""Child processes: stopping one stops everything it started, even in other sessions."""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from harness import wait_for

from melissa_nb.study.simulations import alive, descendants, start_process, stop_process

# A parent that ignores SIGTERM and starts a child in a session of its own (as mpiexec does
# with its proxies), which ignores SIGTERM too.
STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
print("started", flush=True)
time.sleep(60)
"""


def test_stop_kills_the_whole_family(tmp_path: Path) -> None:
    log = tmp_path / "stubborn.log"
    process = start_process([sys.executable, "-c", STUBBORN], tmp_path, log, {})
    wait_for(
        lambda: "started" in log.read_text() and descendants(process.pid),
        "the stubborn family to start",
        timeout=30,
    )
    family = descendants(process.pid)
    begun = time.monotonic()
    assert stop_process(process, grace=0.5) == -signal.SIGKILL
    assert time.monotonic() - begun < 5
    wait_for(lambda: not any(map(alive, family)), f"no survivor of {family}", timeout=5)


def test_stop_of_an_exited_child_returns_its_code(tmp_path: Path) -> None:
    process = start_process(
        [sys.executable, "-c", "raise SystemExit(7)"], tmp_path, tmp_path / "log", {}
    )
    process.wait(30)
    assert stop_process(process) == 7
