"""Checkpoints on demand (SIGUSR1) and when the launcher is gone, and a restart from the latter."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_harness import (
    TIMESTEPS,
    Servers,
    assert_same_results,
    no_blocks,
    send_groups,
)
from harness import wait_for
from test_server_e2e import FakeLauncher

from melissa_nb.netcdf import read_results
from melissa_nb.server.checkpoint.files import checkpoint_path

GROUPS = 5
MESSAGES_PER_GROUP = 2 * TIMESTEPS


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.cleanup()


@pytest.mark.timeout(120)
def test_sigusr1_and_a_vanished_launcher_checkpoint_then_the_study_resumes(servers) -> None:
    launcher = FakeLauncher(parameters=2)
    try:
        first = servers.start(
            "--launcher-timeout", "1.5", *launcher.options(), sampling_size=GROUPS
        )
        launcher.pump(lambda: first.accepted() == [0], "the server to start")
        send_groups(first, range(2))
        launcher.pump(lambda: first.accepted() == [2 * MESSAGES_PER_GROUP], "2 groups accepted")
        assert not checkpoint_path(first.checkpoints, 0).exists()  # -c is 300 s here
        first.process.send_signal(signal.SIGUSR1)
        launcher.pump(
            lambda: first.checkpointed() == 2 * MESSAGES_PER_GROUP, "the SIGUSR1 checkpoint"
        )
        send_groups(first, [2])
        launcher.pump(lambda: first.accepted() == [3 * MESSAGES_PER_GROUP], "3 groups accepted")
    finally:
        launcher.close()  # no more HELLO: the launcher is gone
    assert first.wait() == 1, first.text()
    assert "no HELLO from the launcher" in first.text()
    assert first.checkpointed() == 3 * MESSAGES_PER_GROUP, "checkpointed on the way out"
    assert read_results(first.output / "u.nc").attributes["study_complete"] == 0
    assert no_blocks(first)

    second = servers.start("-r", str(first.checkpoints), sampling_size=GROUPS)
    send_groups(second, range(3, GROUPS))  # only what had not arrived
    assert second.wait() == 0, second.text()
    reference = servers.start(sampling_size=GROUPS)
    send_groups(reference, range(GROUPS))
    assert reference.wait() == 0, reference.text()
    assert_same_results(second.output, reference.output)
    wait_for(lambda: no_blocks(second), "the blocks to go")
