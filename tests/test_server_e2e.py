"""The server end to end: real processes (plain and mpiexec), real sockets, real netCDF files.

Every output variable is compared with a numpy/scipy batch computation over the same data.
Quantiles (Robbins-Monro, order dependent, approximate) are compared to 1e-12 with the kernel fed
the samples in the order the server received them (a single PUSH pipe keeps that order); their
accuracy against numpy.quantile is the kernels' tests' business (tests/test_kernels_quantiles.py).
"""

from __future__ import annotations

import logging
import os
import signal
import socket as socketlib
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import zmq
from harness import BIN, MELISSA, MPIEXEC, WAIT, wait_for
from references import FIELD_REFERENCES, THRESHOLDS, aggregated_batch, martinez_batch

from melissa_nb.auth import LinkKey, connect_with
from melissa_nb.kernels import Quantiles, SobolMartinez
from melissa_nb.kernels.sobol import sobol_aggregated_half_widths
from melissa_nb.netcdf import read_results
from melissa_nb.ports import free_port
from melissa_nb.protocol import (
    Alive,
    ConfidenceInterval,
    ConnectionReply,
    ConnectionRequest,
    Drop,
    Hello,
    Job,
    Options,
    Server,
    SimuStatus,
    Stop,
    TextRequest,
    Timeout,
    decode_launcher_message,
    encode_data_frame,
)
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.launcher.link import LauncherLink
from melissa_nb.server.live.progress import LogThrottle
from melissa_nb.server.live.state import list_blocks
from melissa_nb.server.results.status import read_progress

RTOL = 1e-12


