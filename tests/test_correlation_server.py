"""Correlation maps through the real server (`-o correlation`, mpiexec -n 2): the parameters
come from the launcher's JOB messages, published or asked for (`simu_info`), and frames that
arrive before their simulation's parameters wait for them; results equal batch numpy."""

from __future__ import annotations

import numpy as np
import pytest
from references import correlation_aggregated_batch, correlation_batch
from test_server_e2e import FakeLauncher, RawSender, frame, start_server  # noqa: F401

from melissa_nb.netcdf import read_results
from melissa_nb.protocol import Drop, Job, Stop, TextRequest
from melissa_nb.server.results.status import read_progress


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ranks", [1, 2])
def test_correlation_maps_equal_numpy_in_any_order(start_server, rng, ranks: int) -> None:  # noqa: F811
    simulations, timesteps, cells, p = 12, 3, 8, 3
    parameters = rng.uniform(size=(simulations, p)) * [1.0, 5.0, 100.0]
    weights = rng.normal(size=(timesteps, p, cells))
    outputs = (
        np.einsum("sp,tpc->tsc", parameters, weights)
        + 1e4
        + rng.normal(scale=0.2, size=(timesteps, simulations, cells))
    )
    launcher = FakeLauncher(parameters=p, table=parameters)
    server = start_server(
        *("-s", str(simulations), "-t", str(timesteps), "-f", "u", "-p", str(p)),
        *("-o", "mean:correlation", "--parameter-names", "k:alpha:T", "-w", "60"),
        *launcher.options(),
        ranks=ranks,
    )
    sender = RawSender(server.endpoint)
    try:
        launcher.pump(lambda: len(launcher.received) >= ranks, "SERVER messages")
        for simulation in range(0, simulations, 2):  # half of the JOBs published up front
            launcher.publish(Job(simulation, f"job{simulation}", tuple(parameters[simulation])))
        for simulation in range(simulations):
            sender.handshake(simulation)
        # Every frame, shuffled; the odd simulations' parameters come only when the server
        # asks (simu_info), answered by the pumps below: their frames wait meanwhile.
        frames = [(s, t) for s in range(simulations) for t in range(timesteps)]
        for index in rng.permutation(len(frames)):
            simulation, t = frames[index]
            for rank, piece in enumerate(np.array_split(outputs[t, simulation], ranks)):
                sender.send(frame("u", simulation, t, piece), rank)
        launcher.pump(lambda: Stop() in launcher.received, "STOP")
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
        launcher.close()
    results = read_results(server.output / "u.nc")
    assert results.variables["parameter"].tolist() == ["k", "alpha", "T"]
    assert results.variable_dimensions["correlation"] == ("time", "parameter", "cell")
    assert results.attributes["messages_rejected"] == 0
    assert TextRequest("simu_info", 1) in launcher.requests  # an odd one was asked for
    # The whole field: each rank's sums over its own cells add up (no cell gathered).
    for t in range(timesteps):
        src_squared, r2 = correlation_aggregated_batch(parameters, outputs[t])
        variables = results.variables
        np.testing.assert_allclose(variables["src_squared_aggregated"][t], src_squared, rtol=1e-12)
        assert variables["regression_r2_aggregated"][t] == pytest.approx(r2, rel=1e-12)
    spacetime = np.concatenate(list(outputs), axis=1)  # every (timestep, cell) a cell
    src_squared, r2 = correlation_aggregated_batch(parameters, spacetime)
    np.testing.assert_allclose(
        results.variables["src_squared_aggregated_spacetime"], src_squared, rtol=1e-12
    )
    assert float(results.variables["regression_r2_aggregated_spacetime"]) == pytest.approx(
        r2, rel=1e-12
    )
    for t in range(timesteps):
        np.testing.assert_allclose(results.variables["mean"][t], outputs[t].mean(axis=0))
        for name, expected in correlation_batch(parameters, outputs[t]).items():
            np.testing.assert_allclose(
                results.variables[name][t], expected, rtol=1e-12, atol=1e-12, err_msg=name
            )
    server.assert_clean_exit()


