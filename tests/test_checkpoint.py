"""Checkpoint files: round trips, damage detection and fallback, refusals, repartition by cells."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from melissa_nb.errors import CheckpointDamaged, ConfigurationError
from melissa_nb.partition import rank_cells
from melissa_nb.server.checkpoint.files import (
    checkpoint_path,
    load_rank_file,
    read_file,
    write_atomically,
)
from melissa_nb.server.checkpoint.restart import finished_in_checkpoint, load_restart
from melissa_nb.server.checkpoint.snapshot import Snapshot, take_snapshot
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.receive.members import MemberAssembly
from melissa_nb.server.receive.restored import received_counts
from melissa_nb.server.receive.slices import SliceStatistics
from melissa_nb.server.receive.tracking import Tracker

TIMESTEPS = 3
LOG = logging.getLogger("test_checkpoint")


def study(**overrides: object) -> ServerConfig:
    settings = dict(
        sampling_size=6,
        timesteps=TIMESTEPS,
        field_names=("u", "v"),
        parameters=2,
        operations=("mean", "variance", "kurtosis", "min", "max", "threshold", "quantile", "sobol"),
        thresholds=(0.5,),
        quantiles=(0.1, 0.9),
        study_id=f"ck{uuid.uuid4().hex[:8]}",
    )
    settings.update(overrides)
    return ServerConfig(**settings)


class FedRank:
    """A rank's slices, tracker and member buffers fed with groups, as the loop feeds them."""

    def __init__(self, config: ServerConfig, rank: int, layout: dict[int, int]) -> None:
        self.config = config
        self.rank = rank
        self.tracker = Tracker(config.field_names, config.timesteps, config.sampling_size)
        self.members = MemberAssembly(config.group_size, 1 << 20)
        self.slices: dict[tuple[str, int], SliceStatistics] = {}
        for field in config.field_names:
            for client_rank, cells in layout.items():
                statistics = SliceStatistics(config, rank, field, client_rank, cells)
                self.slices[(field, client_rank)] = statistics
                self.tracker.learn_slice(field, client_rank, cells, statistics.received)

    def feed(self, rng: np.random.Generator, groups: range, timesteps: range) -> None:
        for (field, client_rank), statistics in self.slices.items():
            for group in groups:
                for t in timesteps:
                    values = rng.normal(3.0, 2.0, (self.config.group_size, statistics.cells))
                    statistics.update_groups(t, [values], [group])
                    self.tracker.record(field, client_rank, group, t)

    def snapshot(self, ranks: int) -> Snapshot:
        return take_snapshot(
            self.config, self.rank, ranks, self.slices, self.tracker, self.members, {"messages": 7}
        )

    def release(self) -> None:
        self.tracker.release()  # its received counts are views of the slice blocks
        for statistics in self.slices.values():
            statistics.release()


@pytest.fixture
def fed() -> Iterator[list[FedRank]]:
    made: list[FedRank] = []
    yield made
    for rank in made:
        rank.release()


def test_round_trip_keeps_every_array_bit_for_bit(tmp_path: Path, rng, fed) -> None:
    config = study()
    rank = FedRank(config, 0, {0: 5, 1: 4})
    fed.append(rank)
    rank.feed(rng, range(3), range(TIMESTEPS))
    rank.tracker.drop(5)
    rank.tracker.touch(4, 1.0)
    rank.tracker.job_ids[2] = "job-2"
    rank.members.add(("u", 0, 4, 1), 1, rng.normal(size=5))
    snapshot = rank.snapshot(1)
    write_atomically(tmp_path, 0, snapshot)
    back = read_file(checkpoint_path(tmp_path, 0))
    assert back.meta == snapshot.meta
    assert sorted(back.arrays) == sorted(snapshot.arrays)
    for name, array in snapshot.arrays.items():
        np.testing.assert_array_equal(back.arrays[name], array, err_msg=name)
        assert back.arrays[name].dtype == array.dtype, name
    for (field, client_rank), statistics in rank.slices.items():
        k = next(
            k
            for k, item in enumerate(back.meta["slices"])
            if (item["field"], item["client_rank"]) == (field, client_rank)
        )
        for name, array in statistics.block.arrays.items():
            if name != "received":
                np.testing.assert_array_equal(back.arrays[f"slice{k}/{name}"], array)
        np.testing.assert_array_equal(
            received_counts(back.arrays[f"slice{k}/bits"]), statistics.received
        )
    restored = load_restart(tmp_path, config, 0, 1)
    assert restored.dropped.tolist() == [False] * 5 + [True]
    assert restored.started[4] and restored.job_ids == {2: "job-2"}
    assert [key for key, _, _ in restored.members] == [("u", 0, 4, 1)]
    assert restored.counts["messages"] == 7


