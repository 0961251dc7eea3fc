"""A restart from a checkpoint that is not the study's (issue 25, item 2): real servers, real
checkpoint files. The options match, so the checkpoint loads; the first data of another field
size (or a handshake of another client layout) shows it is another study's, and the study then
ends with `study_complete = 0` and exit code 1, never as a complete result."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from harness import wait_for
from test_server_e2e import FakeLauncher, RawSender, frame, start_server  # noqa: F401

from melissa_nb.errors import ProtocolError
from melissa_nb.netcdf import read_results
from melissa_nb.protocol import Drop, Stop
from melissa_nb.server.results.status import read_progress

OPTIONS = ("-s", "2", "-t", "1", "-f", "u", "-o", "mean", "-w", "60")


def counter(server, name: str) -> int:
    try:
        return int(read_progress(server.output).ranks.get(0, {}).get(name, 0))
    except FileNotFoundError:
        return 0


def accepted(server) -> int:
    return counter(server, "accepted")


def rejected(server) -> int:
    return counter(server, "rejected")


@pytest.mark.parametrize("difference", ["cells", "client ranks"])
def test_a_checkpoint_of_another_field_size_never_ends_complete(
    start_server,  # noqa: F811
    rng,
    difference: str,
) -> None:
    first = start_server(*OPTIONS)
    sender = RawSender(first.endpoint)
    try:
        sender.handshake(0)
        sender.send(frame("u", 0, 0, rng.normal(size=12)))
        wait_for(lambda: accepted(first) == 1, "the 12-cell frame")
    finally:
        sender.close()
    first.process.send_signal(signal.SIGTERM)
    assert first.wait() == 128 + signal.SIGTERM, first.text()
    checkpoints = first.output / "checkpoint"

    launcher = FakeLauncher(parameters=1)
    second = start_server(*OPTIONS, "-r", str(checkpoints), *launcher.options())
    sender = RawSender(second.endpoint)
    try:
        launcher.pump(lambda: len(launcher.received) >= 1, "SERVER message")
        if difference == "cells":
            sender.handshake(1)
            sender.send(frame("u", 1, 0, rng.normal(size=10)))
        else:
            with pytest.raises(ProtocolError):  # refused: the reply is empty
                sender.handshake(1, comm_size=2)
        launcher.pump(lambda: rejected(second) == 1, "the refusal")
        launcher.publish(Drop(1, "job1"))  # the launcher gives the simulation up
        launcher.pump(lambda: Stop() in launcher.received, "STOP")
        code = second.wait()
    finally:
        sender.close()
        launcher.close()
    assert code == 1, second.text()
    text = second.text()
    assert "the checkpoint restarted from is not this study's" in text
    results = read_results(second.output / "u.nc")
    assert results.attributes["study_complete"] == 0
    assert results.attributes["rejected_reasons"] == "checkpoint_layout=1"
    np.testing.assert_array_equal(results.variables["sample_count"], [1])
    second.assert_clean_exit()
