"""`melissa-nb status DIR` on a directory someone else prepared, or a broken one (issue 25, items
0 and 4): the real CLI in a subprocess, a real ZeroMQ listener where the preparer wants the
secret to go. Nothing is sent anywhere, nothing hangs, and each case ends in one line."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import zmq
from harness import MELISSA, WAIT

from melissa_nb.server.launcher.control import SECRET_FILE

NOBODY = 65534
SECRET = "ab" * 32


@pytest.fixture
def listener():
    """A REP socket on loopback that records whatever reaches it: the preparer's listener."""
    context = zmq.Context()
    socket = context.socket(zmq.REP)
    socket.setsockopt(zmq.LINGER, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")

    def received() -> list[bytes]:
        got = []
        while socket.poll(200):
            got.append(socket.recv())
            socket.send(b'{"ok": false}')
        return got

    yield f"tcp://127.0.0.1:{port}", received
    socket.close()
    context.term()


def prepare(directory: Path, address: str, study_id: str | None = None) -> Path:
    """A study directory as a server would leave it (server.json, secret), not running."""
    directory.mkdir(parents=True, exist_ok=True)
    study_id = study_id or f"prepared{uuid.uuid4().hex[:8]}"
    description = {
        "study_id": study_id,
        "ranks": 1,
        "hosts": ["somewhere"],
        "shm_prefix": f"melissa_nb_{study_id}_",
        "fields": ["u"],
        "timesteps": 1,
        "sampling_size": 1,
        "group_size": 1,
        "control_address": address,
    }
    (directory / "server.json").write_text(json.dumps(description))
    secret = directory / SECRET_FILE
    secret.write_text(SECRET + "\n")
    secret.chmod(0o600)
    return directory


def status(directory: Path) -> subprocess.CompletedProcess:
    completed = subprocess.run(
        [str(MELISSA), "status", str(directory)], capture_output=True, text=True, timeout=WAIT
    )
    assert "Traceback" not in completed.stdout + completed.stderr, completed.stderr
    return completed


def private_key(tmp_path: Path) -> Path:
    key = tmp_path / "id_private"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n")
    key.chmod(0o600)
    return key


def test_the_secret_goes_to_the_servers_own_address(tmp_path, listener) -> None:
    """The check itself: with everything in order, the secret does reach the control address
    (on this host), so the refusals below are the checks', not a broken client's."""
    address, received = listener
    completed = status(prepare(tmp_path / "study", address))
    assert received() == [f"{SECRET} status".encode()]
    assert completed.returncode == 1  # the answer is not ok: no live server, no results


@pytest.mark.parametrize(
    "hostile",
    ["secret is a link to a private key", "secret holds a private key", "secret is 0644"],
)
def test_a_prepared_secret_is_never_sent(tmp_path, listener, hostile) -> None:
    address, received = listener
    directory = prepare(tmp_path / "study", address)
    secret = directory / SECRET_FILE
    key = private_key(tmp_path)
    secret.unlink()
    if hostile == "secret is a link to a private key":
        secret.symlink_to(key)
        expected = "is a symbolic link"
    elif hostile == "secret holds a private key":
        secret.write_bytes(key.read_bytes())
        secret.chmod(0o600)
        expected = "does not hold a control secret"
    else:
        secret.write_text(SECRET)
        secret.chmod(0o644)
        expected = "readable by others (mode 644"
    completed = status(directory)
    assert received() == []
    assert completed.returncode == 2
    assert expected in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr


def test_a_directory_of_another_user_is_refused_before_anything_is_sent(tmp_path, listener):
    address, received = listener
    directory = prepare(tmp_path / "study", address)
    os.chown(directory / "server.json", NOBODY, NOBODY)
    completed = status(directory)
    assert received() == []
    assert completed.returncode == 2
    assert f"belongs to user id {NOBODY}, not to you" in completed.stderr


def test_a_control_address_elsewhere_gets_no_secret(tmp_path) -> None:
    """An address neither on this host nor on the study's nodes (a name that resolves to
    nothing: no traffic leaves this machine whatever the client does)."""
    completed = status(prepare(tmp_path / "study", "tcp://collector.invalid:5555"))
    assert completed.returncode == 2
    assert "neither on this host nor on the study's nodes" in completed.stderr


@pytest.mark.parametrize(
    "broken", ["garbage", "a JSON list", "a symlink loop", "a FIFO", "a link to /dev/zero"]
)
def test_a_broken_server_file_is_one_line(tmp_path, broken) -> None:
    directory = tmp_path / "study"
    directory.mkdir()
    path = directory / "server.json"
    if broken == "garbage":
        path.write_bytes(b"\x00\xff{not json")
    elif broken == "a JSON list":
        path.write_text("[1, 2, 3]")
    elif broken == "a symlink loop":
        path.symlink_to(path)
    elif broken == "a FIFO":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    completed = status(directory)  # a hang would hit the subprocess timeout
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert completed.stderr.startswith("error: ") and str(path) in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1, completed.stderr


def test_stray_blocks_under_the_studys_name_are_left_out_and_named(tmp_path) -> None:
    """Any local user can create /dev/shm/melissa_nb_<study>_r0_progress: one of another user,
    one of ours with garbage in it; status names both and goes on."""
    directory = prepare(tmp_path / "study", None)
    study_id = json.loads((directory / "server.json").read_text())["study_id"]
    foreign = Path("/dev/shm") / f"melissa_nb_{study_id}_r0_progress"
    garbage = Path("/dev/shm") / f"melissa_nb_{study_id}_r0_u_c0"
    foreign.write_bytes(os.urandom(4096))
    os.chown(foreign, NOBODY, NOBODY)
    garbage.write_bytes(b"MELISSA!" + os.urandom(4096))
    try:
        completed = status(directory)
    finally:
        foreign.unlink()
        garbage.unlink()
    assert completed.returncode == 1  # no live server, no results
    assert f"left out: {foreign.name}: belongs to user id {NOBODY}" in completed.stdout
    assert f"left out: {garbage.name}: not a block of this server" in completed.stdout