def test_the_previous_checkpoint_survives_and_serves_when_the_newest_is_damaged(
    tmp_path: Path, rng, fed, caplog
) -> None:
    config = study()
    rank = FedRank(config, 0, {0: 4})
    fed.append(rank)
    rank.feed(rng, range(2), range(TIMESTEPS))
    older = rank.snapshot(1)
    write_atomically(tmp_path, 0, older)
    rank.feed(rng, range(2, 4), range(TIMESTEPS))
    write_atomically(tmp_path, 0, rank.snapshot(1))
    newest = checkpoint_path(tmp_path, 0)
    assert read_file(checkpoint_path(tmp_path, 0, previous=True)).digest() == older.digest()

    size = newest.stat().st_size
    with newest.open("r+b") as handle:  # truncated
        handle.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        assert load_rank_file(tmp_path, 0, LOG).digest() == older.digest()
    assert "using the previous checkpoint" in caplog.text

    write_atomically(tmp_path, 0, rank.snapshot(1))  # rotates the truncated file away
    write_atomically(tmp_path, 0, rank.snapshot(1))
    data = bytearray(newest.read_bytes())
    arrays = rank.snapshot(1).arrays
    target = arrays["slice0/sobol.m2"].tobytes()[:16]
    at = data.find(target)
    assert at > 0, "the state array is stored uncompressed"
    data[at] ^= 0xFF  # one flipped byte inside an array: only the checksum can see it
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointDamaged, match="checksum"):
        read_file(newest)
    assert (
        load_rank_file(tmp_path, 0, LOG).digest()
        == read_file(checkpoint_path(tmp_path, 0, previous=True)).digest()
    )

    checkpoint_path(tmp_path, 0, previous=True).write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigurationError, match="no valid checkpoint of rank 0"):
        load_rank_file(tmp_path, 0, LOG)


def test_checkpoints_of_another_study_or_format_are_refused(tmp_path: Path, rng, fed) -> None:
    config = study()
    rank = FedRank(config, 0, {0: 3})
    fed.append(rank)
    rank.feed(rng, range(1), range(1))
    write_atomically(tmp_path, 0, rank.snapshot(1))
    with pytest.raises(ConfigurationError, match="sampling_size is 6 there, 7 here"):
        load_restart(tmp_path, study(sampling_size=7), 0, 1)
    with pytest.raises(ConfigurationError, match="quantiles"):
        load_restart(tmp_path, study(quantiles=(0.1, 0.5)), 0, 1)
    snapshot = rank.snapshot(1)
    snapshot.meta["format_version"] = 99
    write_atomically(tmp_path / "future", 0, snapshot)
    with pytest.raises(ConfigurationError, match="format version 99"):
        load_restart(tmp_path / "future", config, 0, 1)
    with pytest.raises(ConfigurationError, match="no valid checkpoint"):
        load_restart(tmp_path / "nothing", config, 0, 1)


def whole_field(fed_ranks: list[FedRank], field: str, name: str) -> np.ndarray:
    """One state array over the global cells: every rank's slices in rank and client order."""
    parts = []
    for rank in fed_ranks:
        for client_rank in sorted(c for f, c in rank.slices if f == field):
            parts.append(rank.slices[(field, client_rank)].block.arrays[name])
    return np.concatenate(parts, axis=-1)


def restored_field(restored: list, field: str, name: str) -> np.ndarray:
    parts = []
    for ranks_slices in restored:
        for item in sorted(ranks_slices, key=lambda item: item.client_rank):
            if item.field == field:
                parts.append(item.arrays[name])
    return np.concatenate(parts, axis=-1)


@pytest.mark.parametrize("new_ranks", [1, 2, 3])
def test_repartition_cuts_exact_cell_ranges(tmp_path: Path, rng, fed, new_ranks: int) -> None:
    """Two old ranks, two client ranks of 4 and 5 cells (client 1 straddles the boundary)."""
    config = study()
    total = 9
    layouts = [{0: 4, 1: 0}, {1: 4}]  # old rank 0: client 0 (4) + first cell of client 1
    layouts[0][1] = rank_cells(total, 2, 0)[1] - 4
    old = [FedRank(config, r, layouts[r]) for r in range(2)]
    fed.extend(old)
    for rank in old:
        rank.feed(np.random.default_rng(5), range(4), range(TIMESTEPS))
        write_atomically(tmp_path, rank.rank, rank.snapshot(2))
    restored = [load_restart(tmp_path, config, r, new_ranks).slices for r in range(new_ranks)]
    for r, slices in enumerate(restored):
        low, high = rank_cells(total, new_ranks, r)
        assert sum(item.cells for item in slices if item.field == "u") == high - low
    for field in config.field_names:
        for name in ("general.central", "general.quantile", "sobol.comoment_total", "sobol.count"):
            expected = whole_field(old, field, name)
            got = restored_field(restored, field, name)
            if name.endswith("count"):
                assert (got == expected[..., :1]).all()
            else:
                np.testing.assert_array_equal(got, expected, err_msg=f"{field} {name}")


