"""Restarts from checkpoints with real server processes: SIGKILL, damaged files, other rank counts.

Every restarted study is compared variable by variable with an uninterrupted run of the same
groups (1e-12 relative; quantiles too: Robbins-Monro folds every timestep's samples in the same
order in both runs, since re-sent timesteps already counted are dropped as duplicates).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_harness import (
    FIELDS,
    ROWS,
    TIMESTEPS,
    ServerProcess,
    Servers,
    assert_same_results,
    group_values,
    no_blocks,
    send_groups,
)
from harness import wait_for
from test_server_e2e import RawSender, frame

from melissa_nb.netcdf import read_results
from melissa_nb.partition import rank_cells
from melissa_nb.server.checkpoint.files import checkpoint_path

GROUPS = 6
MESSAGES_PER_GROUP = 2 * TIMESTEPS  # two fields


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.cleanup()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An uninterrupted one-rank run of every group (shared by the tests of this module)."""
    started = Servers(tmp_path_factory.mktemp("reference"))
    try:
        server = started.start(sampling_size=GROUPS)
        send_groups(server, range(GROUPS))
        assert server.wait() == 0, server.text()
        yield server
    finally:
        started.cleanup()


def accepted(server: ServerProcess, count: int) -> None:
    wait_for(lambda: server.accepted() == [count] * server.ranks, f"{count} accepted per rank")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("ranks", [1, 2])
def test_sigkill_then_restart_completes_with_the_uninterrupted_results(
    servers, reference, ranks
) -> None:
    first = servers.start(sampling_size=GROUPS, check_interval=0.2, ranks=ranks)
    send_groups(first, range(3))
    accepted(first, 3 * MESSAGES_PER_GROUP)
    for rank in range(ranks):
        wait_for(
            lambda rank=rank: first.checkpointed(rank) == 3 * MESSAGES_PER_GROUP,
            f"a checkpoint of 3 groups on rank {rank}",
        )
    send_groups(first, [3], steps=2)  # a simulation killed half way, with the server
    accepted(first, 3 * MESSAGES_PER_GROUP + 4)
    last_rank = json.loads((first.output / "server.json").read_text())["pids"][-1]
    os.kill(last_rank, signal.SIGKILL)  # one rank dies; mpiexec takes the others down
    first.wait()
    first.kill()  # whatever is left, and the blocks the dead ranks could not remove

    second = servers.start("-r", str(first.checkpoints), sampling_size=GROUPS, ranks=ranks)
    send_groups(second, range(GROUPS))  # every simulation runs again from the start
    assert second.wait() == 0, second.text()
    assert "restarted from" in second.text()
    assert_same_results(second.output, reference.output)
    attributes = read_results(second.output / "u.nc").attributes
    assert attributes["messages_duplicate"] >= 3 * MESSAGES_PER_GROUP * ranks
    assert no_blocks(second)


