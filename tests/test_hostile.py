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
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from harness import MELISSA, WAIT, wait_for
from test_server_e2e import (  # noqa: F401 (start_server is a fixture)
    RTOL,
    FakeLauncher,
    RawSender,
    frame,
    start_server,
)

from melissa_nb.netcdf import read_results
from melissa_nb.ports import free_port
from melissa_nb.protocol import Drop, Job
from melissa_nb.server.launcher.control import control_request, read_secret


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
        "-s",
        "2",
        "-t",
        "1",
        "-f",
        "u",
        "-o",
        "mean",
        wrapper=("prlimit", f"--nofile=256:{hard_limit}"),
    )
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
    reply = control_request(address, "status", read_secret(server.output))
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


@pytest.mark.parametrize("option", ["--output-dir", "--checkpoint-dir"])
def test_a_directory_the_server_cannot_write_stops_it_at_start(tmp_path, option) -> None:
    """A checkpoint directory under a regular file used to fail at each checkpoint, and the
    log claimed a checkpoint on SIGTERM; an output directory there gave a traceback."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    completed = subprocess.run(
        [
            str(MELISSA),
            "server",
            "-s",
            "1",
            "-t",
            "1",
            "-f",
            "u",
            "--connection-port",
            str(free_port()),
            "--data_port",
            "0",
            "--output-dir",
            str(tmp_path / "out"),
            option,
            str(blocker / "below"),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert completed.returncode == 2, completed.stderr
    assert f"{option} {blocker / 'below'}: cannot write there (Not a directory)" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_results_go_elsewhere_when_the_output_directory_is_gone(start_server, tmp_path, rng):  # noqa: F811
    elsewhere = tmp_path / "kept"
    server = start_server(
        "-s", "2", "-t", "1", "-f", "u", "-o", "mean", "--checkpoint-dir", str(elsewhere)
    )
    values = rng.normal(size=(2, 4))
    sender = RawSender(server.endpoint)
    try:
        sender.handshake(0)
        sender.send(frame("u", 0, 0, values[0]))
        wait_for(lambda: control_status(server).get("accepted") == 1, "the first message")
        server.output.rename(tmp_path / "moved")  # the output directory is gone, a file is there
        server.output.write_text("not a directory")
        sender.handshake(1)
        sender.send(frame("u", 1, 0, values[1]))
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    assert f"the results go to {elsewhere} instead" in server.text()
    results = read_results(elsewhere / "u.nc")
    np.testing.assert_allclose(results.variables["mean"][0], values.mean(axis=0), rtol=RTOL)


def test_a_study_whose_simulations_all_went_silent_ends_with_an_error(start_server) -> None:  # noqa: F811
    """No launcher, every simulation dropped before any data: the server used to wait forever.
    A message above --max-cells is closed by ZeroMQ unseen; the drop now says so."""
    server = start_server("-s", "2", "-t", "1", "-f", "u", "-w", "1", "--max-cells", "4")
    sender = RawSender(server.endpoint)
    try:
        sender.handshake(0)
        sender.handshake(1)
        sender.send(frame("u", 0, 0, np.ones(10)))  # 10 cells: ZeroMQ closes the connection
        assert server.wait() == 1, server.text()
    finally:
        sender.close()
    text = server.text()
    assert "every simulation was dropped before its data reached every rank: no results" in text
    assert "data connection(s) closed so far" in text and "--max-cells 4" in text, text
    assert "1 data connection(s) closed" in text or "2 data connection(s) closed" in text, text
    assert not list(server.output.glob("*.nc"))


def test_job_and_drop_messages_outside_the_study_are_refused(start_server, rng) -> None:  # noqa: F811
    """50k JOBs for unknown ids and 1 MiB job ids used to be kept without bound."""
    launcher = FakeLauncher(parameters=0)
    values = rng.normal(size=(1, 3))
    try:
        server = start_server("-s", "1", "-t", "1", "-f", "u", "-o", "mean", *launcher.options())
        launcher.pump(lambda: launcher.requests, "the options request")
        for simulation in range(1, 51):
            launcher.publish(Job(simulation, f"job{simulation}", ()))
        launcher.publish(Job(0, "x" * 300, ()))
        launcher.publish(Drop(7, "job7"))
        sender = RawSender(server.endpoint)
        try:
            launcher.pump(lambda: "DROP for simulation 7" in server.text(), "the refused DROP")
            sender.handshake(0)
            sender.send(frame("u", 0, 0, values[0]))
            launcher.pump(lambda: server.process.poll() is not None, "the end of the study")
        finally:
            sender.close()
    finally:
        launcher.close()
    assert server.wait() == 0, server.text()
    reasons = read_results(server.output / "u.nc").attributes["rejected_reasons"]
    assert reasons == "bad_string=1,drop_out_of_range=1,simu_id_out_of_range=50", reasons


def test_status_shows_the_data_connections_and_the_open_files_limit(start_server) -> None:  # noqa: F811
    server = start_server("-s", "1", "-t", "1", "-f", "u", "-o", "mean")
    sender = RawSender(server.endpoint)
    try:
        sender.handshake(0)
        wait_for(lambda: control_status(server).get("connections") == 1, "one data connection")
        assert control_status(server)["open_files_limit"] > 0
    finally:
        sender.close()
    wait_for(lambda: control_status(server).get("disconnections") == 1, "its disconnection")
    server.process.send_signal(signal.SIGTERM)
    assert server.wait() == 128 + signal.SIGTERM


@pytest.mark.parametrize("ranks", [1, 2])
def test_plausible_messages_before_the_study_change_nothing(start_server, rng, ranks) -> None:  # noqa: F811
    """Data is taken only from simulations whose handshake rank 0 answered, and a handshake
    alone fixes no layout. Each of these used to ruin the study that followed: a frame of
    client rank 5 (the study has 1: never ended), a frame of another size for client rank 0
    (every real frame refused, a 'complete' 49-cell result), a handshake announcing 2 client
    ranks (every real client got an empty reply); and a handshake of 2**31 - 1 ranks was taken.
    A frame of client rank 5 from an announced simulation is discarded once the study's first
    data tells that its simulations have 1 rank."""
    server = start_server("-s", "4", "-t", "3", "-f", "u", "-o", "mean:min", ranks=ranks)
    values = rng.normal(size=(4, 3, 8))
    stray = RawSender(server.endpoint)
    sender = RawSender(server.endpoint)
    try:
        stray.handshake(3)  # gets the port table; its simulation runs for real later
        for rank in range(ranks):
            stray.send(frame("u", 2, 0, np.ones(3), client_rank=5), rank)
            stray.send(frame("u", 1, 0, np.ones(49)), rank)
        wait_for(
            lambda: rejected_everywhere(server, ranks) == 2 * ranks, "the stray frames refused"
        )
        for size in (2, 2**31 - 1):
            answer = multipart_request(server.endpoint, [struct.pack("<ii", size, 0)])
            assert (answer == [b""]) == (size > 2), (size, answer)
        for rank in range(ranks):  # simulation 3 is announced now: this reaches the state
            stray.send(frame("u", 3, 2, np.ones(3), client_rank=5), rank)
        for simulation in range(4):
            sender.handshake(simulation)
            for t in range(3):
                for rank, piece in enumerate(np.split(values[simulation, t], ranks)):
                    sender.send(frame("u", simulation, t, piece), rank)
        assert server.wait() == 0, server.text()
    finally:
        stray.close()
        sender.close()
    server.assert_clean_exit()
    results = read_results(server.output / "u.nc")
    assert results.dimensions["cell"] == 8
    assert results.attributes["study_complete"] == 1
    reasons = results.attributes["rejected_reasons"]
    assert f"no_handshake={2 * ranks}" in reasons and "client_rank_out_of_range" in reasons
    np.testing.assert_allclose(results.variables["mean"], values.mean(axis=0), rtol=RTOL)
    np.testing.assert_array_equal(results.variables["min"], values.min(axis=0))


def rejected_everywhere(server, ranks: int) -> int:
    """Messages refused so far by every rank (the control endpoint reads them all)."""
    address = json.loads((server.output / "server.json").read_text())["control_address"]
    counters = control_request(address, "status", read_secret(server.output))["ranks"]
    return sum(counters.get(str(rank), {}).get("rejected", 0) for rank in range(ranks))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a file owned by another user")
def test_a_shared_memory_name_taken_by_another_user_is_named(tmp_path) -> None:
    """Block names follow from the study id, which follows from the output path and port:
    another local user can create one first. The server says whose it is and what to do."""
    study_id = "squatted"
    squatter = Path("/dev/shm") / f"melissa_nb_{study_id}_r0_progress"
    squatter.write_bytes(b"")
    os.chown(squatter, 65534, 65534)
    try:
        completed = subprocess.run(
            [
                str(MELISSA),
                "server",
                "-s",
                "1",
                "-t",
                "1",
                "-f",
                "u",
                "--connection-port",
                str(free_port()),
                "--data_port",
                "0",
                "--output-dir",
                str(tmp_path / "out"),
                "--study-id",
                study_id,
            ],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
    finally:
        squatter.unlink()
    assert completed.returncode == 2, completed.stderr
    assert "already exists, created by user id 65534" in completed.stderr
    assert "choose another --study-id" in completed.stderr


def test_idle_connections_beyond_the_soft_limit_leave_new_clients_served(start_server) -> None:  # noqa: F811
    """1,094 idle connections at a 1,024 limit pinned a core in ZeroMQ and made new clients wait
    ~30 s: the server now raises its soft limit at start (here 256 -> 1,024 for 300 peers)."""
    server = start_server(
        "-s", "1", "-t", "1", "-f", "u", "-o", "mean", wrapper=("prlimit", "--nofile=256:1024")
    )
    sender = RawSender(server.endpoint)
    context = zmq.Context()
    idle = []
    try:
        address = sender.handshake(0).data_addresses[0]
        for _ in range(300):
            push = context.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(address)
            idle.append(push)
        wait_for(lambda: control_status(server).get("connections") == 301, "301 connections")
        started = time.monotonic()
        sender.handshake(0)
        assert time.monotonic() - started < 10.0  # it was ~30 s
    finally:
        for push in idle:
            push.close()
        context.term()
        sender.close()
    server.process.send_signal(signal.SIGTERM)
    assert server.wait() == 128 + signal.SIGTERM
