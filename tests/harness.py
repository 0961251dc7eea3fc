"""Pieces every process-level test shares: where the executables are, and bounded waiting."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent
MPIEXEC = BIN / "mpiexec"
MELISSA = BIN / "melissa-nb"
WAIT = 60.0  # seconds any single process or condition may take before the test fails


def wait_for(condition: Callable[[], object], what: str, timeout: float = WAIT) -> object:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
