"""Pieces every process-level test shares: where the executables are, bounded waiting, and an
embedded server fed over a real PUSH socket."""

from __future__ import annotations

import struct
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import zmq

from melissa_nb import MelissaServer, ServerStatus, SimulationData
from melissa_nb.ports import free_port
from melissa_nb.protocol import DATA_HEADER_SIZE, ConnectionReply, ConnectionRequest

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


def announce(server: MelissaServer, simu_ids: Iterable[int]) -> None:
    """Do the connection handshake of each simulation, as its client would before sending
    (the server takes no data from a simulation it has not answered). The embedded server
    answers while it runs, so the requests go out together and it runs until all are answered.
    """
    context = zmq.Context()
    requests = []
    try:
        for simu_id in sorted(set(simu_ids)):
            request = context.socket(zmq.REQ)
            request.setsockopt(zmq.LINGER, 0)
            request.connect(server.connection_address)
            request.send(ConnectionRequest(1, simu_id).encode())
            requests.append(request)
        deadline = time.monotonic() + WAIT
        for request in requests:
            while not request.poll(0):
                assert time.monotonic() < deadline, "no connection reply"
                assert server.run(timeout=10) is ServerStatus.TIMEOUT
            assert ConnectionReply.decode(request.recv(), entry_width=None).data_addresses
    finally:
        for request in requests:
            request.close()
        context.term()


def senders_of(server: MelissaServer, frames: Iterable[bytes]) -> set[int]:
    """The simulation ids whose handshakes the data frames need: a frame of a whole Sobol group
    carries the group id, and its member 0 (id group x (p + 2)) connects for it."""
    ids = set()
    for frame in frames:
        _, simu_id, _, vect_size = struct.unpack_from("<4i", frame)
        whole_group = (len(frame) - DATA_HEADER_SIZE) // 8 > vect_size
        ids.add(simu_id * server.config.group_size if whole_group else simu_id)
    return ids


def serve_until_finished(server: MelissaServer, frames: list[bytes]) -> list[SimulationData]:
    """Announce the frames' simulations, push every frame, then run the server until the study
    ends; what run() handed over."""
    announce(server, senders_of(server, frames))
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
