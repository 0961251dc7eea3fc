"""The simulation client over real sockets on 127.0.0.1: a test-side REP answers the handshake
and PULL sockets receive what the client sends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from melissa_nb import client as client_module
from melissa_nb.client import (
    Client,
    melissa_finalize,
    melissa_init,
    melissa_send,
    server_endpoint_from_environment,
    simulation_id_from_environment,
)
from melissa_nb.errors import ConfigurationError, ProtocolError, ServerUnreachableError
from melissa_nb.ports import free_port
from melissa_nb.protocol import ConnectionReply, ConnectionRequest, DataMessage

pytestmark = pytest.mark.timeout(60)
WAIT = 10.0  # seconds any test-side wait may take before the test fails


class ServerSockets:
    """The server's side of the sockets: REP answering one handshake, one PULL per server rank."""

    def __init__(
        self,
        context: zmq.Context,
        ranks: int,
        sobol: bool = False,
        nb_parameters: int = 0,
        entry_width: int = 256,
        reply_frame: bytes | None = None,
    ) -> None:
        self.rep = context.socket(zmq.REP)
        self.rep.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.rep.bind_to_random_port('tcp://127.0.0.1')}"
        self.pulls = []
        for _ in range(ranks):
            pull = context.socket(zmq.PULL)
            pull.setsockopt(zmq.LINGER, 0)
            self.pulls.append((pull, pull.bind_to_random_port("tcp://127.0.0.1")))
        addresses = tuple(f"tcp://127.0.0.1:{port}" for _, port in self.pulls)
        self.reply = ConnectionReply(sobol, 0, nb_parameters, 0, addresses, entry_width)
        self.reply_frame = self.reply.encode() if reply_frame is None else reply_frame
        self.requests: list[ConnectionRequest] = []
        self.answerer = threading.Thread(target=self._answer_one, daemon=True)
        self.answerer.start()

    def _answer_one(self) -> None:
        if self.rep.poll(int(WAIT * 1000)):
            self.requests.append(ConnectionRequest.decode(self.rep.recv()))
            self.rep.send(self.reply_frame)

    def receive(self, rank: int, count: int, nb_vectors: int = 1) -> list[DataMessage]:
        """Exactly `count` data messages from server rank `rank`'s PULL, then nothing more."""
        pull = self.pulls[rank][0]
        messages = []
        deadline = time.monotonic() + WAIT
        while len(messages) < count and time.monotonic() < deadline:
            if pull.poll(100):
                messages.append(DataMessage.decode(pull.recv(copy=False), nb_vectors))
        assert len(messages) == count, f"rank {rank}: {len(messages)} of {count} messages"
        assert not pull.poll(50), f"rank {rank} received more than {count} messages"
        return messages

    def close(self) -> None:
        self.answerer.join(WAIT)
        self.rep.close()
        for pull, _ in self.pulls:
            pull.close()


@pytest.fixture
def context():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
def servers(context):
    made = []

    def make(ranks: int, **options) -> ServerSockets:
        made.append(ServerSockets(context, ranks, **options))
        return made[-1]

    yield make
    for sockets in made:
        sockets.close()


def test_single_rank_splits_a_field_over_two_server_ranks(servers) -> None:
    server = servers(2)
    rng = np.random.default_rng(3)
    steps = rng.random((3, 11))
    other = rng.random((2, 11))
    with Client(simu_id=7, server=server.endpoint, connect_timeout=WAIT) as client:
        assert client.reply == server.reply
        client.init_field("u", 11)
        client.init_field("v", 11)
        for t in range(3):
            client.send("u", steps[t])
            if t < 2:
                client.send("v", other[t])
    assert server.requests == [ConnectionRequest(1, 7)]
    # 11 cells over 2 ranks: rank 0 owns 11 // 2 + 1 = 6 cells [0, 6), rank 1 owns [6, 11)
    for rank, cells in ((0, slice(0, 6)), (1, slice(6, 11))):
        received = server.receive(rank, 5)
        by_field = {name: [m for m in received if m.field_name == name] for name in ("u", "v")}
        assert [m.time_stamp for m in by_field["u"]] == [0, 1, 2]
        assert [m.time_stamp for m in by_field["v"]] == [0, 1]
        for name, data in (("u", steps), ("v", other)):
            for message in by_field[name]:
                assert (message.simu_id, message.client_rank) == (7, 0)
                assert message.values.shape == (1, cells.stop - cells.start)
                assert np.array_equal(message.values[0], data[message.time_stamp, cells])


@pytest.mark.parametrize(
    ("cells", "ranks", "expected"),
    [
        # (server rank, first cell, one past last) from G // M (+1 for the first G % M ranks)
        (10, 3, [(0, 0, 4), (1, 4, 7), (2, 7, 10)]),
        (2, 3, [(0, 0, 1), (1, 1, 2)]),  # rank 2 owns no cell and receives nothing
        (5, 1, [(0, 0, 5)]),
    ],
)
def test_pieces_follow_the_block_partition(servers, cells, ranks, expected) -> None:
    server = servers(ranks)
    values = np.arange(cells, dtype=float) * 1.5
    with Client(simu_id=0, server=server.endpoint, connect_timeout=WAIT) as client:
        client.init_field("u", cells)
        client.send("u", values)
    receivers = {rank for rank, _, _ in expected}
    for rank in range(ranks):
        if rank not in receivers:
            server.receive(rank, 0)
    for rank, start, stop in expected:
        (message,) = server.receive(rank, 1)
        assert np.array_equal(message.values[0], values[start:stop])


