"""Pieces every process-level test shares: where the executables are, bounded waiting, and an
embedded server fed over a real PUSH socket."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from melissa_nb import MelissaServer, ServerStatus, SimulationData
from melissa_nb.ports import free_port

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


def embedded(tmp_path: Path, **settings: Any) -> MelissaServer:
    """An embedded server on free ports writing into `tmp_path`, with its own study id."""
    return MelissaServer(
        connection_port=free_port(),
        data_port=0,
        output_dir=tmp_path,
        study_id=f"s{uuid.uuid4().hex[:8]}",
        **settings,
    )


def serve_until_finished(server: MelissaServer, frames: list[bytes]) -> list[SimulationData]:
    """Push every frame, then run the server until the study ends; what run() handed over."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(server.data_address)
    for frame in frames:
        push.send(frame)
    seen = []
    deadline = time.monotonic() + WAIT
    try:
        while (status := server.run(timeout=100)) is not ServerStatus.FINISHED:
            assert time.monotonic() < deadline, f"study not finished: {server.counts}"
            if isinstance(status, SimulationData):
                seen.append(status)
    finally:
        push.close()
        context.term()
    return seen
