"""Received-timestep bitsets, duplicates, the completion rule and the end-of-study vote."""

from __future__ import annotations

import numpy as np
import pytest

from melissa_nb.server.receive.members import MemberAssembly
from melissa_nb.server.receive.tracking import SliceSteps, Tracker, Vote, summary_width


def test_bitset_marks_each_step_once_across_word_boundaries() -> None:
    steps = SliceSteps(ids=3, timesteps=130, vect_size=4)
    for t in (0, 63, 64, 129):
        assert not steps.has(2, t)
        assert not steps.add(2, t), "4 of 130 timesteps do not complete it"
        assert steps.has(2, t)
    assert not steps.has(1, 63) and not steps.has(2, 65)
    assert steps.received.tolist() == [0, 0, 4]
    completed = [steps.add(1, t) for t in range(130)]
    assert completed == [False] * 129 + [True] and steps.received[1] == 130


def test_finished_needs_every_field_and_every_learned_slice() -> None:
    tracker = Tracker(("u", "v"), timesteps=2, simulations=2)
    tracker.learn_slice("u", 0, 5)
    for t in range(2):
        tracker.record("u", 0, 0, t)
    assert not tracker.finished()[0], "field v never arrived"
    tracker.learn_slice("v", 0, 3)
    tracker.record("v", 0, 0, 0)
    tracker.record("v", 0, 0, 1)
    assert tracker.finished().tolist() == [True, False]
    assert not tracker.record("v", 0, 0, 1), "a duplicate is refused"
    assert tracker.newly_finished(tracker.finished()) == [0]
    assert tracker.newly_finished(tracker.finished()) == []
    # A slice learned later (another client rank) makes the simulation unfinished again.
    tracker.learn_slice("u", 1, 2)
    assert not tracker.finished()[0]
    tracker.drop(1)
    assert not tracker.all_done()
    tracker.record("u", 1, 0, 0)
    tracker.record("u", 1, 0, 1)
    assert tracker.all_done()


def test_silent_simulations_are_the_running_unfinished_ones() -> None:
    tracker = Tracker(("u",), timesteps=1, simulations=3)
    tracker.learn_slice("u", 0, 1)
    tracker.touch(0, now=10.0)
    tracker.touch(1, now=10.0)
    tracker.record("u", 0, 1, 0)
    assert tracker.silent(now=12.0, timeout=1.0) == [0]
    assert tracker.silent(now=10.5, timeout=1.0) == []


def rows_for(layouts: list[list[tuple[int, int, int, int]]], done=True, clients=0) -> np.ndarray:
    """Summary rows of one simulation: per rank, per field (cells, first, last, clients), then
    the done mask and the announced mask (one word each)."""
    rows = []
    for rank, fields in enumerate(layouts):
        row = [int(done), 0, clients if rank == 0 else 0, 0]
        for layout in fields:
            row += list(layout)
        rows.append(row + [int(done), 1])
    return np.asarray(rows, dtype=np.int64)


def study_complete(rows: np.ndarray, fields: int) -> tuple[bool, bool]:
    vote = Vote.count(rows, fields, simulations=1)
    return vote.end, vote.aborted


def test_study_ends_only_when_layouts_match_the_partition() -> None:
    # 13 cells over 2 server ranks: blocks of 7 and 6; client ranks of 5 and 8 cells.
    complete = [[(7, 0, 1, 2)], [(6, 1, 1, 1)]]
    assert study_complete(rows_for(complete, clients=2), 1) == (True, False)
    assert study_complete(rows_for(complete, done=False, clients=2), 1) == (False, False)
    # Melissa 0.6's defect: only client rank 0's data has arrived (5 cells on rank 0, rank 1
    # has nothing yet); both ranks think their learned slices are complete.
    early = [[(5, 0, 0, 1)], [(0, 0, -1, 0)]]
    assert study_complete(rows_for(early, clients=2), 1) == (False, False)
    # Sizes that happen to fit the partition but miss client rank 2 of 3.
    missing_last = [[(7, 0, 1, 2)], [(6, 1, 1, 1)]]
    assert study_complete(rows_for(missing_last, clients=3), 1) == (False, False)
    # Client ranks seen out of sequence on a rank.
    gap = [[(7, 0, 2, 2)], [(6, 2, 2, 1)]]
    assert study_complete(rows_for(gap, clients=3), 1) == (False, False)