@dataclass
class RunningServer:
    process: subprocess.Popen
    output: Path
    study_id: str
    port: int
    log: Path

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def wait(self, timeout: float = WAIT) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not end in {timeout:g} s:\n{self.text()}") from None

    def text(self) -> str:
        return self.log.read_text()

    def assert_clean_exit(self) -> None:
        """No traceback in the server's output (shared memory closed while views lived, ...)."""
        text = self.text()
        assert "Traceback" not in text and "BufferError" not in text, text


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start `melissa-nb server` (under mpiexec when ranks > 1); kill and check leftovers after."""
    started: list[RunningServer] = []

    def start(
        *options: str, ranks: int = 1, port: int | None = None, wrapper: tuple[str, ...] = ()
    ) -> RunningServer:
        """`wrapper`: a command the server runs under (prlimit, unshare)."""
        study_id = f"t{uuid.uuid4().hex[:8]}"
        output = tmp_path / f"out_{study_id}"
        port = free_port() if port is None else port
        command = [
            str(MELISSA),
            "server",
            *options,
            "--connection-port",
            str(port),
            "--data_port",
            "0",
            "--output-dir",
            str(output),
            "--study-id",
            study_id,
            "-v",
            "1",
        ]
        if ranks > 1:
            command = [str(MPIEXEC), "-n", str(ranks), *command]
        command = [*wrapper, *command]
        log = tmp_path / f"{study_id}.log"
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        with log.open("w") as sink:
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        server = RunningServer(process, output, study_id, port, log)
        started.append(server)
        return server

    yield start
    leftovers = []
    for server in started:
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(WAIT)
        for name in list_blocks(f"melissa_nb_{server.study_id}_"):
            leftovers.append(name)
            shared_memory.SharedMemory(name).unlink()
    assert leftovers == [], f"shared-memory blocks survived: {leftovers}"


class RawSender:
    """A hand-driven simulation side: handshake on REQ, frames on one PUSH per server rank;
    CURVE clients when given a `key` (a server started with --auth)."""

    def __init__(self, endpoint: str, key: LinkKey | None = None) -> None:
        self.context = zmq.Context()
        self.endpoint = endpoint
        self.key = key
        self.pushes: dict[int, zmq.Socket] = {}

    def socket(self, kind: int) -> zmq.Socket:
        socket = self.context.socket(kind)
        if self.key is not None:
            connect_with(socket, self.key)
        return socket

    def handshake(self, simu_id: int, comm_size: int = 1) -> ConnectionReply:
        request = self.socket(zmq.REQ)
        request.setsockopt(zmq.LINGER, 0)
        try:
            request.connect(self.endpoint)
            request.send(ConnectionRequest(comm_size, simu_id).encode())
            assert request.poll(int(WAIT * 1000)), "no connection reply"
            reply = ConnectionReply.decode(request.recv(), entry_width=None)
        finally:
            request.close()
        for rank, address in enumerate(reply.data_addresses):
            if rank not in self.pushes:
                push = self.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, int(WAIT * 1000))
                push.setsockopt(zmq.SNDTIMEO, int(WAIT * 1000))
                push.connect(address)
                self.pushes[rank] = push
        return reply

    def send(self, frame: bytes | bytearray, rank: int = 0) -> None:
        self.pushes[rank].send(frame, copy=False)

    def close(self) -> None:
        for push in self.pushes.values():
            push.close()
        self.context.term()  # bounded: every socket has a finite linger


def frame(field: str, simu_id: int, t: int, values: np.ndarray, client_rank: int = 0) -> bytes:
    return bytes(encode_data_frame(t, simu_id, client_rank, field, values))


def check_field(results, samples: np.ndarray, ids: np.ndarray, names: list[str]) -> None:
    """Compare every general statistic with its batch reference, timestep by timestep."""
    for t in range(samples.shape[0]):
        for name in names:
            expected = FIELD_REFERENCES[name](samples[t], ids)
            got = results.variables[name][t]
            if expected.dtype.kind in "iu":
                np.testing.assert_array_equal(got, expected, err_msg=f"{name} at t={t}")
            else:
                np.testing.assert_allclose(got, expected, rtol=RTOL, atol=0, err_msg=name)


# --- M = 1, one client rank, out of order, duplicates, malformed -------------------------------


GENERAL = [
    "mean",
    "variance",
    "skewness",
    "kurtosis",
    "min",
    "max",
    "min_simulation",
    "max_simulation",
    "threshold_exceedance",
    "exceedance_probability",
]


def test_one_rank_every_general_statistic_out_of_order_duplicates_and_garbage(
    start_server, rng
) -> None:
    fields = {"u": 12, "v": 7}
    simulations, timesteps = 6, 3
    quantiles = (0.1, 0.5, 0.9)
    server = start_server(
        "-s",
        str(simulations),
        "-t",
        str(timesteps),
        "-f",
        "u:v",
        "-o",
        "mean:variance:skewness:kurtosis:min:max:threshold:quantile",
        "-e",
        ":".join(map(str, THRESHOLDS)),
        "-q",
        ":".join(map(str, quantiles)),
    )
    data = {f: rng.normal(2.0, 1.5, size=(simulations, timesteps, n)) for f, n in fields.items()}
    items = [(f, s, t) for f in fields for s in range(simulations) for t in range(timesteps)]
    order = [items[i] for i in rng.permutation(len(items))]
    duplicates = [order[i] for i in rng.choice(len(order), size=5, replace=False)]
    sender = RawSender(server.endpoint)
    try:
        for simu_id in range(simulations):
            reply = sender.handshake(simu_id)
        assert reply.server_comm_size == 1 and not reply.sobol
        garbage = [
            b"short",
            frame("w", 0, 0, np.zeros(12)),  # unknown field
            frame("u", 0, timesteps, np.zeros(12)),  # timestep out of range
            frame("u", simulations, 0, np.zeros(12)),  # simulation id out of range
            frame("u", 1, 1, np.zeros(5)),  # vect_size differs from the slice's
            frame("u", 1, 1, np.zeros(12))[:-3],  # payload not whole doubles
        ]
        first_of_each_field = max(
            next(i for i, item in enumerate(order) if item[0] == f) for f in fields
        )
        stream = order[: first_of_each_field + 1] + garbage + order[first_of_each_field + 1 :]
        stream[len(stream) // 2 : len(stream) // 2] = duplicates
        for item in stream:
            if isinstance(item, bytes):
                sender.send(item)
            else:
                f, s, t = item
                sender.send(frame(f, s, t, data[f][s, t]))
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    ids = np.arange(simulations)
    for f, cells in fields.items():
        results = read_results(server.output / f"{f}.nc")
        assert results.dimensions == {"time": 3, "cell": cells, "threshold": 3, "quantile_order": 3}
        samples = data[f].transpose(1, 0, 2)  # (time, simulation, cell)
        check_field(results, samples, ids, GENERAL)
        np.testing.assert_array_equal(results.variables["sample_count"], [simulations] * 3)
        np.testing.assert_array_equal(results.variables["threshold"], THRESHOLDS)
        np.testing.assert_array_equal(results.variables["quantile_order"], quantiles)
        arrival = [
            (s, t)
            for (g, s, t) in dict.fromkeys(i for i in stream if isinstance(i, tuple))
            if g == f
        ]
        for t in range(timesteps):
            reference = Quantiles(cells, quantiles)
            for s, step in arrival:
                if step == t:
                    reference.update(np.ascontiguousarray(data[f][s, t]))
            got = results.variables["quantile"][t]
            np.testing.assert_allclose(got, reference.quantile, rtol=RTOL, atol=0)
        attributes = results.attributes
        assert attributes["study_complete"] == 1
        assert attributes["messages_duplicate"] == 5
        assert attributes["messages_rejected"] == 6
        assert attributes["rejected_reasons"] == (
            "bad_size=1,short_frame=1,simu_id_out_of_range=1,timestep_out_of_range=1,"
            "unknown_field=1,vect_size_changed=1"
        )
        assert attributes["variance_convention"] == "unbiased, ddof=1"
    assert "rejected 1 message(s): short_frame" in server.text()
    server.assert_clean_exit()


# --- M = 2 under mpiexec, two client ranks, Sobol groups and single members --------------------

SOBOL_CLIENT = """
import sys
import numpy as np
from mpi4py import MPI
from melissa_nb.client import Client