@pytest.mark.parametrize("new_ranks", [1, 2, 3])
def test_repartition_keeps_partly_assembled_groups(
    tmp_path: Path, rng, fed, new_ranks: int
) -> None:
    """Single members being assembled on two old ranks (client 1 straddles them): a new rank
    keeps each group with the members every old rank it takes cells from had, values cut like
    the slices; a group some of those ranks had nothing of is not kept."""
    config = study()
    total = 9
    layouts = [{0: 4, 1: rank_cells(total, 2, 0)[1] - 4}, {1: total - rank_cells(total, 2, 0)[1]}]
    old = [FedRank(config, r, layouts[r]) for r in range(2)]
    fed.extend(old)
    group_size = config.group_size
    whole = {key: rng.normal(size=(group_size, 4 if key[1] == 0 else 5)) for key in KEYS}
    held = {  # (old rank, key) -> members received there
        (0, KEYS[0]): (0, 1, 2),
        (1, KEYS[0]): (1, 2, 3),
        (0, KEYS[1]): (0, 3),  # client 0 lies on old rank 0 only
        (0, KEYS[2]): (1,),  # old rank 1 has none of this group's members
    }
    for (old_rank, key), members in held.items():
        start = 0 if key[1] == 0 or old_rank == 0 else layouts[0][1]
        cells = old[old_rank].slices[(key[0], key[1])].cells
        for member in members:
            old[old_rank].members.add(key, member, whole[key][member, start : start + cells].copy())
    for rank in old:
        write_atomically(tmp_path, rank.rank, rank.snapshot(2))
    for new_rank in range(new_ranks):
        low, high = rank_cells(total, new_ranks, new_rank)
        kept = {
            key: (values, received)
            for key, values, received in load_restart(tmp_path, config, new_rank, new_ranks).members
        }
        for key in KEYS:
            client_start = 0 if key[1] == 0 else 4
            first, last = max(low, client_start), min(high, client_start + whole[key].shape[1])
            if last <= first:
                assert key not in kept
                continue
            touched = [
                r
                for r in range(2)
                if rank_cells(total, 2, r)[0] < last and rank_cells(total, 2, r)[1] > first
            ]
            members = set.intersection(*(set(held.get((r, key), ())) for r in touched))
            if not members:
                assert key not in kept, (new_rank, key)
                continue
            values, received = kept[key]
            assert set(np.flatnonzero(received)) == members
            for member in members:
                np.testing.assert_array_equal(
                    values[member], whole[key][member, first - client_start : last - client_start]
                )


KEYS = (("u", 1, 4, 1), ("u", 0, 5, 0), ("v", 1, 3, 2))


def test_repartition_keeps_ranks_that_disagree_on_received_steps_apart(tmp_path: Path, fed) -> None:
    """Old rank 0 received group 1, old rank 1 not yet: one new rank gets each old rank's cells
    of the client slice as a segment (its own state and bits); old ranks that agree, one."""
    config = study()
    old = [FedRank(config, 0, {0: 3}), FedRank(config, 1, {0: 3})]
    fed.extend(old)
    old[0].feed(np.random.default_rng(1), range(2), range(TIMESTEPS))
    old[1].feed(np.random.default_rng(1), range(1), range(TIMESTEPS))
    for rank in old:
        write_atomically(tmp_path, rank.rank, rank.snapshot(2))
    restored = load_restart(tmp_path, config, 0, 1).slices
    assert [(item.field, item.offset, item.cells) for item in restored] == [
        ("u", 0, 3),
        ("u", 3, 3),
        ("v", 0, 3),
        ("v", 3, 3),
    ]
    for item, rank in zip(restored[:2], old, strict=True):
        steps = rank.tracker.slices["u"][0]
        np.testing.assert_array_equal(item.bits, steps.bits)
        np.testing.assert_array_equal(
            item.arrays["sobol.m2"], rank.slices[("u", 0)].block.arrays["sobol.m2"]
        )
    assert len(load_restart(tmp_path, config, 1, 2).slices) == 2  # same ranks: no cutting


def test_finished_in_checkpoint_needs_every_rank(tmp_path: Path, fed) -> None:
    config = study()
    old = [FedRank(config, 0, {0: 3}), FedRank(config, 1, {0: 3})]
    fed.extend(old)
    old[0].feed(np.random.default_rng(1), range(3), range(TIMESTEPS))
    old[1].feed(np.random.default_rng(1), range(2), range(TIMESTEPS))
    old[1].tracker.drop(5)
    old[0].tracker.drop(5)
    for rank in old:
        write_atomically(tmp_path, rank.rank, rank.snapshot(2))
    assert finished_in_checkpoint(
        tmp_path, config.field_names, TIMESTEPS, config.sampling_size
    ).tolist() == [1, 1, 0, 0, 0, 1]