@pytest.mark.timeout(180)
def test_data_without_usable_parameters_is_refused_and_the_rest_is_exact(
    start_server,  # noqa: F811
    rng,
) -> None:
    """Simulation 1's JOB has a NaN parameter: its frames are refused at once; simulation 2's
    JOB never comes: its frames wait 50 end votes (~10 s), then are refused; both counted as
    `no_parameters`, the server keeps serving, and once the launcher drops the two the
    correlations of the others equal numpy's."""
    simulations, timesteps, cells, p = 8, 2, 5, 2
    parameters = rng.uniform(size=(simulations, p))
    parameters[1, 1] = np.nan
    outputs = rng.normal(size=(timesteps, simulations, cells)) + parameters[:, :1]
    launcher = FakeLauncher(parameters=p, table=parameters, unknown=(2,))
    server = start_server(
        *("-s", str(simulations), "-t", str(timesteps), "-f", "u", "-p", str(p)),
        *("-o", "correlation", "-w", "60"),
        *launcher.options(),
    )
    sender = RawSender(server.endpoint)
    try:
        launcher.pump(lambda: len(launcher.received) >= 1, "SERVER message")
        for simulation in range(simulations):
            sender.handshake(simulation)
            for t in range(timesteps):
                sender.send(frame("u", simulation, t, outputs[t, simulation]))
        launcher.pump(
            lambda: read_progress(server.output).ranks.get(0, {}).get("rejected") == 2 * timesteps,
            "the refusal of simulations 1 and 2's frames",
        )
        for simulation in (1, 2):
            launcher.publish(Drop(simulation, f"job{simulation}"))
        launcher.pump(lambda: Stop() in launcher.received, "STOP")
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
        launcher.close()
    results = read_results(server.output / "u.nc")
    assert results.attributes["rejected_reasons"] == f"no_parameters={2 * timesteps}"
    kept = [s for s in range(simulations) if s not in (1, 2)]
    for t in range(timesteps):
        expected = correlation_batch(parameters[kept], outputs[t, kept])
        for name, values in expected.items():
            np.testing.assert_allclose(
                results.variables[name][t], values, rtol=1e-12, atol=1e-12, err_msg=name
            )
    assert "the JOB of simulation 1 has (" in server.text()  # its NaN quoted
    server.assert_clean_exit()


@pytest.mark.timeout(240)
def test_frames_queued_behind_a_waiting_one_keep_their_own_wait_on_two_ranks(
    start_server,  # noqa: F811
    rng,
) -> None:
    """Simulation 2's JOB never comes and its frames arrive first: on rank 1 (which sees no
    handshake) every later frame queues behind them. Each simulation's JOB is asked for when
    its first frame reaches the rank, queued or not, and its wait counts from then: when
    simulation 2's frames are refused (50 votes), the others' are folded, and the copies of
    every frame sent again later with other values are duplicates. Results equal numpy on the
    first copies."""
    simulations, timesteps, cells, p = 10, 3, 8, 2
    parameters = rng.uniform(size=(simulations, p)) * [1.0, 10.0]
    outputs = rng.normal(size=(timesteps, simulations, cells)) + (parameters @ [1.0, 0.5])[:, None]
    launcher = FakeLauncher(parameters=p, table=parameters, unknown=(2,))
    server = start_server(
        *("-s", str(simulations), "-t", str(timesteps), "-f", "u", "-p", str(p)),
        *("-o", "mean:correlation", "-w", "120"),
        *launcher.options(),
        ranks=2,
    )
    sender = RawSender(server.endpoint)

    def send(simulation: int, t: int, values: np.ndarray) -> None:
        for rank, piece in enumerate(np.array_split(values, 2)):
            sender.send(frame("u", simulation, t, piece), rank)

    try:
        launcher.pump(lambda: len(launcher.received) >= 2, "SERVER messages")
        for simulation in range(simulations):
            sender.handshake(simulation)
        for t in range(timesteps):
            send(2, t, outputs[t, 2])
        others = [(s, t) for s in range(simulations) if s != 2 for t in range(timesteps)]
        for index in rng.permutation(len(others)):
            send(*others[index], outputs[others[index][1], others[index][0]])
        for index in rng.permutation(len(others)):  # the same timesteps again, other values
            send(*others[index], outputs[others[index][1], others[index][0]] + 500.0)

        def rejected() -> int:
            return sum(c["rejected"] for c in read_progress(server.output).ranks.values())

        launcher.pump(lambda: rejected() == 2 * timesteps, "the refusal of simulation 2's frames")
        launcher.publish(Drop(2, "job2"))
        launcher.pump(lambda: Stop() in launcher.received, "STOP")
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
        launcher.close()
    results = read_results(server.output / "u.nc")
    assert results.attributes["rejected_reasons"] == f"no_parameters={2 * timesteps}"
    assert results.attributes["messages_duplicate"] == 2 * len(others)
    kept = [s for s in range(simulations) if s != 2]
    for t in range(timesteps):
        np.testing.assert_allclose(results.variables["mean"][t], outputs[t, kept].mean(axis=0))
        for name, values in correlation_batch(parameters[kept], outputs[t, kept]).items():
            np.testing.assert_allclose(
                results.variables[name][t], values, rtol=1e-12, atol=1e-12, err_msg=name
            )
    server.assert_clean_exit()
