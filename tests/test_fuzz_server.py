"""Hostile input: random and mutated messages on every socket of a live server, then a study.

A seeded mutator (deterministic, bounded: about 12,000 messages in a few seconds) sends
- 10,000 frames to the data PULL socket: mutations of valid frames (bytes replaced, flipped,
  inserted or cut, header fields overwritten, frames truncated or extended) and random bytes;
- 1,000 requests to the connection REP socket (each must get a reply, an empty one if refused;
  those beyond its ZMQ_MAXMSGSIZE go through a throwaway socket, since ZeroMQ drops them);
- 1,000 messages published on the launcher's PUB socket (the server's SUB side);
- a mutated or random reply to every request of the server's REQ socket.

Every valid (field, group, timestep) except one has arrived before the fuzzing starts, and the
fuzz frames are built from frames of field `u` while the missing one is of field `v` (another
size): a mutated frame that still decodes can only be a duplicate. So the server must accept
exactly the valid frames, count every other one as duplicate or rejected (by reason), stay
alive, and end the study with the batch reference's numbers once the last valid frame comes.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import time

import numpy as np
import pytest
import zmq
from harness import MELISSA, WAIT
from test_server_e2e import FakeLauncher, RawSender, frame, sobol_reference

from melissa_nb.netcdf import read_results
from melissa_nb.ports import free_port
from melissa_nb.protocol import Drop, Hello, Job, Options, TextRequest
from melissa_nb.server.live.state import unlink_blocks
from melissa_nb.server.results.status import read_progress
from melissa_nb.server.startup import CONNECTION_MAX_MESSAGE

SEED = 20261122
PARAMETERS = 1
ROWS = PARAMETERS + 2
GROUPS = 12
TIMESTEPS = 2
CELLS = {"u": 5, "v": 3}
DATA_FUZZ = 10_000
CONNECTION_FUZZ = 1_000
LAUNCHER_FUZZ = 1_000
MAX_CELLS = 64
HEADER = 144


def mutate(draw: random.Random, base: bytes) -> bytes:
    """One to four random mutations of `base`, or plain random bytes (1 in 10)."""
    if draw.random() < 0.1:
        return draw.randbytes(draw.choice([0, 1, 3, 4, 7, 8, 16, 143, 144, 152, 200, 1000]))
    data = bytearray(base)
    for _ in range(draw.randint(1, 4)):
        kind = draw.randrange(7)
        at = draw.randrange(max(len(data), 1))
        if kind == 0 and data:  # replace a byte
            data[at] = draw.randrange(256)
        elif kind == 1 and data:  # flip a bit
            data[at] ^= 1 << draw.randrange(8)
        elif kind == 2:  # insert bytes
            data[at:at] = draw.randbytes(draw.randint(1, 16))
        elif kind == 3:  # cut bytes
            del data[at : at + draw.randint(1, 16)]
        elif kind == 4 and len(data) >= 16:  # overwrite a header int32 with an edge value
            field = 4 * draw.randrange(4)
            value = draw.choice([-1, 0, 1, 2, 3, 2**31 - 1, -(2**31), GROUPS, GROUPS * ROWS])
            data[field : field + 4] = struct.pack("<i", value)
        elif kind == 5:  # truncate
            del data[at:]
        else:  # extend with NaN/inf/huge doubles
            data += np.array(draw.choices([np.nan, np.inf, -np.inf, 1e308], k=3)).tobytes()
    return bytes(data)


def group_values(field: str, group: int, t: int) -> np.ndarray:
    return np.random.default_rng([list(CELLS).index(field), group, t]).normal(
        size=(ROWS, CELLS[field])
    )


@pytest.mark.timeout(120)
def test_fuzz_every_socket_then_a_valid_study_completes_exactly(tmp_path) -> None:
    draw = random.Random(SEED)
    launcher = FakeLauncher(parameters=PARAMETERS)
    study_id = f"fz{os.getpid()}"
    port = free_port()
    output = tmp_path / "out"
    command = [
        str(MELISSA),
        "server",
        "-p",
        str(PARAMETERS),
        "-s",
        str(GROUPS),
        "-t",
        str(TIMESTEPS),
        "-f",
        "u:v",
        "-o",
        "mean:variance:min:max:sobol",
        "--max-cells",
        str(MAX_CELLS),
        "--member-buffer-mb",
        "0.01",
        "-w",
        "300",
        "--connection-port",
        str(port),
        "--data_port",
        "0",
        "--output-dir",
        str(output),
        "--study-id",
        study_id,
        *launcher.options(),
    ]
    log = tmp_path / "server.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )

    replies = {"fuzzed": 0}

    def fuzz_replies() -> None:
        """Answer the server's REQ with mutated or random replies (and keep saying HELLO)."""
        launcher.publisher.send(Hello().encode())
        while launcher.reply.poll(0):
            request = TextRequest.decode(launcher.reply.recv())
            launcher.requests.append(request)
            if request.kind == "options":
                base = Options("-o mean").encode()
            else:
                base = Job(request.simu_id, f"job{request.simu_id}", (0.5,)).encode()
            launcher.reply.send(mutate(draw, base))
            replies["fuzzed"] += 1

    def progress() -> dict[str, int]:
        try:
            return read_progress(output).ranks.get(0, {})
        except (FileNotFoundError, ValueError):  # not written yet, or a block being created
            return {}

    def pump_until(condition, what: str) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            assert server.poll() is None, f"server died:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            fuzz_replies()
            launcher.pull.poll(20)
            while launcher.pull.poll(0):
                launcher.pull.recv()

    sender = RawSender(f"tcp://127.0.0.1:{port}")
    oversize = sender.context.socket(zmq.PUSH)
    oversize.setsockopt(zmq.LINGER, 0)
    held_back = ("v", GROUPS - 1, TIMESTEPS - 1)
    valid = [
        (f, g, t)
        for g in range(GROUPS)
        for t in range(TIMESTEPS)
        for f in CELLS
        if (f, g, t) != held_back
    ]
    started = time.monotonic()
    try:
        reply = sender.handshake(0)
        for group in range(1, GROUPS):  # every group's member 0 connects, as Melissa's do
            sender.handshake(group * ROWS)
        oversize.connect(reply.data_addresses[0])
        for f, g, t in valid:
            sender.send(frame(f, g, t, group_values(f, g, t)))
        pump_until(lambda: progress().get("accepted") == len(valid), "the valid frames")

        bases = [frame("u", g, t, group_values("u", g, t)) for g in range(GROUPS) for t in (0, 1)]
        bases += [
            frame("u", g * ROWS + m, t, group_values("u", g, t)[m])  # single members
            for g in range(GROUPS)
            for m in range(ROWS)
            for t in (0, 1)
        ]
        for index in range(DATA_FUZZ):
            sender.send(mutate(draw, draw.choice(bases)))
            if index % 500 == 0:
                fuzz_replies()
        for _ in range(20):  # beyond --max-cells: ZeroMQ itself drops these (and the peer)
            oversize.send(b"\0" * (HEADER + 8 * ROWS * MAX_CELLS + 8))

        requester = sender.context.socket(zmq.REQ)
        requester.setsockopt(zmq.LINGER, 0)
        requester.connect(f"tcp://127.0.0.1:{port}")
        refused = 0
        oversized = 0
        for _ in range(CONNECTION_FUZZ):
            request = mutate(draw, struct.pack("<ii", 1, draw.randrange(GROUPS * ROWS)))
            if len(request) > CONNECTION_MAX_MESSAGE:
                # ZeroMQ drops it and disconnects that peer: no reply will ever come.
                once = sender.context.socket(zmq.REQ)
                once.setsockopt(zmq.LINGER, 0)
                once.connect(f"tcp://127.0.0.1:{port}")
                once.send(request)
                once.close()
                oversized += 1
                continue
            requester.send(request)
            assert requester.poll(int(WAIT * 1000)), "no connection reply: the server hangs"
            refused += requester.recv() == b""
        requester.close()
        assert oversized > 0

        launcher_bases = [
            Hello().encode(),
            Job(3, "job3", (0.25,)).encode(),
            Drop(0x7F7F7F7F, "never").encode(),  # out of range: mutations rarely bring it in
        ]
        for index in range(LAUNCHER_FUZZ):
            launcher.publisher.send(mutate(draw, draw.choice(launcher_bases)))
            if index % 100 == 0:
                fuzz_replies()

        expected_messages = len(valid) + DATA_FUZZ
        sent_all = time.time()  # the counters must be published after this (every 0.5 s)
        pump_until(
            lambda: (
                progress().get("messages") == expected_messages
                and progress()["updated_at"] > sent_all
            ),
            "every data frame",
        )
        counters = progress()
        fuzz_seconds = time.monotonic() - started
        assert counters["accepted"] == len(valid), "a fuzz frame was accepted"
        assert counters["duplicates"] + counters["rejected"] >= DATA_FUZZ + refused
        assert refused > CONNECTION_FUZZ // 2

        f, g, t = held_back
        sender.send(frame(f, g, t, group_values(f, g, t)))
        pump_until(lambda: server.poll() is not None, "the end of the study")
        assert server.returncode == 0, log.read_text()
    finally:
        oversize.close()
        sender.close()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(WAIT)
        launcher.close()
        assert unlink_blocks(f"melissa_nb_{study_id}_") == []
    assert fuzz_seconds < 30, f"fuzzing took {fuzz_seconds:.1f} s"
    assert replies["fuzzed"] >= 1 + GROUPS // 2, "the REQ socket got fuzzed replies"

    for f, cells in CELLS.items():
        values = np.array(
            [[group_values(f, g, t) for g in range(GROUPS)] for t in range(TIMESTEPS)]
        )  # (time, group, row, cell)
        results = read_results(output / f"{f}.nc")
        samples = values[:, :, :2, :].reshape(TIMESTEPS, 2 * GROUPS, cells)
        np.testing.assert_allclose(results.variables["mean"], samples.mean(axis=1), rtol=1e-12)
        np.testing.assert_allclose(
            results.variables["variance"], samples.var(axis=1, ddof=1), rtol=1e-12
        )
        np.testing.assert_array_equal(results.variables["min"], samples.min(axis=1))
        np.testing.assert_array_equal(results.variables["max"], samples.max(axis=1))
        for t in range(TIMESTEPS):
            for name, expected in sobol_reference(values[t], 0.95).items():
                np.testing.assert_allclose(
                    results.variables[name][t], expected, rtol=1e-10, atol=1e-13, err_msg=name
                )
        reasons = dict(
            item.split("=") for item in results.attributes["rejected_reasons"].split(",")
        )
        assert len(reasons) >= 8, reasons
        assert sum(map(int, reasons.values())) == results.attributes["messages_rejected"]
