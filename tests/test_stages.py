"""User stages on a live embedded server: a Numba stage against the same computation in batch.

Frames go over a real PUSH socket to the server's data socket; the stage's state lives in a
shared-memory block the test reads back.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from harness import WAIT, announce, embedded, serve_until_finished
from numba import njit

from melissa_nb.errors import ConfigurationError
from melissa_nb.protocol import encode_data_frame
from melissa_nb.server.live.state import list_blocks, reading
from melissa_nb.server.results.status import read_progress


@njit(cache=False)
def sum_and_peak(values, timestep, simulation_id, total, peak, peak_simulation):
    """Per timestep and cell: sum over simulations, largest value and who sent it."""
    for cell in range(values.shape[0]):
        total[timestep, cell] += values[cell]
        if values[cell] > peak[timestep, cell] or peak_simulation[timestep, cell] == 0:
            peak[timestep, cell] = values[cell]
            peak_simulation[timestep, cell] = simulation_id + 1  # 0: nothing yet


def failing_stage(values, timestep, simulation_id):
    if simulation_id == 1:
        raise ValueError("simulation 1 is not welcome")


@pytest.mark.timeout(60)
def test_numba_stage_matches_batch_and_its_state_is_shared_memory(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    simulations, timesteps, cells = 6, 4, 10
    samples = rng.normal(size=(simulations, timesteps, cells))
    server = embedded(
        tmp_path, sampling_size=simulations, timesteps=timesteps, field_names=("u", "v")
    )
    try:
        stage = server.add_stage(
            sum_and_peak,
            state={"total": (timesteps,), "peak": (timesteps,), "peak_simulation": (timesteps,)},
            fields=["u"],
        )
        frames = [
            bytes(encode_data_frame(t, s, 0, field, samples[s, t] * scale))
            for s in rng.permutation(simulations)
            for t in range(timesteps)
            for field, scale in (("u", 1.0), ("v", 2.0))
        ]
        frames.append(frames[3])  # a duplicate: the stage must not see it
        seen = serve_until_finished(server, frames)
        assert len(seen) == 2 * simulations * timesteps
        state = server.stage_state(stage)
        assert list(state) == [("u", 0)]  # one field, one client slice
        # copies: the views must not outlive the server's blocks
        arrays = {name: array.copy() for name, array in state.pop(("u", 0)).items()}
        np.testing.assert_allclose(arrays["total"], samples.sum(axis=0), rtol=1e-12)
        np.testing.assert_array_equal(arrays["peak"], samples.max(axis=0))
        np.testing.assert_array_equal(arrays["peak_simulation"] - 1, samples.argmax(axis=0))
        name = f"{server.config.shm_prefix()}r0_stage_sum_and_peak_u_c0"
        with reading(name) as block:  # another process could attach the same way
            assert block.metadata["kind"] == "stage"
            np.testing.assert_array_equal(block.arrays["peak"], samples.max(axis=0))
        # status lists statistics slices only
        progress = read_progress(tmp_path)
        assert {(item.field, item.client_rank) for item in progress.slices} == {
            ("u", 0),
            ("v", 0),
        }
        assert server.counts["stage_errors"] == 0
        assert server.counts["duplicates"] == 1
    finally:
        code = server.stop()
    assert code == 0
    assert list_blocks(server.config.shm_prefix()) == []


@pytest.mark.timeout(60)
def test_a_failing_stage_is_counted_and_the_study_completes(tmp_path: Path) -> None:
    server = embedded(
        tmp_path, sampling_size=3, timesteps=2, field_names=("u",), operations=("mean",)
    )
    try:
        server.add_stage(failing_stage)
        frames = [
            bytes(encode_data_frame(t, s, 0, "u", np.full(3, float(s))))
            for s in range(3)
            for t in range(2)
        ]
        seen = serve_until_finished(server, frames)
        assert len(seen) == 6  # run() still hands over the messages the stage failed on
        assert server.counts["stage_errors"] == 2
    finally:
        code = server.stop()
    assert code == 0
    from melissa_nb.netcdf import read_results

    np.testing.assert_array_equal(read_results(tmp_path / "u.nc").variables["mean"], 1.0)


def test_stage_registration_is_checked(tmp_path: Path) -> None:
    server = embedded(tmp_path, sampling_size=1, timesteps=1, field_names=("u",))
    try:
        with pytest.raises(ConfigurationError, match="unknown field 'w'"):
            server.add_stage(failing_stage, fields=["w"])
        with pytest.raises(ConfigurationError, match="letters, digits and _"):
            server.add_stage(lambda values, t, s: None)
        with pytest.raises(ConfigurationError, match="leading shape"):
            server.add_stage(failing_stage, state={"x": (0,)})
        server.add_stage(failing_stage)
        with pytest.raises(ConfigurationError, match="already registered"):
            server.add_stage(failing_stage)
    finally:
        server.close()
    assert list_blocks(server.config.shm_prefix()) == []


@pytest.mark.timeout(60)
def test_stage_state_is_checkpointed_and_restored(tmp_path: Path, rng: np.random.Generator) -> None:
    """Half the data, stop (an aborted study is checkpointed), restart, the rest: as batch."""
    simulations, timesteps, cells = 4, 3, 5
    samples = rng.normal(size=(simulations, timesteps, cells))
    state = {"total": (timesteps,), "peak": (timesteps,), "peak_simulation": (timesteps,)}

    def frames(ids):
        return [
            bytes(encode_data_frame(t, s, 0, "u", samples[s, t]))
            for s in ids
            for t in range(timesteps)
        ]

    settings = dict(sampling_size=simulations, timesteps=timesteps, field_names=("u",))
    first = embedded(tmp_path / "first", **settings)
    first.add_stage(sum_and_peak, state=state)
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(first.data_address)
    announce(first, [0, 1])
    for frame in frames([0, 1]):
        push.send(frame)
    deadline = time.monotonic() + WAIT
    while first.counts["accepted"] < 2 * timesteps:
        assert time.monotonic() < deadline
        first.run(timeout=100)
    push.close()
    context.term()
    assert first.stop() == 1  # incomplete: results of what arrived, and a checkpoint
    checkpoint = tmp_path / "first" / "checkpoint"
    second = embedded(tmp_path / "second", restart_dir=checkpoint, **settings)
    try:
        stage = second.add_stage(sum_and_peak, state=state)
        restored = second.stage_state(stage)[("u", 0)]["total"].copy()
        np.testing.assert_allclose(restored, samples[:2].sum(axis=0), rtol=1e-12)
        seen = serve_until_finished(second, frames([2, 3]))
        assert len(seen) == 2 * timesteps
        arrays = {name: array.copy() for name, array in second.stage_state(stage)[("u", 0)].items()}
    finally:
        code = second.stop()
    assert code == 0
    np.testing.assert_allclose(arrays["total"], samples.sum(axis=0), rtol=1e-12)
    np.testing.assert_array_equal(arrays["peak"], samples.max(axis=0))
    np.testing.assert_array_equal(arrays["peak_simulation"] - 1, samples.argmax(axis=0))