def test_an_interrupted_write_leaves_the_previous_file(tmp_path: Path, rng, fed) -> None:
    config = study()
    rank = FedRank(config, 0, {0: 3})
    fed.append(rank)
    rank.feed(rng, range(1), range(1))
    first = rank.snapshot(1)
    write_atomically(tmp_path, 0, first)
    # A crash mid-write leaves only the temporary file behind: the newest is untouched.
    temporary = checkpoint_path(tmp_path, 0).with_name("checkpoint.r0.nc.tmp")
    temporary.write_bytes(b"half a file")
    os.sync()
    assert load_rank_file(tmp_path, 0).digest() == first.digest()
    write_atomically(tmp_path, 0, rank.snapshot(1))
    assert not temporary.exists()


def test_checkpointer_timing_requests_sigusr1_and_failed_writes(tmp_path: Path, rng, fed) -> None:
    import signal

    from melissa_nb.server.checkpoint.writer import Checkpointer

    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    config = study(check_interval=10.0, checkpoint_dir=blocker / "checkpoints")
    rank = FedRank(config, 0, {0: 3})
    fed.append(rank)
    previous = signal.getsignal(signal.SIGUSR1)
    checkpoints = Checkpointer(config, 0, LOG, now=100.0)
    try:
        assert not checkpoints.due(105.0) and checkpoints.due(110.0)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert checkpoints.due(101.0), "SIGUSR1 asks for one at once"
        checkpoints.start(rank.snapshot(1), now=101.0)
        checkpoints.wait()
        assert (checkpoints.failures, checkpoints.written) == (1, 0), "logged, not raised"
        assert not checkpoints.due(102.0) and checkpoints.due(111.0)
        checkpoints.request()
        assert checkpoints.due(102.0)
    finally:
        checkpoints.close()
    assert signal.getsignal(signal.SIGUSR1) is previous
    good = Checkpointer(study(checkpoint_dir=tmp_path / "ok"), 0, LOG, now=0.0)
    try:
        good.write_now(rank.snapshot(1))
        assert good.written == 1 and checkpoint_path(tmp_path / "ok", 0).exists()
    finally:
        good.close()


def test_rank_files_of_different_runs_are_refused(tmp_path: Path, fed) -> None:
    config = study()
    old = [FedRank(config, 0, {0: 3}), FedRank(config, 1, {0: 3})]
    fed.extend(old)
    write_atomically(tmp_path, 0, old[0].snapshot(2))
    write_atomically(tmp_path, 1, old[1].snapshot(3))  # left by a run on three ranks
    with pytest.raises(
        ConfigurationError, match="rank 1 was written by 3 ranks, that of rank 0 by 2"
    ):
        load_restart(tmp_path, config, 0, 1)


@given(
    client_sizes=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    old_ranks=st.integers(1, 3),
    new_ranks=st.integers(1, 4),
)
@example(client_sizes=[1], old_ranks=3, new_ranks=2)  # old ranks without any cell
@example(client_sizes=[2, 3], old_ranks=1, new_ranks=4)
@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_repartition_of_any_layout_equals_the_global_state(
    tmp_path_factory, client_sizes: list[int], old_ranks: int, new_ranks: int
) -> None:
    """Any client decomposition, any old and new rank counts (ranks with no cells included)."""
    from melissa_nb.partition import overlaps

    directory = tmp_path_factory.mktemp("any")
    config = study(field_names=("u",))
    total = sum(client_sizes)
    layouts: list[dict[int, int]] = [{} for _ in range(old_ranks)]
    start = 0
    for client_rank, size in enumerate(client_sizes):
        for rank, _, piece in overlaps(start, size, total, old_ranks):
            layouts[rank][client_rank] = piece
        start += size
    old = [FedRank(config, r, layouts[r]) for r in range(old_ranks)]
    try:
        for rank in old:
            rank.feed(np.random.default_rng(rank.rank), range(4), range(TIMESTEPS))
            write_atomically(directory, rank.rank, rank.snapshot(old_ranks))
        restored = [load_restart(directory, config, r, new_ranks).slices for r in range(new_ranks)]
        for name in ("general.central", "general.min_simulation", "sobol.m2"):
            np.testing.assert_array_equal(
                restored_field(restored, "u", name), whole_field(old, "u", name), err_msg=name
            )
        for r, slices in enumerate(restored):
            low, high = rank_cells(total, new_ranks, r)
            assert sum(item.cells for item in slices) == high - low
    finally:
        for rank in old:
            rank.release()