def test_every_field_must_agree_and_abort_wins() -> None:
    fields = [[(2, 0, 0, 1), (3, 0, 0, 1)], [(2, 0, 0, 1), (1, 0, 0, 1)]]
    assert study_complete(rows_for(fields, clients=1), 2) == (False, False)
    fields[1][1] = (3, 0, 0, 1)
    assert study_complete(rows_for(fields, clients=1), 2) == (True, False)
    aborting = rows_for(fields, done=False, clients=1)
    aborting[1, 1] = 1
    assert study_complete(aborting, 2) == (True, True)


def test_member_assembly_completes_groups_and_respects_its_bound() -> None:
    assembly = MemberAssembly(group_size=3, limit_bytes=2 * 3 * 4 * 8)
    vectors = np.arange(12.0).reshape(3, 4)
    assert assembly.add(("u", 0, 5, 0), 2, vectors[2]) == (MemberAssembly.ACCEPTED, None)
    assert assembly.add(("u", 0, 5, 0), 2, vectors[2])[0] == MemberAssembly.DUPLICATE
    assert assembly.add(("u", 0, 6, 0), 0, vectors[0])[0] == MemberAssembly.ACCEPTED
    assert assembly.add(("u", 0, 7, 0), 0, vectors[0])[0] == MemberAssembly.FULL
    assembly.add(("u", 0, 5, 0), 0, vectors[0])
    outcome, group = assembly.add(("u", 0, 5, 0), 1, vectors[1])
    assert outcome == MemberAssembly.ACCEPTED
    np.testing.assert_array_equal(group, vectors)
    assert len(assembly) == 1 and assembly.used_bytes == 3 * 4 * 8
    assembly.discard_group(6)
    assert len(assembly) == 0 and assembly.used_bytes == 0


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_real_tracker_summaries_vote_like_the_partition(ranks: int) -> None:
    from melissa_nb.partition import overlaps

    total, client_sizes = 11, (4, 7)
    trackers = [Tracker(("u",), timesteps=1, simulations=1) for _ in range(ranks)]
    start = 0
    for client_rank, size in enumerate(client_sizes):
        for rank, _, piece in overlaps(start, size, total, ranks):
            trackers[rank].learn_slice("u", client_rank, piece)
            trackers[rank].record("u", client_rank, 0, 0)
        start += size
    trackers[0].client_comm_size = len(client_sizes)
    rows = np.stack([tracker.summary(abort=False) for tracker in trackers])
    assert study_complete(rows, 1) == (True, False)


def test_vote_reports_simulations_finished_on_every_rank() -> None:
    simulations = 70  # two mask words
    trackers = [Tracker(("u",), timesteps=1, simulations=simulations) for _ in range(2)]
    for rank, tracker in enumerate(trackers):
        tracker.learn_slice("u", 0, 3 + rank)
        for simulation in range(simulations):
            if simulation % (rank + 2) == 0:
                tracker.record("u", 0, simulation, 0)
    trackers[0].drop(69)
    trackers[1].drop(69)
    rows = np.stack([tracker.summary(abort=False) for tracker in trackers])
    assert rows.shape == (2, summary_width(1, simulations))
    vote = Vote.count(rows, 1, simulations)
    assert not vote.end and not vote.aborted
    assert not vote.layouts_agree, "cells 3 + 4 do not split into blocks 4, 3"
    assert not vote.done_everywhere.any(), "nothing counts as finished while layouts disagree"
    trackers[1] = Tracker(("u",), timesteps=1, simulations=simulations)
    trackers[1].drop(69)
    trackers[1].learn_slice("u", 1, 3)
    for simulation in range(simulations):
        if simulation % 3 == 0:
            trackers[1].record("u", 1, simulation, 0)
    trackers[0].client_comm_size = 2
    vote = Vote.count(np.stack([t.summary(abort=False) for t in trackers]), 1, simulations)
    assert vote.layouts_agree
    expected = [(s % 6 == 0) or s == 69 for s in range(simulations)]
    assert vote.done_everywhere.tolist() == expected
