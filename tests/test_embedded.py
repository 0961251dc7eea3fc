"""The embedded server: melissa4py's example loop against a live study, and the Python API.

A real launcher (examples/melissa4py/drive.py over melissa_nb.study.launcher, in a thread of the
test) publishes JOBs and starts simulation processes (examples/melissa4py/simulation.py, with
melissa_nb.client); the seed's `main` (examples/melissa4py/server.py) runs in the test's thread
unchanged, its `do_stuff` recording what it is handed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
import uuid
from functools import partial
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import zmq
from harness import announce

from melissa_nb import MelissaServer, ServerStatus, SimulationData
from melissa_nb.errors import ConfigurationError
from melissa_nb.netcdf import read_results
from melissa_nb.ports import free_port
from melissa_nb.protocol import Job, encode_data_frame
from melissa_nb.server.live.state import list_blocks

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "melissa4py"
WAIT = 60.0


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"melissa4py_example_{name}", EXAMPLE / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(120)
def test_melissa4py_loop_sees_every_message_once_with_its_parameters(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples, timesteps, parameters, cells = 4, 5, 2, 8
    values = rng.uniform(0.5, 2.0, size=(samples, parameters))
    jobs = {s: Job(s, f"job{s}", tuple(values[s])) for s in range(samples)}
    port = free_port()
    study = load("drive.py").LauncherThread(jobs, port, timesteps, cells)
    study.start()
    assert study.ready.wait(WAIT)
    server_module, simulation = load("server.py"), load("simulation.py")
    seen: list[tuple[np.ndarray, np.ndarray | None, int]] = []
    monkeypatch.setattr(
        server_module,
        "do_stuff",
        lambda data, params, timestep: seen.append((data.copy(), params, timestep)),
    )
    study_id = f"e{uuid.uuid4().hex[:8]}"
    output = tmp_path / "out"
    monkeypatch.setattr(
        server_module,
        "MelissaServer",
        partial(
            MelissaServer,
            connection_port=port,
            data_port=0,
            output_dir=output,
            study_id=study_id,
            operations=("mean",),
        ),
    )
    args = argparse.Namespace(
        timesteps=timesteps,
        nb_proc_server=1,
        nb_parameters_simulation=parameters,
        txt_pull_port=study.ports.pull,
        txt_push_port=study.ports.push,
        txt_req_port=study.ports.req,
        launcher_node_name="127.0.0.1",
        sample_size=samples,
    )
    server_module.main(args)
    study.join(WAIT)
    assert study.failure is None, study.failure
    assert list_blocks(f"melissa_nb_{study_id}_") == []
    keys = sorted((int(data[0]), int(data[1])) for data, _, _ in seen)
    assert keys == [(s, t) for s in range(samples) for t in range(timesteps)]
    for data, params, timestep in seen:
        simulation_id = int(data[0])
        assert timestep == int(data[1])
        np.testing.assert_array_equal(
            data, simulation.field(simulation_id, timestep, cells, values[simulation_id])
        )
        np.testing.assert_array_equal(params, values[simulation_id])
    results = read_results(output / "heat1.nc")
    assert results.attributes["study_complete"] == 1
    batch = np.array(
        [
            [simulation.field(s, t, cells, values[s]) for s in range(samples)]
            for t in range(timesteps)
        ]
    ).mean(axis=1)
    np.testing.assert_allclose(results.variables["mean"], batch, rtol=1e-12)


def send(push: zmq.Socket, simulation: int, timestep: int, values: np.ndarray) -> None:
    push.send(bytes(encode_data_frame(timestep, simulation, 0, "u", values)))


@pytest.mark.timeout(60)
def test_python_api_without_statistics_duplicates_dropped_and_stop(tmp_path: Path) -> None:
    """No launcher, no statistics: every message once (a duplicate is dropped), then stop."""
    study_id = f"e{uuid.uuid4().hex[:8]}"
    server = MelissaServer(
        sampling_size=2,
        timesteps=3,
        field_names=("u",),
        statistics=False,
        connection_port=free_port(),
        data_port=0,
        output_dir=tmp_path,
        study_id=study_id,
    )
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    with server:
        push.connect(server.data_address)
        assert server.run(timeout=0) is ServerStatus.TIMEOUT
        announce(server, [0])
        for t in range(3):
            send(push, 0, t, np.full(4, 10.0 * t))
        send(push, 0, 1, np.full(4, 10.0))  # a duplicate
        got = []
        deadline = time.monotonic() + WAIT
        while len(got) < 3 or server.counts["duplicates"] < 1:
            assert time.monotonic() < deadline, f"got {got}"
            status = server.run(timeout=100)
            if isinstance(status, SimulationData):
                assert status.parameters is None  # no launcher, no JOB
                got.append((status.simulation_id, status.timestep, status.data.copy()))
                assert not status.data.flags.writeable
        assert [(s, t) for s, t, _ in got] == [(0, 0), (0, 1), (0, 2)]
        np.testing.assert_array_equal(got[2][2], np.full(4, 20.0))
        assert list_blocks(f"melissa_nb_{study_id}_") != []
        code = server.stop()
    push.close()
    context.term()
    assert code == 1  # simulation 1 never sent: the study ends incomplete
    assert list_blocks(f"melissa_nb_{study_id}_") == []
    assert not (tmp_path / "u.nc").exists()  # statistics off: no results


def test_settings_are_checked_and_named() -> None:
    with pytest.raises(ConfigurationError, match="nb_proc_server=3"):
        MelissaServer(5, 3, 0, fields=["u"], sample_size=2)
    with pytest.raises(ConfigurationError, match="unknown setting 'learning'"):
        MelissaServer(5, 1, 0, fields=["u"], sample_size=2, learning=1)
    with pytest.raises(ConfigurationError, match="sampling_size"):
        MelissaServer(5, 1, 0, fields=["u"])


def test_from_arguments_reads_the_server_command_line(tmp_path: Path) -> None:
    study_id = f"e{uuid.uuid4().hex[:8]}"
    arguments = [
        "-s",
        "2",
        "-t",
        "3",
        "-f",
        "u:v",
        "-o",
        "mean:max",
        "--connection-port",
        str(free_port()),
        "--data_port",
        "0",
        "--output-dir",
        str(tmp_path),
        "--study-id",
        study_id,
    ]
    server = MelissaServer.from_arguments(arguments, statistics=False)
    try:
        config = server.config
        assert (config.sampling_size, config.timesteps) == (2, 3)
        assert config.field_names == ("u", "v") and config.operations == ("mean", "max")
        assert config.statistics is False and config.study_id == study_id
    finally:
        server.close()
    with pytest.raises(ConfigurationError, match="--nonsense"):
        MelissaServer.from_arguments([*arguments, "--nonsense"])
    with pytest.raises(ConfigurationError, match="-t/--timesteps"):
        MelissaServer.from_arguments(["-s", "2", "-t", "0", "-f", "u"])


EMBEDDED_SCRIPT = """
import numpy as np
from melissa_nb import MelissaServer, ServerStatus, SimulationData

