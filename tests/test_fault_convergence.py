"""Stopping when converged: --target-width over two ranks, told to a launcher."""

from __future__ import annotations

import os
import signal
import subprocess

import numpy as np
import pytest
from harness import MELISSA, MPIEXEC
from test_server_e2e import FakeLauncher, sobol_reference

from melissa_nb.client import Client
from melissa_nb.errors import ConfigurationError
from melissa_nb.netcdf import read_results
from melissa_nb.ports import free_port
from melissa_nb.protocol import Alive, ConfidenceInterval, Drop, Stop
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.live.state import unlink_blocks
from melissa_nb.server.results.convergence import CONVERGED
from melissa_nb.server.results.status import read_progress

PARAMETERS = 2
CELLS = 7
GROUPS = 40


def linear_groups(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, p + 2, cells) pick-freeze outputs of Y = sum_k c_k X_k + noise, X ~ U(0, 1)."""
    coefficients = rng.uniform(0.5, 2.0, size=(PARAMETERS, CELLS))
    a, b = rng.uniform(size=(2, n, PARAMETERS))
    rows = [a, b] + [np.where(np.arange(PARAMETERS) == k, b, a) for k in range(PARAMETERS)]
    noise = 0.3 * rng.normal(size=(n, PARAMETERS + 2, CELLS))
    return np.stack([x @ coefficients for x in rows], axis=1) + noise


def worst_widths(groups: np.ndarray) -> tuple[float, float]:
    reference = sobol_reference(groups, 0.95)
    return tuple(
        float(np.nanmax(reference[f"{s}_ci_high"] - reference[f"{s}_ci_low"]))
        for s in ("sobol_first", "sobol_total")
    )


def test_target_width_needs_sobol() -> None:
    with pytest.raises(ConfigurationError, match="--target-width needs sobol"):
        ServerConfig(sampling_size=2, timesteps=1, field_names=("u",), target_width=0.1)
    with pytest.raises(ConfigurationError, match="--target-width must be > 0, got -1"):
        ServerConfig(
            sampling_size=2,
            timesteps=1,
            field_names=("u",),
            parameters=1,
            operations=("sobol",),
            target_width=-1.0,
        )


@pytest.mark.timeout(120)
def test_converged_is_told_once_every_rank_is_below_the_target(tmp_path, rng) -> None:
    groups = linear_groups(rng, GROUPS)
    early, late = 6, 30
    widths = {n: worst_widths(groups[:n]) for n in range(early, late + 1)}
    target = 1.001 * max(widths[late])
    assert min(widths[early]) > target, "the data must start wide of the target"

    launcher = FakeLauncher(parameters=PARAMETERS)
    study_id = f"cv{os.getpid()}"
    port = free_port()
    command = [
        str(MPIEXEC),
        "-n",
        "2",
        str(MELISSA),
        "server",
        "-p",
        str(PARAMETERS),
        "-s",
        str(GROUPS),
        "-t",
        "1",
        "-f",
        "u",
        "-o",
        "mean:sobol",
        "--target-width",
        repr(target),
        "--heartbeat",
        "0.2",
        "--connection-port",
        str(port),
        "--data_port",
        "0",
        "--output-dir",
        str(tmp_path / "out"),
        "--study-id",
        study_id,
        *launcher.options(),
    ]
    log = tmp_path / "server.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    endpoint = f"tcp://127.0.0.1:{port}"

    def send(selected: range) -> None:
        for group in selected:
            with Client(simu_id=group * (PARAMETERS + 2), server=endpoint) as client:
                client.init_field("u", CELLS)
                client.send("u", groups[group])

    def accepted(count: int) -> bool:
        try:
            ranks = read_progress(tmp_path / "out").ranks
        except (FileNotFoundError, ValueError):  # not written yet, or a block being created
            return False
        return len(ranks) == 2 and all(r["accepted"] == count for r in ranks.values())

    def converged() -> list[ConfidenceInterval]:
        return [
            m
            for m in launcher.received
            if isinstance(m, ConfidenceInterval) and m.stat_name == CONVERGED
        ]

    try:
        launcher.pump(lambda: Alive() in launcher.received, "ALIVE")
        send(range(early))
        launcher.pump(lambda: accepted(early), f"{early} groups accepted")
        alive = launcher.received.count(Alive())
        launcher.pump(lambda: launcher.received.count(Alive()) >= alive + 5, "5 more ALIVE")
        assert converged() == [], "not converged with only a few groups"

        send(range(early, late))
        launcher.pump(lambda: converged() != [], "CONVERGED")
        (message,) = converged()
        assert (message.field_name, message.value) == ("*", pytest.approx(target, rel=1e-15))
        told = {
            m.stat_name: m.value
            for m in launcher.received[: launcher.received.index(message)]
            if isinstance(m, ConfidenceInterval)
        }
        seen = [
            n
            for n in widths
            if np.allclose(widths[n], (told["sobol_first"], told["sobol_total"]), rtol=1e-10)
        ]
        assert seen and seen[0] > early, f"widths {told} match no prefix of the groups"
        assert max(told["sobol_first"], told["sobol_total"]) < target
        for group in range(late, GROUPS):  # the launcher drops what it has not launched
            launcher.publish(Drop(group, f"job{group}"))
        launcher.pump(lambda: Stop() in launcher.received, "STOP")
        assert server.wait(60) == 0, log.read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(60)
        launcher.close()
        assert unlink_blocks(f"melissa_nb_{study_id}_") == []
    results = read_results(tmp_path / "out" / "u.nc")
    assert results.attributes["simulations_dropped"] == GROUPS - late
    reference = sobol_reference(groups[:late], 0.95)
    np.testing.assert_allclose(
        results.variables["sobol_first"][0], reference["sobol_first"], rtol=1e-10
    )
    assert len(converged()) == 1, "told once"
