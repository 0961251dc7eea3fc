"""Samples received together are folded together: one pass over a timestep's state for many
samples, bit for bit what folding them one by one in arrival order gives."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from harness import embedded, serve_until_finished
from references import FIELD_REFERENCES, THRESHOLDS

from melissa_nb.kernels import Quantiles
from melissa_nb.kernels.jit import BATCH
from melissa_nb.netcdf import read_results
from melissa_nb.protocol import encode_data_frame
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.receive.batches import FoldBatch
from melissa_nb.server.receive.slices import SliceStatistics

GENERAL = ("mean", "variance", "skewness", "kurtosis", "min", "max", "threshold", "quantile")
QUANTILES = (0.1, 0.5, 0.9)


def config(sobol: bool, samples: int) -> ServerConfig:
    return ServerConfig(
        sampling_size=samples,
        timesteps=3,
        field_names=("u",),
        operations=GENERAL + (("sobol",) if sobol else ()),
        parameters=3 if sobol else 0,
        thresholds=THRESHOLDS,
        quantiles=QUANTILES,
        study_id=f"b{uuid.uuid4().hex[:8]}",
    )


@pytest.mark.parametrize("sobol", [False, True], ids=["samples", "sobol_groups"])
def test_a_batch_folds_exactly_as_one_by_one(rng: np.random.Generator, sobol: bool) -> None:
    """Timesteps interleaved, more samples of one timestep than one kernel pass takes."""
    samples, cells = 2 * BATCH + 3, 29
    settings = config(sobol, samples)
    vectors = settings.group_size if sobol else 1
    data = rng.normal(1.0, 2.0, size=(samples, settings.timesteps, vectors, cells))
    arrivals = [(s, t) for s in rng.permutation(samples) for t in range(settings.timesteps)]
    one_by_one = SliceStatistics(settings, 0, "u", 0, cells)
    batched = SliceStatistics(settings, 0, "u", 1, cells)
    try:
        for s, t in arrivals:
            if sobol:
                one_by_one.update_groups(t, [data[s, t]], [int(s)])
            else:
                one_by_one.update_samples(t, [data[s, t, 0]], [int(s)])
        batch = FoldBatch(sobol, limit_bytes=data.nbytes + 1)  # one fold at the end
        for s, t in arrivals:
            batch.add(batched, t, data[s, t], int(s))
            assert not batch.full
        assert batch.fold() == settings.timesteps  # one pass per timestep
        assert batch.bytes == 0 and batch.fold() == 0
        assert batched.sample_count(0) == samples * (2 if sobol else 1)
        expected, got = state(one_by_one), state(batched)
    finally:
        one_by_one.release()
        batched.release()
    for name, array in expected.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)


def state(statistics: SliceStatistics) -> dict[str, np.ndarray]:
    """Copies of a slice's state arrays (its block's views must not outlive it)."""
    return {
        name: array.copy() for name, array in statistics.block.arrays.items() if name != "received"
    }


def test_a_batch_is_full_at_its_bound(rng: np.random.Generator) -> None:
    settings = config(False, 4)
    statistics = SliceStatistics(settings, 0, "u", 0, 10)
    try:
        batch = FoldBatch(False, limit_bytes=3 * 80)
        for s in range(3):
            assert not batch.full
            batch.add(statistics, 0, rng.normal(size=(1, 10)), s)
        assert batch.full and batch.bytes == 240
        assert batch.fold() == 1 and not batch.full
        assert statistics.sample_count(0) == 3
    finally:
        statistics.release()


@pytest.mark.timeout(60)
def test_embedded_server_folds_a_backlog_in_few_passes(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """Every frame queued before the loop runs: bursts of frames, results as numpy's."""
    simulations, timesteps, cells = 48, 2, 23
    data = rng.normal(2.0, 1.5, size=(simulations, timesteps, cells))
    server = embedded(
        tmp_path,
        sampling_size=simulations,
        timesteps=timesteps,
        field_names=("u",),
        operations=GENERAL,
        thresholds=THRESHOLDS,
        quantiles=QUANTILES,
    )
    arrivals = [(s, t) for s in rng.permutation(simulations) for t in range(timesteps)]
    frames = [bytes(encode_data_frame(t, s, 0, "u", data[s, t])) for s, t in arrivals]
    frames.insert(30, frames[7])  # a duplicate inside a burst is still dropped
    try:
        seen = serve_until_finished(server, frames)
        counts = server.counts
    finally:
        code = server.stop()
    assert code == 0
    assert len(seen) == counts["accepted"] == simulations * timesteps
    assert counts["duplicates"] == 1
    assert counts["kernel_passes"] < counts["accepted"]  # samples were folded together
    results = read_results(tmp_path / "u.nc")
    ids = np.arange(simulations)
    for t in range(timesteps):
        for name, reference in FIELD_REFERENCES.items():
            np.testing.assert_allclose(
                results.variables[name][t],
                reference(data[:, t], ids),
                rtol=1e-12,
                atol=1e-12,
                err_msg=name,
            )
        quantiles = Quantiles(cells, QUANTILES)  # order matters: the arrival order
        for s, step in arrivals:
            if step == t:
                quantiles.update(np.ascontiguousarray(data[s, t]))
        np.testing.assert_array_equal(results.variables["quantile"][t], quantiles.quantile)
