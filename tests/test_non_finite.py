"""Non-finite data never poisons a study: a message holding NaN or infinity is refused before any
of it is folded, its simulation is treated as failed, and every statistic equals numpy over
exactly the messages the server accepted (real server processes, 1 and 2 ranks, with and
without Sobol, bad values in the first, a middle and the last timestep)."""

from __future__ import annotations

import numpy as np
import pytest
from test_server_e2e import (  # noqa: F401 (start_server is a fixture)
    FakeLauncher,
    RawSender,
    frame,
    sobol_reference,
    start_server,
)

from melissa_nb.kernels.finite import count_non_finite
from melissa_nb.netcdf import read_results
from melissa_nb.protocol import NON_FINITE, ConfidenceInterval, Timeout

SAMPLES, TIMESTEPS, CELLS, PARAMETERS = 8, 3, 8, 2
BAD = {  # sample -> (timestep, cells, value): first, middle and last timestep; one or two ranks
    1: (0, [7], np.nan),
    3: (1, [0], np.inf),
    4: (2, [2, 6], -np.inf),
}


def test_count_non_finite_counts_nan_and_both_infinities() -> None:
    values = np.arange(10.0)
    assert count_non_finite(values) == 0
    values[[1, 4, 9]] = [np.nan, np.inf, -np.inf]
    values.flags.writeable = False  # as received frames are
    assert count_non_finite(values) == 3
    assert count_non_finite(np.array([1e308, -1e308, 5e-324])) == 0


def study_values(rows: int) -> np.ndarray:
    """(samples, timesteps, rows, cells) outputs, the bad values of BAD put in row 0."""
    values = np.random.default_rng(7).normal(3.0, 1.0, size=(SAMPLES, TIMESTEPS, rows, CELLS))
    for sample, (t, cells, value) in BAD.items():
        values[sample, t, 0, cells] = value
    return values


def accepted_mask(ranks: int) -> np.ndarray:
    """(samples, timesteps, cells): what each cell's rank keeps when every sample sends its
    timesteps in order. With no launcher a rank drops a sample at its first bad message, so it
    keeps only the timesteps before it; the other rank keeps the sample whole."""
    mask = np.ones((SAMPLES, TIMESTEPS, CELLS), dtype=bool)
    owner = np.arange(CELLS) * ranks // CELLS
    for sample, (t, cells, _) in BAD.items():
        for rank in set(owner[cells]):
            mask[sample, t:, owner == rank] = False
    return mask


@pytest.mark.parametrize("sobol", [False, True])
@pytest.mark.parametrize("ranks", [1, 2])
def test_non_finite_messages_are_refused_and_the_rest_is_exact(
    start_server,  # noqa: F811
    ranks: int,
    sobol: bool,
) -> None:
    rows = PARAMETERS + 2 if sobol else 1
    operations = "mean:variance:min:max" + (":sobol" if sobol else "")
    server = start_server(
        "-p",
        str(PARAMETERS),
        "-s",
        str(SAMPLES),
        "-t",
        str(TIMESTEPS),
        "-f",
        "u",
        "-o",
        operations,
        ranks=ranks,
    )
    values = study_values(rows)
    sender = RawSender(server.endpoint)
    try:
        for sample in range(SAMPLES):
            sender.handshake(sample * rows)
            for t in range(TIMESTEPS):
                for rank, piece in enumerate(np.array_split(values[sample, t], ranks, axis=1)):
                    sender.send(frame("u", sample, t, piece if sobol else piece[0]), rank)
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    server.assert_clean_exit()
    text = server.text()
    assert "non_finite: simulation 1 field 'u' timestep 0: 1 of" in text, text
    results = read_results(server.output / "u.nc")
    mask = accepted_mask(ranks)
    refused = sum(len({c * ranks // CELLS for c in cells}) for _, cells, _ in BAD.values())
    assert f"non_finite={refused}" in results.attributes["rejected_reasons"]
    general = values[:, :, : min(rows, 2), :]  # with Sobol, Y_A and Y_B of each group
    for t in range(TIMESTEPS):
        for cell in range(CELLS):
            kept = general[mask[:, t, cell], t, :, cell].reshape(-1)
            assert np.isfinite(kept).all()
            got = {name: results.variables[name][t, cell] for name in ("mean", "variance")}
            np.testing.assert_allclose(got["mean"], kept.mean(), rtol=1e-12)
            np.testing.assert_allclose(got["variance"], kept.var(ddof=1), rtol=1e-12)
            assert results.variables["min"][t, cell] == kept.min()
            assert results.variables["max"][t, cell] == kept.max()
        if sobol:
            for cell in range(CELLS):
                groups = values[mask[:, t, cell], t, :, cell : cell + 1]
                for name, expected in sobol_reference(groups, 0.95).items():
                    np.testing.assert_allclose(
                        results.variables[name][t][:, cell],
                        expected[:, 0],
                        rtol=1e-10,
                        atol=1e-13,
                        err_msg=name,
                    )
    for name, variable in results.variables.items():
        if variable.dtype.kind == "f" and not name.startswith("sobol"):
            assert np.isfinite(variable).all(), name


def test_the_launcher_hears_which_simulation_failed(start_server) -> None:  # noqa: F811
    """With a launcher the simulation is not dropped by the server: the launcher is told, with a
    TIMEOUT (Melissa's launcher relaunches it, then drops it after its retries) and melissa_nb's
    notice of why; a relaunch that sends finite data completes the study."""
    launcher = FakeLauncher(parameters=0)
    values = np.random.default_rng(3).normal(size=(2, 2, 4))
    try:
        server = start_server("-s", "2", "-t", "2", "-f", "u", "-o", "mean", *launcher.options())
        sender = RawSender(server.endpoint)
        try:
            launcher.pump(lambda: launcher.requests, "the options request")
            sender.handshake(0)
            sender.send(frame("u", 0, 0, values[0, 0]))
            sender.send(frame("u", 0, 1, np.full(4, np.nan)))
            notice = ConfidenceInterval(NON_FINITE, "u", 0.0)
            launcher.pump(lambda: notice in launcher.received, "the non-finite notice")
            assert Timeout(0) in launcher.received
            for sample in range(2):  # sample 0 relaunched: its first timestep is a duplicate
                sender.handshake(sample)
                for t in range(2):
                    sender.send(frame("u", sample, t, values[sample, t]))
            launcher.pump(lambda: server.process.poll() is not None, "the end of the study")
            assert server.wait() == 0, server.text()
        finally:
            sender.close()
    finally:
        launcher.close()
    results = read_results(server.output / "u.nc")
    np.testing.assert_allclose(results.variables["mean"], values.mean(axis=0), rtol=1e-12)
    assert results.attributes["rejected_reasons"] == "non_finite=1"
    assert results.attributes["messages_duplicate"] == 1
