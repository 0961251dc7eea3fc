"""CURVE authentication (melissa_nb.auth): `--auth` on the server's data and connection sockets,
and the pipeline links. Strangers (no CURVE, or a key pair of their own) get nothing in and
change nothing; the study's owner, holding the key file, runs the study as usual."""

from __future__ import annotations

import json
import stat
import time

import numpy as np
import pytest
import zmq
from harness import WAIT, wait_for
from references import FIELD_REFERENCES
from test_server_e2e import RawSender, frame, start_server  # noqa: F401 (a fixture)
from test_study_run import (
    LINEAR_SIMULATION,
    LINEAR_STUDY,
    STUDY_SECONDS,
    assert_results_equal,
    batch_reference,
    load_module,
    outputs_by_group,
    run_study,
)
from test_study_run import read_results as read_study_results

from melissa_nb.auth import (
    Gatekeeper,
    LinkKey,
    create_key_file,
    load_or_create_key,
    read_key_file,
    serve_with,
)
from melissa_nb.client import Client
from melissa_nb.errors import ConfigurationError, ServerUnreachableError
from melissa_nb.netcdf import read_results
from melissa_nb.server.results.status import read_progress

STRANGER_WAIT = 1.5  # seconds a stranger's request waits for the reply it must not get


def peer_socket(
    context: zmq.Context, kind: int, server_key: LinkKey, own: LinkKey | None
) -> zmq.Socket:
    """A socket (finite linger) that presents the key pair `own` to a CURVE server holding
    `server_key`, or no CURVE at all (`own` None)."""
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    if own is not None:
        socket.setsockopt(zmq.CURVE_SERVERKEY, server_key.public)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, own.public)
        socket.setsockopt(zmq.CURVE_SECRETKEY, own.secret)
    return socket


def stranger_key() -> LinkKey:
    """A key pair of the stranger's own, CURVE-correct but not the study's."""
    public, secret = zmq.curve_keypair()
    return LinkKey(public, secret)


def test_key_file_is_its_owners_and_round_trips(tmp_path) -> None:
    key = create_key_file(tmp_path / "study.key")
    assert stat.S_IMODE((tmp_path / "study.key").stat().st_mode) == 0o600
    assert read_key_file(tmp_path / "study.key") == key
    assert load_or_create_key(tmp_path / "study.key") == key
    assert load_or_create_key(tmp_path / "new.key") != key
    (tmp_path / "bad.key").write_text("public abc\n")
    with pytest.raises(ConfigurationError, match="cannot read the key file .*bad.key"):
        read_key_file(tmp_path / "bad.key")
    with pytest.raises(ConfigurationError, match="cannot read the key file .*missing.key"):
        read_key_file(tmp_path / "missing.key")


def test_gatekeeper_admits_the_key_and_counts_the_others() -> None:
    """One CURVE PULL behind a gatekeeper: the key holder's message arrives; a NULL peer's and
    a foreign key's never do, and the foreign key is counted."""
    context = zmq.Context()
    key = LinkKey(*zmq.curve_keypair())
    refused: list[str] = []
    gatekeeper = Gatekeeper(context, key, refused.append)
    puller = context.socket(zmq.PULL)
    serve_with(puller, key)
    puller.bind("tcp://127.0.0.1:*")
    address = puller.getsockopt_string(zmq.LAST_ENDPOINT)
    peers = zmq.Context()
    senders = {}
    for name, peer_key in (("stranger", stranger_key()), ("null", None), ("owner", key)):
        sender = peer_socket(peers, zmq.PUSH, key, peer_key)
        sender.connect(address)
        sender.send(name.encode(), zmq.NOBLOCK if peer_key is None else 0)
        senders[name] = sender
    received = []
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if gatekeeper.socket.poll(50):
            gatekeeper.answer()
        while puller.poll(0):
            received.append(puller.recv())
    assert received == [b"owner"]
    assert refused == ["127.0.0.1"]
    peers.destroy(linger=0)
    gatekeeper.close()
    context.destroy(linger=0)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ranks", [1, 2])