def test_module_api_reads_the_environment(servers, monkeypatch, tmp_path) -> None:
    server = servers(1, entry_width=128)
    monkeypatch.setenv("MELISSA_SIMU_ID", "4")
    monkeypatch.setenv("MELISSA_SERVER_NODE_NAME", "127.0.0.1")
    monkeypatch.setenv("MELISSA_SERVER_PORT", server.endpoint.rsplit(":", 1)[1])
    values = np.linspace(-1.0, 1.0, 9)
    melissa_init("heat", 9)
    melissa_send("heat", values)
    melissa_send("heat", 2 * values)
    melissa_finalize()
    assert client_module._default_client is None
    assert server.requests == [ConnectionRequest(1, 4)]
    first, second = server.receive(0, 2)
    assert (first.time_stamp, second.time_stamp) == (0, 1)
    assert first.simu_id == 4 and first.field_name == "heat"
    assert np.array_equal(first.values[0], values)
    assert np.array_equal(second.values[0], 2 * values)


def test_sobol_group_master_and_single_member(servers) -> None:
    p = 2
    rng = np.random.default_rng(5)
    group = rng.random((p + 2, 7))
    single = rng.random(7)
    master_side = servers(2, sobol=True, nb_parameters=p)
    member_side = servers(1, sobol=True, nb_parameters=p)
    # simulation 8 = group 2, member 0 (the master); simulation 9 = group 2, member 1 (Y_B)
    with Client(simu_id=8, server=master_side.endpoint, connect_timeout=WAIT) as master:
        master.init_field("u", 7)
        master.send("u", group)
    with Client(simu_id=9, server=member_side.endpoint, connect_timeout=WAIT) as member:
        member.init_field("u", 7)
        member.send("u", single)
        with pytest.raises(ValueError, match="only the group master"):
            member.send("u", group)
    for rank, cells in ((0, slice(0, 4)), (1, slice(4, 7))):
        (message,) = master_side.receive(rank, 1, nb_vectors=p + 2)
        assert message.simu_id == 2
        assert np.array_equal(message.values, group[:, cells])
    (message,) = member_side.receive(0, 1)
    assert (message.simu_id, message.nb_vectors, message.time_stamp) == (9, 1, 0)
    assert np.array_equal(message.values[0], single)


def test_bad_sends_name_the_problem(servers) -> None:
    server = servers(1)
    with Client(simu_id=0, server=server.endpoint, connect_timeout=WAIT) as client:
        client.init_field("u", 5)
        with pytest.raises(ValueError, match="got 4 values, local size is 5"):
            client.send("u", np.zeros(4))
        with pytest.raises(ValueError, match="'w' was not initialised"):
            client.send("w", np.zeros(5))
        with pytest.raises(ValueError, match=r"shape \(3, 5\)"):
            client.send("u", np.zeros((3, 5)))
        with pytest.raises(ValueError, match="already initialised"):
            client.init_field("u", 5)
        with pytest.raises(ValueError, match="at most 127 fit"):
            client.init_field("x" * 128, 5)
        with pytest.raises(ValueError, match="integer >= 0, got -1"):
            client.init_field("w", -1)
    server.receive(0, 0)


def test_missing_or_invalid_simulation_id() -> None:
    with pytest.raises(ConfigurationError, match="MELISSA_SIMU_ID is not set"):
        simulation_id_from_environment({})
    with pytest.raises(ConfigurationError, match="'abc' is not an integer"):
        simulation_id_from_environment({"MELISSA_SIMU_ID": "abc"})
    with pytest.raises(ConfigurationError, match="'-1' is not in"):
        simulation_id_from_environment({"MELISSA_SIMU_ID": "-1"})
    assert simulation_id_from_environment({"MELISSA_SIMU_ID": " 12 "}) == 12


def test_missing_simulation_id_stops_the_module_api(monkeypatch) -> None:
    monkeypatch.delenv("MELISSA_SIMU_ID", raising=False)
    with pytest.raises(ConfigurationError, match="MELISSA_SIMU_ID"):
        melissa_init("u", 3)
    assert client_module._default_client is None


