"""Hostile and clumsy input against a real server: each test reproduces one way a single message
or a clumsy setting used to crash, hang or silently corrupt a study (issue 16), and checks that
the server now refuses it, counts it, keeps serving and still ends the study with exact numbers.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import zmq
from harness import WAIT, wait_for
from test_server_e2e import RTOL, RawSender, frame, start_server  # noqa: F401 (a fixture)

from melissa_nb.server.output import read_results


def multipart_request(address: str, parts: list[bytes]) -> list[bytes]:
    """Send a request of several parts on a REQ socket; the reply's parts (fails on silence)."""
    context = zmq.Context()
    request = context.socket(zmq.REQ)
    request.setsockopt(zmq.LINGER, 0)
    try:
        request.connect(address)
        request.send_multipart(parts)
        assert request.poll(int(WAIT * 1000)), f"no reply from {address}"
        return request.recv_multipart()
    finally:
        request.close()
        context.term()


def test_multipart_requests_are_refused_and_the_server_keeps_serving(start_server, rng) -> None:  # noqa: F811
    server = start_server("-s", "2", "-t", "1", "-f", "u", "-o", "mean")
    description = server.output / "server.json"
    wait_for(description.exists, "server.json")
    control = json.loads(description.read_text())["control_address"]
    assert multipart_request(server.endpoint, [struct.pack("<ii", 1, 0), b"x"]) == [b""]
    refused = json.loads(multipart_request(control, [b"status", b"x"])[0])
    assert refused["ok"] is False and "multipart_request" in refused["error"]
    values = rng.normal(size=(2, 4))
    sender = RawSender(server.endpoint)
    try:
        for simulation in range(2):
            sender.handshake(simulation)
            sender.send(frame("u", simulation, 0, values[simulation]))
        assert server.wait() == 0, server.text()
    finally:
        sender.close()
    server.assert_clean_exit()
    results = read_results(server.output / "u.nc")
    assert "multipart_request=2" in results.attributes["rejected_reasons"]
    np.testing.assert_allclose(results.variables["mean"][0], values.mean(axis=0), rtol=RTOL)