def test_auth_server_admits_only_the_key_file_holder(start_server, rng, ranks: int) -> None:  # noqa: F811
    simulations, timesteps, cells = 2, 2, 6
    server = start_server(
        *("-s", str(simulations), "-t", str(timesteps), "-f", "u", "-o", "mean:variance:max"),
        *("-w", "60", "--auth"),
        ranks=ranks,
    )
    description_file = server.output / "server.json"
    wait_for(description_file.exists, "server.json")
    description = json.loads(description_file.read_text())
    key_file = server.output / "study.key"
    assert description["key_file"] == str(key_file)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, "its owner's only"
    key = read_key_file(key_file)

    # Strangers: no CURVE at all, or a key pair of their own. Their handshakes get no reply...
    for stranger in (None, stranger_key()):
        request = peer_socket(zmq.Context.instance(), zmq.REQ, key, stranger)
        request.connect(server.endpoint)
        request.send(b"\0" * 8, zmq.NOBLOCK) if stranger is None else request.send(b"\0" * 8)
        assert not request.poll(int(STRANGER_WAIT * 1000)), "a stranger got a connection reply"
        request.close()
    # ... and once the owner's simulations are announced, their data would change the results
    # (accepted first, the owner's frames would be duplicates) if it got in.
    owner = RawSender(server.endpoint, key)
    for simulation in range(simulations):
        owner.handshake(simulation)
    forged = np.full(cells, 1e6)
    strangers = []
    for stranger in (None, stranger_key()):
        for rank, address in enumerate(description["data_addresses"]):
            push = peer_socket(zmq.Context.instance(), zmq.PUSH, key, stranger)
            push.connect(address)
            for simulation in range(simulations):
                for t in range(timesteps):
                    piece = np.array_split(forged, ranks)[rank]
                    push.send(frame("u", simulation, t, piece), zmq.NOBLOCK)
            strangers.append(push)
    # Every rank has refused both data strangers (a foreign key, no CURVE) before the owner
    # sends: had any of their frames got in, it would have come first.
    wait_for(
        lambda: (
            all(
                counters.get("rejected", 0) >= 2
                for counters in read_progress(server.output).ranks.values()
            )
            and len(read_progress(server.output).ranks) == ranks
        ),
        "every rank to refuse the data strangers",
    )
    values = rng.normal(size=(timesteps, simulations, cells))
    for simulation in range(simulations):
        for t in range(timesteps):
            for rank, piece in enumerate(np.array_split(values[t, simulation], ranks)):
                owner.send(frame("u", simulation, t, piece), rank)
    assert server.wait() == 0, server.text()
    owner.close()
    for push in strangers:
        push.close()
    results = read_results(server.output / "u.nc")
    ids = np.arange(simulations)
    for name in ("mean", "variance", "max"):
        for t in range(timesteps):
            np.testing.assert_allclose(
                results.variables[name][t], FIELD_REFERENCES[name](values[t], ids), rtol=1e-12
            )
    assert results.attributes["messages_accepted"] == simulations * timesteps * ranks
    refused = dict(
        item.split("=") for item in results.attributes["rejected_reasons"].split(",") if item
    )
    assert int(refused.get("unauthenticated", 0)) >= 2, refused  # a foreign key on each socket
    server.assert_clean_exit()


@pytest.mark.timeout(120)
def test_melissa_nb_client_needs_the_key_file(start_server, rng, monkeypatch) -> None:  # noqa: F811
    """melissa_nb's Client with MELISSA_NB_KEY_FILE runs a study on an --auth server; without
    it, it is told that no server answered, and why that may be."""
    server = start_server("-s", "1", "-t", "2", "-f", "u", "-o", "mean", "-w", "60", "--auth")
    wait_for((server.output / "server.json").exists, "server.json")
    with pytest.raises(ServerUnreachableError, match="--auth needs its key file"):
        Client(simu_id=0, server=server.endpoint, connect_timeout=STRANGER_WAIT)
    monkeypatch.setenv("MELISSA_NB_KEY_FILE", str(server.output / "study.key"))
    values = rng.normal(size=(2, 5))
    with Client(simu_id=0, server=server.endpoint, connect_timeout=WAIT) as client:
        client.init_field("u", 5)
        for row in values:
            client.send("u", row)
    assert server.wait() == 0, server.text()
    results = read_results(server.output / "u.nc")
    np.testing.assert_allclose(results.variables["mean"], values)
    # The keyless handshake was counted (the connection socket's monitor).
    assert "unauthenticated=" in results.attributes["rejected_reasons"]


@pytest.mark.timeout(STUDY_SECONDS + 30)
def test_melissa_nb_run_with_server_auth_is_exact(tmp_path) -> None:
    """`[server] auth = true`: the runner starts the server with --auth and gives every
    simulation the key file; the study's results equal the batch reference."""
    (tmp_path / "sim.py").write_text(LINEAR_SIMULATION)
    (tmp_path / "study.toml").write_text(LINEAR_STUDY + "\n[server]\nauth = true\n")
    completed = run_study(tmp_path / "study.toml")
    assert completed.returncode == 0, completed.stderr + completed.stdout
    out = tmp_path / "out"
    assert stat.S_IMODE((out / "study.key").stat().st_mode) == 0o600
    module = load_module(tmp_path / "sim.py")
    finished, outputs = outputs_by_group(out, lambda values: module.model(*values), 4)
    assert finished == list(range(6))
    reference = batch_reference(finished, outputs, thresholds=(1.0, 2.5))
    assert assert_results_equal(read_study_results(out / "u.nc"), reference) == set(reference)
