"""The control endpoint and `melissa-nb status` on a live two-rank server (mpiexec -n 2)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess

import numpy as np
import pytest
import zmq
from harness import MELISSA, wait_for
from test_server_e2e import RawSender, frame, start_server  # noqa: F401 (a fixture)

from melissa_nb.netcdf import read_results
from melissa_nb.server.launcher.control import control_request, read_secret


@pytest.mark.timeout(120)
def test_status_checkpoint_and_stop_on_two_ranks(start_server, rng, tmp_path) -> None:  # noqa: F811
    server = start_server("-s", "3", "-t", "2", "-f", "u", "-o", "mean", "-w", "60", ranks=2)
    cells = 6  # 3 per server rank
    values = rng.normal(size=(2, 2, cells))
    description = server.output / "server.json"
    sender = RawSender(server.endpoint)
    try:
        wait_for(description.exists, "server.json")
        address = json.loads(description.read_text())["control_address"]
        assert address.startswith("tcp://127.0.0.1:")
        secret_file = server.output / "control.secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600, "its owner's only"
        secret = read_secret(server.output)
        # Without the secret (none, or a wrong one) nothing is done, and the server goes on.
        for stranger in ("stop", "0" * 64 + " stop", secret[:-1] + " stop"):
            refused = _raw_request(address, stranger)
            assert refused["ok"] is False and "unauthenticated" in refused["error"]
        for simulation in range(2):  # simulation 2 never sends: the study cannot complete
            reply = sender.handshake(simulation)
            for t in range(2):
                for rank, piece in enumerate(np.split(values[simulation, t], 2)):
                    sender.send(frame("u", simulation, t, piece), rank)
        assert len(reply.data_addresses) == 2

        def accepted_everywhere():
            report = control_request(address, "status", secret)
            ranks = report["ranks"]
            return report if all(ranks.get(r, {}).get("accepted") == 4 for r in "01") else None

        report = wait_for(accepted_everywhere, "both ranks' counters to show 4 messages")
        assert report["ok"] and report["description"]["ranks"] == 2
        for counters in report["ranks"].values():
            assert counters["bytes"] == 4 * (144 + 8 * 3)
            assert counters["rss_bytes"] > 0
        assert {(item["field"], item["rank"]) for item in report["slices"]} == {("u", 0), ("u", 1)}
        live = subprocess.run(
            [str(MELISSA), "status", str(server.output), "--watch", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert live.returncode == 0, live.stderr
        assert "accepted" in live.stdout and report["description"]["study_id"] in live.stdout
        # From another node the blocks are out of sight: status asks the control endpoint.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        remote = dict(report["description"], shm_prefix="melissa_nb_not_on_this_node_")
        (elsewhere / "server.json").write_text(json.dumps(remote))
        shutil.copy(secret_file, elsewhere / "control.secret")  # a shared file system
        shown = subprocess.run(
            [str(MELISSA), "status", str(elsewhere)], capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0, shown.stdout
        assert "accepted" in shown.stdout

        checkpoint = control_request(address, "checkpoint", secret)
        assert checkpoint["ok"], checkpoint
        checkpoints = server.output / "checkpoint"
        wait_for(
            lambda: all((checkpoints / f"checkpoint.r{r}.nc").exists() for r in (0, 1)),
            "a checkpoint file of each rank",
        )
        assert control_request(address, "nonsense", secret)["ok"] is False
        status = control_request(address, "status", secret)
        assert status["ranks"]["0"]["rejected"] == 3, "the strangers' requests are counted"
        assert control_request(address, "stop", secret) == {"ok": True, "stopping": True}
        assert server.wait() == 1, server.text()
    finally:
        sender.close()
    results = read_results(server.output / "u.nc")
    assert results.attributes["study_complete"] == 0
    np.testing.assert_allclose(results.variables["mean"], values.mean(axis=0), rtol=1e-12)
    assert "stop requested" in server.text()


def _raw_request(address: str, text: str) -> dict:
    """One request as a stranger sends it (no secret, or a guessed one)."""
    socket = zmq.Context.instance().socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        socket.send(text.encode())
        assert socket.poll(5000), "the server must answer a stranger too"
        return json.loads(socket.recv())
    finally:
        socket.close()