server = MelissaServer.from_arguments()
seen = []
with server:
    while (status := server.run(timeout=100)) is not ServerStatus.FINISHED:
        if isinstance(status, SimulationData):
            seen.append([status.simulation_id, status.timestep, *status.data])
np.save(server.config.output_dir / f"seen_r{server.rank}.npy", np.array(seen))
"""


@pytest.mark.timeout(120)
def test_two_embedded_ranks_each_see_their_cells(tmp_path: Path, rng: np.random.Generator) -> None:
    """`mpiexec -n 2 python script.py <server options>`: each rank hands over its half."""
    from harness import MPIEXEC
    from test_server_e2e import RawSender, frame

    script = tmp_path / "my_server.py"
    script.write_text(EMBEDDED_SCRIPT)
    port, study_id, output = free_port(), f"e{uuid.uuid4().hex[:8]}", tmp_path / "out"
    log = tmp_path / "server.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [
                str(MPIEXEC),
                "-n",
                "2",
                sys.executable,
                str(script),
                "-s",
                "3",
                "-t",
                "2",
                "-f",
                "u",
                "-o",
                "mean",
                "--connection-port",
                str(port),
                "--data_port",
                "0",
                "--output-dir",
                str(output),
                "--study-id",
                study_id,
            ],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    values = rng.normal(size=(3, 2, 8))
    sender = RawSender(f"tcp://127.0.0.1:{port}")
    try:
        for s in range(3):
            assert len(sender.handshake(s).data_addresses) == 2
            for t in range(2):
                for rank, piece in enumerate(np.split(values[s, t], 2)):
                    sender.send(frame("u", s, t, piece), rank)
        assert process.wait(WAIT) == 0, log.read_text()
    finally:
        sender.close()
        if process.poll() is None:
            process.kill()
            process.wait(WAIT)
    halves = [np.load(output / f"seen_r{rank}.npy") for rank in (0, 1)]
    for rank, seen in enumerate(halves):
        assert sorted(map(tuple, seen[:, :2].astype(int))) == [
            (s, t) for s in range(3) for t in range(2)
        ]
        for row in seen:
            s, t = int(row[0]), int(row[1])
            np.testing.assert_array_equal(row[2:], np.split(values[s, t], 2)[rank])
    results = read_results(output / "u.nc")
    np.testing.assert_allclose(results.variables["mean"], values.mean(axis=0), rtol=1e-12)
    assert list_blocks(f"melissa_nb_{study_id}_") == []
