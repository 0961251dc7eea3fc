"""Correlation maps through the real server (`-o correlation`, mpiexec -n 2): the parameters
come from the launcher's JOB messages, published or asked for (`simu_info`), and frames that
arrive before their simulation's parameters wait for them; results equal batch numpy."""

from __future__ import annotations

import numpy as np
import pytest
from references import correlation_batch
from test_server_e2e import FakeLauncher, RawSender, frame, start_server  # noqa: F401

from melissa_nb.netcdf import read_results
from melissa_nb.protocol import Job, Stop, TextRequest


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
    for t in range(timesteps):
        np.testing.assert_allclose(results.variables["mean"][t], outputs[t].mean(axis=0))
        for name, expected in correlation_batch(parameters, outputs[t]).items():
            np.testing.assert_allclose(
                results.variables[name][t], expected, rtol=1e-12, atol=1e-12, err_msg=name
            )
    server.assert_clean_exit()
