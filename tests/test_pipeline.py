"""Pipelines: a server pushes to a consumer, which receives every message and every END.

The example (examples/pipeline/run.py) chains simulations into a two-rank `melissa-nb server
--forward-to` and a consumer process fitting an online linear regression, compared here with a
batch least-squares fit of the same fields. An embedded server forwards results of its own.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import zmq
from harness import announce
from test_auth import peer_socket, stranger_key

from melissa_nb import MelissaServer, ServerStatus
from melissa_nb.auth import connect_with, read_key_file
from melissa_nb.forward_protocol import RESULT, Forwarded
from melissa_nb.protocol import encode_data_frame
from melissa_nb.server.live.state import list_blocks
from melissa_nb.server.pipeline.forward import Consumer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WAIT = 60.0


def field_function():
    spec = importlib.util.spec_from_file_location(
        "pipeline_simulation", EXAMPLES / "melissa4py" / "simulation.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.field


@pytest.mark.timeout(150)
def test_two_rank_server_feeds_the_regression_consumer(tmp_path: Path) -> None:
    simulations, timesteps, cells = 6, 4, 10
    run = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "pipeline" / "run.py"),
            "--ranks",
            "2",
            "--simulations",
            str(simulations),
            "--timesteps",
            str(timesteps),
            "--cells",
            str(cells),
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=140,
    )
    logs = {path.name: path.read_text() for path in tmp_path.glob("*.log")}
    assert run.returncode == 0, (run.stdout, logs)
    table = np.loadtxt(tmp_path / "parameters.csv", delimiter=",", ndmin=2)
    field = field_function()
    design = np.hstack([np.ones((simulations, 1)), table[:, 1:]])
    for t, coefficients in enumerate(np.load(tmp_path / "coefficients.npy")):
        fields = np.array([field(int(row[0]), t, cells, row[1:]) for row in table])
        expected = np.linalg.lstsq(design, fields, rcond=None)[0]
        np.testing.assert_allclose(coefficients, expected, rtol=1e-8, atol=1e-10)
    forwarded = simulations * timesteps
    assert f"consumer: {2 * forwarded} messages from 2 rank(s)" in logs["consumer.log"]
    acknowledged = logs["server.log"].count(f"consumer acknowledged all {forwarded} forwarded")
    assert acknowledged == 2, logs["server.log"]
    description = json.loads((tmp_path / "results" / "server.json").read_text())
    assert list_blocks(description["shm_prefix"]) == []


@pytest.mark.timeout(60)
def test_embedded_server_forwards_its_own_results_and_waits_for_the_ack(tmp_path: Path) -> None:
    from melissa_nb.ports import free_port

    consumer = Consumer(key_file=tmp_path / "pipeline.key")
    key = read_key_file(tmp_path / "pipeline.key")
    results: list[Forwarded] = []
    failure: list[BaseException] = []

    def consume() -> None:
        try:
            results.extend(
                Forwarded(
                    m.kind,
                    m.rank,
                    m.ranks,
                    m.simulation_id,
                    m.client_rank,
                    m.timestep,
                    m.sequence,
                    m.name,
                    m.values.copy(),
                )
                for m in consumer.messages(timeout=WAIT)
            )
        except BaseException as error:
            failure.append(error)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    garbage = zmq.Context.instance().socket(zmq.PUSH)
    garbage.setsockopt(zmq.LINGER, 1000)
    connect_with(garbage, key)  # a holder of the key sending garbage
    garbage.connect(consumer.data_address)
    garbage.send(b"not a forward header")  # counted and dropped by the consumer
    strangers = []  # without the key (no CURVE, or a pair of their own): nothing gets in
    for stranger in (None, stranger_key()):
        for address in (consumer.data_address, consumer.ack_address):
            kind = zmq.PUSH if address == consumer.data_address else zmq.REQ
            socket = peer_socket(zmq.Context.instance(), kind, key, stranger)
            socket.connect(address)
            socket.send(b"not a forward header", zmq.NOBLOCK)
            strangers.append(socket)
    server = MelissaServer(
        sampling_size=3,
        timesteps=2,
        field_names=("u",),
        statistics=False,
        forward_to=consumer.data_address,
        forward_ack=consumer.ack_address,
        forward_key=consumer.key_file,
        forward_data=False,
        connection_port=free_port(),
        data_port=0,
        output_dir=tmp_path,
        study_id=f"p{uuid.uuid4().hex[:8]}",
    )
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(server.data_address)
    announce(server, range(3))
    for s in range(3):
        for t in range(2):
            push.send(bytes(encode_data_frame(t, s, 0, "u", np.full(5, 10.0 * s + t))))
    sums = np.zeros((2, 5))
    deadline = time.monotonic() + WAIT
    with server:
        while (status := server.run(timeout=100)) is not ServerStatus.FINISHED:
            assert time.monotonic() < deadline
            if status is not ServerStatus.TIMEOUT:
                sums[status.timestep] += status.data
                assert server.forward("sum", sums[status.timestep], timestep=status.timestep)
    push.close()
    garbage.close()
    thread.join(WAIT)
    consumer.close()
    for socket in strangers:
        socket.close()
    assert not failure, failure
    assert consumer.finished and consumer.rejected == 1  # the key holder's garbage only
    assert consumer.unauthenticated >= 2  # a foreign key on each of the two sockets
    assert [m.kind for m in results] == [RESULT] * 6
    assert [m.sequence for m in results] == list(range(6))
    last = {m.timestep: m.values[0] for m in results}  # the latest sum of each timestep
    for t in range(2):
        np.testing.assert_array_equal(last[t], np.full(5, sum(10.0 * s + t for s in range(3))))
    assert list_blocks(server.config.shm_prefix()) == []
