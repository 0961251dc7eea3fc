"""Hostile and clumsy input against a real server: each test reproduces one way a single message
or a clumsy setting used to crash, hang or silently corrupt a study (issue 16), and checks that
the server now refuses it, counts it, keeps serving and still ends the study with exact numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
from pathlib import Path

import numpy as np
import pytest
import zmq
from harness import WAIT, wait_for
from test_server_e2e import RTOL, RawSender, frame, start_server  # noqa: F401 (a fixture)

from melissa_nb.server.control import control_request
from melissa_nb.server.output import read_results


def multipart_request(address: str, parts: list[bytes]) -> list[bytes]:
    """Send a request of several parts on a REQ socket; the reply's parts (fails on silence)."""
    context = zmq.Context()
    request = context.socket(zmq.REQ)
    request.setsockopt(zmq.LINGER, 0)
    try:
        request.connect(address)
        request.send_multipart(parts)
        assert request.poll(int(WAIT * 1000)), f"no reply from {address}"
        return request.recv_multipart()
    finally:
        request.close()
        context.term()


def test_multipart_requests_are_refused_and_the_server_keeps_serving(start_server, rng) -> None:  # noqa: F811
    server = start_server("-s", "2", "-t", "1", "-f", "u", "-o", "mean")
    description = server.output / "server.json"
    wait_for(description.exists, "server.json")
    control = json.loads(description.read_text())["control_address"]
    assert multipart_request(server.endpoint, [struct.pack("<ii", 1, 0), b"x"]) == [b""]
    refused = json.loads(multipart_request(control, [b"status", b"x"])[0])
    assert refused["ok"] is False and "multipart_request" in refused["error"]
    values = rng.normal(size=(2, 4))
    sender = RawSender(server.endpoint)
    try:
        for simulation in range(2):
            sender.handshake(simulation)
            sender.send(frame("u", simulation, 0, values[simulation]))
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    server.assert_clean_exit()
    results = read_results(server.output / "u.nc")
    assert "multipart_request=2" in results.attributes["rejected_reasons"]
    np.testing.assert_allclose(results.variables["mean"][0], values.mean(axis=0), rtol=RTOL)


@pytest.mark.parametrize("hard_limit", [256, 1024])
def test_a_frame_per_new_client_rank_cannot_take_every_descriptor(
    start_server,  # noqa: F811
    hard_limit: int,
) -> None:
    """Each client rank's slice is a shared-memory block holding a descriptor. With a 1,024 limit
    the server died at ~497 such frames; now it raises its soft limit to the hard one, and where
    that is not enough it refuses new slices while descriptors are left for its sockets, the
    status and the checkpoint. (A 256 limit here keeps the checkpoint of every slice short.)"""
    frames = 400
    server = start_server(
        "-s", "2", "-t", "1", "-f", "u", "-o", "mean",
        wrapper=("prlimit", f"--nofile=256:{hard_limit}"),
    )  # fmt: skip
    sender = RawSender(server.endpoint)
    try:
        sender.handshake(0, comm_size=frames)
        for client_rank in range(frames):
            sender.send(frame("u", 0, 0, np.ones(1), client_rank))

        def all_handled():
            counts = control_status(server)
            return (
                counts if counts.get("accepted", 0) + counts.get("rejected", 0) == frames else None
            )

        counts = wait_for(all_handled, f"{frames} frames handled")
    finally:
        sender.close()
    if hard_limit > 256:
        assert counts["accepted"] == frames
    else:
        assert 100 < counts["accepted"] < frames and "file descriptors in use" in server.text()
    assert f"open files: limit {hard_limit} (soft limit was 256)" in server.text()
    server.process.send_signal(signal.SIGTERM)
    assert server.wait() == 128 + signal.SIGTERM, server.text()
    assert "stopped by signal 15: checkpoint written" in server.text()
    assert (server.output / "checkpoint" / "checkpoint.r0.nc").exists()
    server.assert_clean_exit()


def control_status(server) -> dict:
    """Rank 0's counters, from the control endpoint."""
    address = json.loads((server.output / "server.json").read_text())["control_address"]
    reply = control_request(address, "status")
    assert reply["ok"], reply
    return reply["ranks"].get("0", {})


SMALL_SHM = (
    "unshare",
    "--mount",
    "sh",
    "-c",
    'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"',
    "sh",
)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs root and unshare(1) to give the server a 64 MiB /dev/shm of its own",
)
def test_state_larger_than_dev_shm_is_refused_with_the_fix(start_server, rng) -> None:  # noqa: F811
    """A /dev/shm smaller than a slice's state (Docker's default is 64 MiB) used to kill the
    server with SIGBUS on first touch. The slice is refused with its size, the free space and
    the fix; the refused frame fixes nothing, so the real (smaller) data of the same slice is
    accepted and the study ends exact."""
    server = start_server(
        "-s", "2", "-t", "10", "-f", "u", "-o", "mean:variance", wrapper=SMALL_SHM
    )
    values = rng.normal(size=(2, 10, 3))
    sender = RawSender(server.endpoint)
    try:
        sender.handshake(0)
        sender.send(frame("u", 0, 0, np.ones(1_000_000)))  # 10 x 1e6 x 3 doubles: 229 MiB
        wait_for(lambda: "no_shared_memory" in server.text(), "the refusal in the log")
        sender.handshake(1)
        for simulation in range(2):
            for t in range(10):
                sender.send(frame("u", simulation, t, values[simulation, t]))
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    text = server.text()
    server.assert_clean_exit()
    assert "needs 228.9 MiB" in text and "MiB free" in text and "--shm-size" in text, text
    results = read_results(server.output / "u.nc")
    assert results.attributes["rejected_reasons"] == "no_shared_memory=1"
    np.testing.assert_allclose(results.variables["mean"], values.mean(axis=0), rtol=RTOL)
    np.testing.assert_allclose(results.variables["variance"], values.var(axis=0, ddof=1), rtol=RTOL)


def caught_signals(pid: int) -> int:
    """The mask of signals a process has handlers for (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return int(line.split()[1], 16)
    return 0


def test_sigusr1_during_start_up_is_a_checkpoint_request_not_a_death(start_server) -> None:  # noqa: F811
    """SIGUSR1 before the kernels were compiled used to kill the server (its default action)."""
    server = start_server("-s", "2", "-t", "1", "-f", "u", "-o", "mean")
    pid = server.process.pid
    wait_for(lambda: caught_signals(pid) & (1 << (signal.SIGUSR1 - 1)), "a SIGUSR1 handler")
    libraries = Path(f"/proc/{pid}/maps").read_text()
    assert "zmq" not in libraries and "numba" not in libraries  # before the slow imports
    server.process.send_signal(signal.SIGUSR1)
    wait_for(lambda: "ready" in server.text(), "the server to start")
    checkpoint = server.output / "checkpoint" / "checkpoint.r0.nc"
    wait_for(checkpoint.exists, "the checkpoint SIGUSR1 asked for")
    assert server.process.poll() is None, server.text()
    server.process.send_signal(signal.SIGTERM)
    assert server.wait() == 128 + signal.SIGTERM, server.text()
    server.assert_clean_exit()