def test_server_endpoint_sources(tmp_path: Path) -> None:
    environ = {"MELISSA_SERVER_NODE_NAME": "node7"}
    assert server_endpoint_from_environment(environ, tmp_path) == "tcp://node7:2003"
    assert server_endpoint_from_environment({}, tmp_path) == "tcp://localhost:2003"
    (tmp_path / "server_name.txt").write_text("node9\n", encoding="utf-8")
    assert server_endpoint_from_environment({}, tmp_path) == "tcp://node9:2003"
    assert server_endpoint_from_environment(environ, tmp_path) == "tcp://node7:2003"
    assert (
        server_endpoint_from_environment({"MELISSA_SERVER_PORT": "4100"}, tmp_path)
        == "tcp://node9:4100"
    )
    with pytest.raises(ConfigurationError, match="MELISSA_SERVER_PORT='70000'"):
        server_endpoint_from_environment({"MELISSA_SERVER_PORT": "70000"}, tmp_path)


def test_no_server_times_out_with_a_clear_error() -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ServerUnreachableError, match=f"no server answered at {endpoint}"):
        Client(simu_id=0, server=endpoint, connect_timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 5.0


def test_send_to_a_server_rank_that_never_listens_times_out(context) -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"
    reply = ConnectionReply(False, 0, 0, 0, (dead,)).encode()
    server = ServerSockets(context, 1, reply_frame=reply)
    try:
        with Client(simu_id=1, server=server.endpoint, send_timeout=0.2, linger=0.5) as client:
            client.init_field("u", 3)
            start = time.monotonic()
            with pytest.raises(ServerUnreachableError, match=f"server rank 0 at {dead} did not"):
                client.send("u", np.zeros(3))
            assert 0.2 <= time.monotonic() - start < 5.0
    finally:
        server.close()


def test_malformed_reply_is_a_protocol_error(servers) -> None:
    server = servers(1, reply_frame=b"\x01\x00\x00\x00\x00\x00")
    with pytest.raises(ProtocolError) as error:
        Client(simu_id=0, server=server.endpoint, connect_timeout=WAIT)
    assert error.value.reason == "short_frame"


MPI_CLIENT = """
import sys
from pathlib import Path
import numpy as np
from mpi4py import MPI
from melissa_nb.client import Client

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
local = np.arange(3 if rank == 0 else 8, dtype=float) + 100 * rank
with Client(comm, simu_id=5, server=sys.argv[1], connect_timeout=20) as client:
    try:  # rank 1's mistake must reach rank 0 too, not leave it waiting
        client.init_field("bad", -1 if rank == 1 else 3)
    except ValueError as error:
        Path(sys.argv[2], f"rank{rank}.txt").write_text(str(error))
    client.init_field("u", local.size)
    for t in range(2):
        client.send("u", local + t)
"""


def test_two_client_ranks_under_mpiexec(servers, tmp_path: Path) -> None:
    server = servers(2)
    script = tmp_path / "mpi_client.py"
    script.write_text(textwrap.dedent(MPI_CLIENT), encoding="utf-8")
    mpiexec = Path(sys.executable).parent / "mpiexec"
    completed = subprocess.run(
        [str(mpiexec), "-n", "2", sys.executable, str(script), server.endpoint, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert completed.returncode == 0, completed.stderr
    for rank in (0, 1):
        error = (tmp_path / f"rank{rank}.txt").read_text()
        assert "init_field('bad'): rank 1: local size must be an integer >= 0, got -1" in error
    assert server.requests == [ConnectionRequest(2, 5)]
    # global vector: rank 0 holds cells [0, 3), rank 1 [3, 11); server blocks [0, 6) and [6, 11)
    global_values = np.concatenate([np.arange(3.0), np.arange(8.0) + 100])
    expected = {  # (server rank, client rank) -> global cells of that piece
        (0, 0): slice(0, 3),
        (0, 1): slice(3, 6),
        (1, 1): slice(6, 11),
    }
    seen = []
    for server_rank, count in ((0, 4), (1, 2)):
        for message in server.receive(server_rank, count):
            cells = expected[(server_rank, message.client_rank)]
            assert message.simu_id == 5
            assert np.array_equal(message.values[0], global_values[cells] + message.time_stamp)
            seen.append((server_rank, message.client_rank, message.time_stamp))
    assert sorted(seen) == sorted((*pair, t) for pair in expected for t in (0, 1))


MPI_UNREACHABLE = """
import sys
from pathlib import Path
from mpi4py import MPI
from melissa_nb.client import Client
from melissa_nb.errors import ServerUnreachableError

try:
    Client(MPI.COMM_WORLD, simu_id=5, server=sys.argv[1], connect_timeout=0.5)
except ServerUnreachableError as error:
    Path(sys.argv[2], f"rank{MPI.COMM_WORLD.Get_rank()}.txt").write_text(str(error))
"""


def test_every_client_rank_learns_that_no_server_answered(tmp_path: Path) -> None:
    script = tmp_path / "mpi_unreachable.py"
    script.write_text(textwrap.dedent(MPI_UNREACHABLE), encoding="utf-8")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    mpiexec = Path(sys.executable).parent / "mpiexec"
    completed = subprocess.run(
        [str(mpiexec), "-n", "2", sys.executable, str(script), endpoint, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert completed.returncode == 0, completed.stderr
    for rank in (0, 1):
        error = (tmp_path / f"rank{rank}.txt").read_text()
        assert f"no server answered at {endpoint}" in error