endpoint, parameters, whole, members, timesteps = sys.argv[1], *map(int, sys.argv[2:6])
fields = {"u": (5, 8), "v": (3, 3)}
comm = MPI.COMM_WORLD
rank = comm.Get_rank()

def vector(field, group, member, t):
    index = list(fields).index(field)
    cells = sum(fields[field])
    whole_vector = np.random.default_rng([index, group, member, t]).normal(size=cells)
    start = sum(fields[field][:rank])
    return whole_vector[start:start + fields[field][rank]]

rows = parameters + 2
for group in range(whole):
    with Client(comm, simu_id=group * rows, server=endpoint, connect_timeout=60) as client:
        for field, sizes in fields.items():
            client.init_field(field, sizes[rank])
        for t in range(timesteps):
            for field in fields:
                client.send(field, np.stack([vector(field, group, m, t) for m in range(rows)]))
for group in range(whole, whole + members):
    for member in reversed(range(rows)):
        simu_id = group * rows + member
        with Client(comm, simu_id=simu_id, server=endpoint, connect_timeout=60) as client:
            for field, sizes in fields.items():
                client.init_field(field, sizes[rank])
            for t in range(timesteps):
                for field in fields:
                    client.send(field, vector(field, group, member, t))
"""


def sobol_reference(groups: np.ndarray, confidence: float) -> dict[str, np.ndarray]:
    """Martinez indices (np.corrcoef batch) and their Fisher-z intervals, (p, cells) each."""
    first, total = martinez_batch(groups)
    h = scipy.stats.norm.ppf(0.5 + 0.5 * confidence) / np.sqrt(groups.shape[0] - 3)
    rho = 1.0 - total
    return {
        "sobol_first": first,
        "sobol_total": total,
        "sobol_first_ci_low": np.tanh(np.arctanh(first) - h),
        "sobol_first_ci_high": np.tanh(np.arctanh(first) + h),
        "sobol_total_ci_low": 1.0 - np.tanh(np.arctanh(rho) + h),
        "sobol_total_ci_high": 1.0 - np.tanh(np.arctanh(rho) - h),
    }


def check_aggregated_intervals(
    variables: dict[str, np.ndarray], values: np.ndarray, parameters: int
) -> None:
    """The whole field's intervals, summed over both server ranks' and both client ranks'
    slices, equal the kernel's on the whole field with the groups in the order sent
    (values (time, group, member, cell)), per timestep and over space-time (1e-10)."""
    increments = np.array(
        [SobolMartinez(values.shape[3], parameters).update_batch(step) for step in values]
    )  # (time, group, 3p + 2)
    for name, index in (("first", 0), ("total", 1)):
        for where, steps, summed in (
            ("", slice(None), increments),
            ("_spacetime", 0, increments.sum(axis=0, keepdims=True)),
        ):
            half = np.array(
                [sobol_aggregated_half_widths(step[1:], 0.95)[index] for step in summed]
            )
            centre = variables[f"sobol_{name}_aggregated{where}"]
            for bound, sign in (("low", -1), ("high", 1)):
                np.testing.assert_allclose(
                    variables[f"sobol_{name}_aggregated{where}_ci_{bound}"],
                    centre + sign * half[steps],
                    rtol=1e-10,
                )


def test_two_ranks_two_client_ranks_sobol_groups_and_members(start_server, tmp_path) -> None:
    parameters, whole, members, timesteps = 2, 3, 2, 2
    groups = whole + members
    rows = parameters + 2
    fields = {"u": (5, 8), "v": (3, 3)}
    server = start_server(
        "-p",
        str(parameters),
        "-s",
        str(groups),
        "-t",
        str(timesteps),
        "-f",
        "u:v",
        "-o",
        "mean:variance:min:max:sobol",
        "--grid-shape",
        "3:2",  # v's 6 cells (rank 0 writes row 0 and half of row 1); not u's 13: u stays flat
        ranks=2,
    )
    script = tmp_path / "sobol_client.py"
    script.write_text(textwrap.dedent(SOBOL_CLIENT))
    client = subprocess.run(
        [
            str(MPIEXEC),
            "-n",
            "2",
            sys.executable,
            str(script),
            server.endpoint,
            str(parameters),
            str(whole),
            str(members),
            str(timesteps),
        ],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert client.returncode == 0, client.stderr
    assert server.wait() == 0, server.text()
    for index, (f, sizes) in enumerate(fields.items()):
        cells = sum(sizes)
        values = np.array(
            [
                [
                    [
                        np.random.default_rng([index, g, m, t]).normal(size=cells)
                        for m in range(rows)
                    ]
                    for g in range(groups)
                ]
                for t in range(timesteps)
            ]
        )  # (time, group, member, cell)
        results = read_results(server.output / f"{f}.nc")
        grid = {"row": 3, "column": 2} if f == "v" else {"cell": cells}
        names = {"parameter": parameters, "parameter_strlen": 2}  # p1, p2 as characters
        assert results.dimensions == {"time": timesteps, **grid, **names}
        for name, written in results.variables.items():
            if f == "v" and results.variable_dimensions[name][-2:] == ("row", "column"):
                results.variables[name] = written.reshape(written.shape[:-2] + (cells,))
        assert results.attributes["server_ranks"] == 2
        general = values[:, :, :2, :].reshape(timesteps, 2 * groups, cells)
        ids = (np.arange(groups)[:, None] * rows + np.arange(2)[None, :]).reshape(-1)
        check_field(
            results,
            general,
            ids,
            ["mean", "variance", "min", "max", "min_simulation", "max_simulation"],
        )
        np.testing.assert_array_equal(results.variables["sample_count"], [2 * groups] * timesteps)
        for t in range(timesteps):
            for name, expected in sobol_reference(values[t], 0.95).items():
                np.testing.assert_allclose(
                    results.variables[name][t], expected, rtol=1e-10, atol=1e-13, err_msg=name
                )
            # The indices of the whole field: summed over both ranks' slices, no cell gathered.
            first, total = aggregated_batch(values[t])
            np.testing.assert_allclose(
                results.variables["sobol_first_aggregated"][t], first, rtol=1e-10, atol=1e-13
            )
            np.testing.assert_allclose(
                results.variables["sobol_total_aggregated"][t], total, rtol=1e-10, atol=1e-13
            )
        spacetime = np.concatenate(list(values), axis=2)  # every (timestep, cell) a cell
        first, total = aggregated_batch(spacetime)
        np.testing.assert_allclose(
            results.variables["sobol_first_aggregated_spacetime"], first, rtol=1e-10, atol=1e-13
        )
        np.testing.assert_allclose(
            results.variables["sobol_total_aggregated_spacetime"], total, rtol=1e-10, atol=1e-13
        )
        check_aggregated_intervals(results.variables, values, parameters)
        assert results.attributes["messages_rejected"] == 0
    assert "--grid-shape 3:2 does not hold the 13 cells of field u" in server.text()
    server.assert_clean_exit()


# --- lifecycle: live status, signals, timeouts ---------------------------------------------------


def test_status_shows_live_progress_and_sigterm_cleans_up(start_server, rng) -> None:
    server = start_server("-s", "2", "-t", "5", "-f", "u", "-o", "mean")
    values = rng.normal(size=(2, 4))
    sender = RawSender(server.endpoint)
    try:
        sender.handshake(0)
        for t in range(2):
            sender.send(frame("u", 0, t, values[t]))

        def two_accepted():
            try:
                progress = read_progress(server.output)
            except FileNotFoundError:
                return None
            ranks = progress.ranks
            return progress if ranks and ranks[0]["accepted"] == 2 else None

        progress = wait_for(two_accepted, "the status to show 2 accepted messages")
        (piece,) = progress.slices
        assert (piece.field, piece.cells, piece.timesteps_received) == ("u", 4, 2)
        assert (piece.simulations_complete, piece.simulations) == (0, 2)
        assert piece.mean_range == pytest.approx((values[1].min(), values[1].max()), rel=RTOL)
        assert progress.ranks[0]["running"] == 1
        status = subprocess.run(
            [str(MELISSA), "status", str(server.output)],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert status.returncode == 0, status.stderr
        assert server.study_id in status.stdout
        server.process.send_signal(signal.SIGTERM)
        assert server.wait() == 128 + signal.SIGTERM
    finally:
        sender.close()
    assert list_blocks(f"melissa_nb_{server.study_id}_") == []
    assert not list(server.output.glob("*.nc"))
    assert "stopped by signal 15" in server.text()


def test_status_of_a_sobol_study_counts_groups() -> None:
    """With Sobol the server tracks groups: status says groups, not simulations."""
    from rich.console import Console

    from melissa_nb.server.results.status import SliceProgress, StudyProgress, render_progress

    counters = dict.fromkeys(
        ("messages", "accepted", "duplicates", "rejected", "running", "finished", "dropped"), 1
    )
    counters |= {
        "message_rate": 0,
        "byte_rate": 0,
        "connections": 1,
        "open_files_limit": 1024,
        "state_bytes": 0,
        "rss_bytes": 0,
        "kernel_ns": 0,
        "updated_at": time.time(),
    }
    description = {"study_id": "s", "ranks": 1, "sampling_size": 8, "group_size": 7}
    piece = SliceProgress(0, "u", 0, 4, 2, 5, 3, 8, 6, 6, None)
    console = Console(width=250, record=True)
    console.print(render_progress(StudyProgress(description, {0: counters}, [piece])))
    shown = console.export_text()
    assert "8 groups of 7 simulations expected" in shown
    assert "groups complete" in shown and "finished groups" in shown and "3/8" in shown
    assert "simulations complete" not in shown


def test_silent_simulation_is_dropped_without_launcher(start_server, rng) -> None:
    server = start_server("-s", "2", "-t", "3", "-f", "u", "-o", "mean:max", "-w", "1")
    values = rng.normal(size=(2, 3, 4))
    sender = RawSender(server.endpoint)
    try:
        sender.handshake(0)
        sender.handshake(1)
        sender.send(frame("u", 1, 0, values[1, 0]))
        for t in range(3):
            sender.send(frame("u", 0, t, values[0, t]))
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    results = read_results(server.output / "u.nc")
    np.testing.assert_array_equal(results.variables["sample_count"], [2, 1, 1])
    np.testing.assert_allclose(results.variables["mean"][0], values[:, 0].mean(axis=0), rtol=RTOL)
    np.testing.assert_array_equal(results.variables["mean"][1:], values[0, 1:])
    assert results.attributes["simulations_dropped"] == 1
    assert "simulation 1 silent for more than 1 s: dropped" in server.text()


# --- the launcher side ---------------------------------------------------------------------------


class FakeLauncher:
    """The launcher's three sockets, bound on free ports, answering requests automatically
    (`simu_info` with `table[id]`, else 0, 1, ..., p - 1; an id in `unknown` gets simulation
    0's JOB instead, as a launcher that lost it might answer)."""

    def __init__(
        self, parameters: int, table: np.ndarray | None = None, unknown: tuple[int, ...] = ()
    ) -> None:
        self.table = table
        self.unknown = unknown
        self.context = zmq.Context()
        self.pull = self.context.socket(zmq.PULL)
        self.publisher = self.context.socket(zmq.PUB)
        self.reply = self.context.socket(zmq.REP)
        for socket in (self.pull, self.publisher, self.reply):
            socket.setsockopt(zmq.LINGER, 0)
        self.ports = {
            "--txt_push_port": self.pull.bind_to_random_port("tcp://127.0.0.1"),
            "--txt_pull_port": self.publisher.bind_to_random_port("tcp://127.0.0.1"),
            "--txt_req_port": self.reply.bind_to_random_port("tcp://127.0.0.1"),
        }
        self.parameters = parameters
        self.received: list[object] = []
        self.requests: list[TextRequest] = []

    def options(self) -> list[str]:
        return ["-n", "127.0.0.1", *(str(x) for pair in self.ports.items() for x in pair)]

    def pump(self, until: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        """Say HELLO, collect messages and answer requests until `until()` holds."""
        deadline = time.monotonic() + timeout
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.reply, zmq.POLLIN)
        while not until():
            assert time.monotonic() < deadline, f"launcher timed out waiting for {what}"
            self.publisher.send(Hello().encode())
            events = dict(poller.poll(100))
            if self.pull in events:
                self.received.append(decode_launcher_message(self.pull.recv()))
            if self.reply in events:
                request = TextRequest.decode(self.reply.recv())
                self.requests.append(request)
                if request.kind == "options":
                    self.reply.send(Options("-o mean").encode())
                else:
                    simulation = 0 if request.simu_id in self.unknown else request.simu_id
                    parameters = (
                        tuple(float(k) for k in range(self.parameters))
                        if self.table is None
                        else tuple(self.table[simulation])
                    )
                    self.reply.send(Job(simulation, f"job{simulation}", parameters).encode())

    def publish(self, message: object) -> None:
        self.publisher.send(message.encode())

    def close(self) -> None:
        self.context.destroy(linger=0)


def test_launcher_conversation_from_server_to_stop(start_server, rng) -> None:
    launcher = FakeLauncher(parameters=2)
    server = start_server(
        "-s", "2", "-t", "2", "-f", "u", "-o", "mean", "-p", "2", *launcher.options()
    )
    values = rng.normal(size=(2, 3))
    sender = RawSender(server.endpoint)
    try:
        launcher.pump(lambda: Server(0, socketlib.gethostname()) in launcher.received, "SERVER")
        launcher.pump(lambda: TextRequest("options") in launcher.requests, "options request")
        sender.handshake(0)
        launcher.pump(lambda: SimuStatus(0, 1) in launcher.received, "SIMU_STATUS running")
        launcher.pump(lambda: TextRequest("simu_info", 0) in launcher.requests, "simu_info 0")
        for t in range(2):
            sender.send(frame("u", 0, t, values[t]))
        launcher.pump(lambda: SimuStatus(0, 2) in launcher.received, "SIMU_STATUS finished")
        launcher.publish(Drop(1, "job1"))
        launcher.pump(lambda: Stop() in launcher.received, "STOP")
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
        launcher.close()
    results = read_results(server.output / "u.nc")
    np.testing.assert_array_equal(results.variables["mean"], values)
    assert results.attributes["simulations_dropped"] == 1
    assert results.attributes["messages_rejected"] == 0


def test_launcher_queue_full_is_logged_once_per_interval_with_a_count(caplog) -> None:
    """A launcher that takes no message: the unsent ones are counted, not logged one by one."""
    config = ServerConfig(
        sampling_size=1,
        timesteps=1,
        field_names=("u",),
        launcher_name="127.0.0.1",
        txt_push_port=free_port(),
        txt_pull_port=free_port(),
        txt_req_port=free_port(),
    )
    context = zmq.Context()
    link = LauncherLink(context, config, 0.0, logging.getLogger("melissa_nb.test.launcher"))
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(5000):  # the send queue holds 1,000 (ZeroMQ's default high-water mark)
                link.send(Alive())
        assert 3000 <= link.unsent < 5000
        lines = [r.getMessage() for r in caplog.records if "launcher queue full" in r.message]
        assert lines == ["launcher queue full: 1 message(s) not sent (total 1; latest: Alive)"]
    finally:
        link.close()
        context.term()  # bounded: the PUSH socket's linger is finite


def test_log_throttle_counts_what_it_did_not_log() -> None:
    throttle = LogThrottle(interval=10.0)
    due = [throttle.count("a", now) for now in (0.0, 1.0, 2.0, 9.9, 10.0, 15.0, 25.0)]
    assert due == [1, 0, 0, 0, 4, 0, 2]
    assert throttle.count("b", 15.0) == 1, "each key has its own interval"


def test_silent_launcher_aborts_the_study_with_partial_results(start_server, rng) -> None:
    launcher = FakeLauncher(parameters=0)
    server = start_server(
        "-s",
        "2",
        "-t",
        "1",
        "-f",
        "u",
        "-o",
        "mean",
        "--launcher-timeout",
        "1",
        *launcher.options(),
    )
    values = rng.normal(size=3)
    sender = RawSender(server.endpoint)
    try:
        sender.handshake(0)
        sender.send(frame("u", 0, 0, values))
        assert server.wait() == 1, server.text()
    finally:
        sender.close()
        launcher.close()
    results = read_results(server.output / "u.nc")
    assert results.attributes["study_complete"] == 0
    np.testing.assert_array_equal(results.variables["mean"][0], values)
    assert "no HELLO from the launcher for 1 s" in server.text()


def test_two_ranks_wait_for_every_client_rank_before_ending(start_server, rng) -> None:
    """Melissa 0.6 stopped early when one client rank's data had all arrived: not here.

    Client rank 1 (8 of 13 cells, straddling both server blocks) sends everything first: both
    server ranks then see every learned slice complete, yet the study must go on until client
    rank 0's cells arrive.
    """
    from melissa_nb.partition import overlaps

    client_sizes, simulations, timesteps = (5, 8), 2, 2
    server = start_server(
        "-s", str(simulations), "-t", str(timesteps), "-f", "u", "-o", "mean:max", ranks=2
    )
    values = rng.normal(size=(simulations, timesteps, sum(client_sizes)))
    sender = RawSender(server.endpoint)

    def send_client_rank(client_rank: int) -> int:
        start = sum(client_sizes[:client_rank])
        sent = 0
        for rank, offset, size in overlaps(start, client_sizes[client_rank], 13, 2):
            for s in range(simulations):
                for t in range(timesteps):
                    piece = values[s, t, start + offset : start + offset + size]
                    sender.send(frame("u", s, t, piece, client_rank=client_rank), rank)
                    sent += 1
        return sent

    try:
        for s in range(simulations):
            sender.handshake(s, comm_size=2)
        expected = send_client_rank(1)

        def all_accepted():
            ranks = read_progress(server.output).ranks
            return len(ranks) == 2 and sum(r["accepted"] for r in ranks.values()) == expected

        wait_for(all_accepted, "client rank 1's messages to be accepted")
        with pytest.raises(subprocess.TimeoutExpired):
            server.process.wait(timeout=1.5)  # several vote rounds: it must not end now
        send_client_rank(0)
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    results = read_results(server.output / "u.nc")
    np.testing.assert_allclose(results.variables["mean"], values.mean(axis=0), rtol=RTOL)
    np.testing.assert_array_equal(results.variables["max"], values.max(axis=0))


def test_heartbeats_timeouts_and_sobol_interval_widths_reach_the_launcher(
    start_server, rng
) -> None:
    launcher = FakeLauncher(parameters=1)
    server = start_server(
        "-p",
        "1",
        "-s",
        "5",
        "-t",
        "1",
        "-f",
        "u",
        "-o",
        "sobol",
        "-w",
        "1",
        "--heartbeat",
        "0.3",
        *launcher.options(),
    )
    groups = rng.normal(size=(4, 3, 6))
    sender = RawSender(server.endpoint)
    try:
        launcher.pump(lambda: Alive() in launcher.received, "ALIVE")
        for group in range(4):
            sender.handshake(3 * group)
            sender.send(frame("u", group, 0, groups[group]))
        sender.handshake(3 * 4 + 2)  # group 4 connects, then stays silent
        launcher.pump(lambda: Timeout(4) in launcher.received, "TIMEOUT of group 4")
        widths = {}

        def both_widths() -> bool:
            for message in launcher.received:
                if isinstance(message, ConfidenceInterval) and message.field_name == "u":
                    widths[message.stat_name] = message.value
            return len(widths) == 2

        launcher.pump(both_widths, "CONFIDENCE_INTERVAL of both indices")
        launcher.publish(Drop(4, "job4"))
        launcher.pump(lambda: Stop() in launcher.received, "STOP")
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
        launcher.close()
    reference = sobol_reference(groups, 0.95)
    for stat in ("sobol_first", "sobol_total"):
        width = reference[f"{stat}_ci_high"] - reference[f"{stat}_ci_low"]
        assert widths[stat] == pytest.approx(np.nanmax(width), rel=1e-10)
    statuses = [m for m in launcher.received if isinstance(m, SimuStatus)]
    assert sorted(m.simu_id for m in statuses if m.status == 2) == [0, 1, 2, 3]


def test_two_ranks_single_rank_clients_several_fields(start_server, rng) -> None:
    from melissa_nb.client import Client

    fields = {"u": 9, "v": 4}
    simulations, timesteps = 4, 2
    server = start_server(
        "-s",
        str(simulations),
        "-t",
        str(timesteps),
        "-f",
        "u:v",
        "-o",
        "mean:variance:skewness:kurtosis:min:max:threshold",
        "-e",
        ":".join(map(str, THRESHOLDS)),
        ranks=2,
    )
    data = {f: rng.normal(0.5, 1.0, size=(simulations, timesteps, n)) for f, n in fields.items()}
    for simu_id in range(simulations):
        with Client(simu_id=simu_id, server=server.endpoint, connect_timeout=WAIT) as client:
            assert client.reply.server_comm_size == 2
            for f, cells in fields.items():
                client.init_field(f, cells)
            for t in range(timesteps):
                for f in fields:
                    client.send(f, data[f][simu_id, t])
    assert server.wait() == 0, server.text()
    for f in fields:
        results = read_results(server.output / f"{f}.nc")
        check_field(results, data[f].transpose(1, 0, 2), np.arange(simulations), GENERAL)
        assert results.attributes["server_ranks"] == 2


def test_connection_port_in_use_fails_cleanly(start_server) -> None:
    context = zmq.Context()
    taken = context.socket(zmq.REP)
    taken.setsockopt(zmq.LINGER, 0)
    port = taken.bind_to_random_port("tcp://127.0.0.1")
    try:
        server = start_server("-s", "1", "-t", "1", "-f", "u", port=port, ranks=2)
        assert server.wait() == 2, "rank 1 must learn of rank 0's failure, not wait forever"
    finally:
        context.destroy(linger=0)
    assert f"rank 0: --connection-port/--bind: cannot bind tcp://127.0.0.1:{port}" in server.text()
    assert list_blocks(f"melissa_nb_{server.study_id}_") == []


def test_full_member_buffer_refuses_new_groups_and_mpich_port_table(start_server, rng) -> None:
    # p = 1: a group has 3 members; one buffer of 4 cells is 96 bytes, the bound allows one.
    server = start_server(
        "-p",
        "1",
        "-s",
        "2",
        "-t",
        "1",
        "-f",
        "u",
        "-o",
        "mean:sobol",
        "--member-buffer-mb",
        str(150 / 2**20),
        "--port-table-width",
        "128",
    )
    groups = rng.normal(size=(2, 3, 4))
    sender = RawSender(server.endpoint)
    try:
        reply = sender.handshake(0)
        assert reply.entry_width == 128 and reply.sobol and reply.nb_parameters == 1
        sender.handshake(3)  # group 1's member 0
        sender.send(frame("u", 0, 0, groups[0, 0]))  # group 0, member 0: opens the buffer
        sender.send(frame("u", 3, 0, groups[1, 0]))  # group 1, member 0: no room, refused
        sender.send(frame("u", 2, 0, groups[0, 2]))
        sender.send(frame("u", 1, 0, groups[0, 1]))  # group 0 complete: buffer freed
        sender.send(frame("u", 1, 0, groups[1]))  # group 1 as one whole-group message
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    results = read_results(server.output / "u.nc")
    assert results.attributes["rejected_reasons"] == "member_buffer_full=1"
    np.testing.assert_array_equal(results.variables["sample_count"], [4])
    expected = groups[:, :2, :].reshape(4, 4).mean(axis=0)
    np.testing.assert_allclose(results.variables["mean"][0], expected, rtol=RTOL)


def test_sigterm_to_mpiexec_stops_both_ranks_cleanly(start_server) -> None:
    server = start_server("-s", "2", "-t", "2", "-f", "u", ranks=2)
    prefix = f"melissa_nb_{server.study_id}_"
    wait_for(lambda: len(list_blocks(prefix)) == 2, "both ranks' progress blocks")
    wait_for(lambda: server.text().count("ready:") == 2, "both ranks ready")
    server.process.send_signal(signal.SIGTERM)
    assert server.wait() != 0
    assert server.text().count("stopped by signal 15") == 2, server.text()
    assert list_blocks(prefix) == []


def test_random_garbage_is_counted_and_the_study_still_completes(start_server, rng) -> None:
    server = start_server("-s", "2", "-t", "2", "-f", "u", "-o", "mean:min")
    values = rng.normal(size=(2, 2, 5))
    sender = RawSender(server.endpoint)
    garbage = [rng.bytes(int(n)) for n in rng.integers(0, 400, size=60)]
    valid = frame("u", 0, 0, values[0, 0])
    garbage += [valid[: int(cut)] for cut in rng.integers(0, len(valid) - 1, size=30)]
    try:
        sender.handshake(0)
        sender.handshake(1)
        for index, junk in enumerate(garbage):
            sender.send(junk)
            if index % 25 == 0:  # the four valid messages, spread through the garbage
                s, t = divmod(index // 25, 2)
                sender.send(frame("u", s, t, values[s, t]))
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    results = read_results(server.output / "u.nc")
    assert results.attributes["messages_rejected"] == len(garbage)
    np.testing.assert_allclose(results.variables["mean"], values.mean(axis=0), rtol=RTOL)
    np.testing.assert_array_equal(results.variables["min"], values.min(axis=0))


def test_status_of_an_ended_study_reads_its_result_files(start_server, rng) -> None:
    """`melissa-nb status` once the server is gone: the final state from the files (exit 0);
    a server stopped before writing any: says so (exit 1)."""
    server = start_server("-s", "1", "-t", "1", "-f", "u:v", "-o", "mean")
    sender = RawSender(server.endpoint)
    try:
        sender.handshake(0)
        sender.send(frame("u", 0, 0, rng.normal(size=3)))
        sender.send(frame("v", 0, 0, rng.normal(size=2)))
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    shown = subprocess.run(
        [str(MELISSA), "status", str(server.output)], capture_output=True, text=True, timeout=WAIT
    )
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "finished (no live server)" in shown.stdout and "u.nc" in shown.stdout, shown.stdout
    stopped = start_server("-s", "1", "-t", "1", "-f", "u", "-o", "mean")
    wait_for((stopped.output / "server.json").exists, "the second server")
    stopped.process.send_signal(signal.SIGTERM)
    assert stopped.wait() == 128 + signal.SIGTERM
    shown = subprocess.run(
        [str(MELISSA), "status", str(stopped.output)], capture_output=True, text=True, timeout=WAIT
    )
    assert shown.returncode == 1 and "no live server and no results" in shown.stdout, shown.stdout