@pytest.mark.timeout(120)
def test_damaged_checkpoints_fall_back_or_are_refused_clearly(servers, reference, tmp_path) -> None:
    first = servers.start(sampling_size=GROUPS, check_interval=0.2)
    send_groups(first, range(2))
    wait_for(lambda: first.checkpointed() == 2 * MESSAGES_PER_GROUP, "a checkpoint of 2 groups")
    send_groups(first, [2])
    wait_for(lambda: first.checkpointed() == 3 * MESSAGES_PER_GROUP, "a checkpoint of 3 groups")
    first.kill()
    newest = checkpoint_path(first.checkpoints, 0)
    previous = checkpoint_path(first.checkpoints, 0, previous=True)
    assert previous.exists()

    other_study = servers.start("-r", str(first.checkpoints), sampling_size=GROUPS + 1)
    assert other_study.wait() == 2
    assert "checkpoint of another study: sampling_size is 6 there, 7 here" in other_study.text()

    both_damaged = tmp_path / "both_damaged"
    shutil.copytree(first.checkpoints, both_damaged)
    for path in both_damaged.glob("*.nc"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    refused = servers.start("-r", str(both_damaged), sampling_size=GROUPS)
    assert refused.wait() == 2
    assert "no valid checkpoint of rank 0" in refused.text()

    newest.write_bytes(newest.read_bytes()[:-100])  # truncated newest: the previous one serves
    second = servers.start("-r", str(first.checkpoints), sampling_size=GROUPS)
    send_groups(second, range(GROUPS))
    assert second.wait() == 0, second.text()
    assert "using the previous checkpoint" in second.text()
    assert_same_results(second.output, reference.output)


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("old_ranks", "new_ranks"), [(1, 2), (2, 1)])
def test_restart_on_another_number_of_ranks(servers, reference, old_ranks, new_ranks) -> None:
    first = servers.start(sampling_size=GROUPS, ranks=old_ranks)
    send_groups(first, range(3))
    send_groups(first, [3], steps=1)
    accepted(first, 3 * MESSAGES_PER_GROUP + 2)
    first.process.send_signal(signal.SIGTERM)  # every rank checkpoints on its way out
    first.wait()
    for rank in range(old_ranks):
        assert checkpoint_path(first.checkpoints, rank).exists(), first.text()
    assert no_blocks(first)

    second = servers.start("-r", str(first.checkpoints), sampling_size=GROUPS, ranks=new_ranks)
    send_groups(second, range(GROUPS))
    assert second.wait() == 0, second.text()
    assert f"written by {old_ranks} rank(s)" in second.text()
    assert_same_results(second.output, reference.output)


@pytest.mark.timeout(150)
@pytest.mark.parametrize(("new_ranks", "last_ranks"), [(1, 2), (3, 3)])
def test_restart_on_another_number_of_ranks_after_a_mid_stream_checkpoint(
    servers, reference, new_ranks, last_ranks
) -> None:
    """Two old ranks checkpoint while group 3's last timestep has reached rank 0 only: a new
    rank taking cells of both keeps them as segments, the re-sent group is folded where it was
    missing; that server's own checkpoint (segments kept as pieces) restarts again, on 2 ranks
    (cut anew) or on its own 3 (segments restored as they were),
    and every statistic equals the uninterrupted run (quantiles' fold order included)."""
    first = servers.start(sampling_size=GROUPS, ranks=2)
    send_groups(first, range(3))
    sender = RawSender(first.endpoint)
    try:
        reply = sender.handshake(3 * ROWS)
        assert len(reply.data_addresses) == 2
        for t in range(TIMESTEPS):
            for name, cells in FIELDS.items():
                values = group_values(name, 3, t, cells)
                split = rank_cells(cells, 2, 0)[1]
                sender.send(frame(name, 3, t, values[:, :split]), 0)  # the group id
                if t < TIMESTEPS - 1:  # the last timestep reaches rank 0 only
                    sender.send(frame(name, 3, t, values[:, split:]), 1)
        expected = 3 * MESSAGES_PER_GROUP
        wait_for(
            lambda: first.accepted() == [expected + 2 * TIMESTEPS, expected + 2 * TIMESTEPS - 2],
            "group 3 on rank 0, all but its last timestep on rank 1",
        )
    finally:
        sender.close()
    first.process.send_signal(signal.SIGTERM)  # every rank checkpoints on its way out
    first.wait()

    second = servers.start("-r", str(first.checkpoints), sampling_size=GROUPS, ranks=new_ranks)
    send_groups(second, range(4))  # group 3 was not finished: it runs again (as may 0-2)
    second.process.send_signal(signal.SIGTERM)
    second.wait()
    assert "kept as 2 segments" in second.text()
    assert no_blocks(second)

    third = servers.start("-r", str(second.checkpoints), sampling_size=GROUPS, ranks=last_ranks)
    send_groups(third, range(GROUPS))
    assert third.wait() == 0, third.text()
    assert_same_results(third.output, reference.output)
    assert no_blocks(third)
