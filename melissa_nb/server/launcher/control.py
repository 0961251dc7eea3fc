"""The control endpoint: a REP socket on rank 0 answering `status`, `checkpoint` and `stop`.

Only the study's owner may drive it: at start rank 0 writes a random secret to
`<output>/control.secret`, readable by its owner only (mode 0600, as Jupyter does for its
kernels' connection files), and every request is `<secret> <command>`. A request without the
secret is refused (`unauthenticated`, counted and logged) and the server keeps serving.
`melissa-nb status` reads the file. Requests are ASCII; every reply is one JSON object with
`"ok"` (true or false) and, on failure, `"error"`. `status` returns the study description and
every rank's counters (read from the progress blocks in shared memory, so it covers the ranks
on rank 0's node) and the per-slice progress; `checkpoint` asks for a checkpoint now; `stop`
ends the study at the next end vote: every rank writes the results of what it received
(`study_complete = 0`), exit code 1.
The endpoint binds loopback by default (`--control-bind`); its address is in server.json.

A client (`melissa-nb status`) reads the secret only from a regular file of its own user, mode
0600, of one secret's size and shape, never through a link, and sends it only to an address of
this host or of the study's own nodes (`control_target`): a directory someone else prepared
cannot make it send a file anywhere.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import socket as socketlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq

from melissa_nb.errors import ConfigurationError, ProtocolError
from melissa_nb.owned_files import read_owned_file
from melissa_nb.server.launcher.requests import receive_request

CONTROL_MAX_MESSAGE = 256
LINGER_MS = 200
COMMANDS = ("status", "checkpoint", "stop")
SECRET_FILE = "control.secret"
SECRET_BYTES = 32
SECRET_SHAPE = re.compile(rf"[0-9a-f]{{{2 * SECRET_BYTES}}}")
ADDRESS_SHAPE = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")


def write_secret(output_dir: Path) -> str:
    """A new random secret in `<output>/control.secret`, mode 0600 from its creation."""
    secret = secrets.token_hex(SECRET_BYTES)
    path = Path(output_dir) / SECRET_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret + "\n")
    os.replace(temporary, path)
    return secret


def read_secret(output_dir: str | os.PathLike[str]) -> str:
    """The secret of the server whose --output-dir is `output_dir`: only from a private regular
    file of this user holding nothing but a secret (ConfigurationError otherwise)."""
    path = Path(output_dir) / SECRET_FILE
    text = read_owned_file(path, 2 * SECRET_BYTES + 1, private=True).decode("ascii", "replace")
    if not SECRET_SHAPE.fullmatch(text.strip()):
        raise ConfigurationError(f"{path} does not hold a control secret: refused")
    return text.strip()


def _is_this_host(host: str) -> bool:
    """True when every address `host` names belongs to this machine (it can bind them)."""
    try:
        infos = socketlib.getaddrinfo(host, None, type=socketlib.SOCK_DGRAM)
    except (OSError, UnicodeError):
        return False
    for family, kind, _, _, address in infos:
        with socketlib.socket(family, kind) as probe:
            try:
                probe.bind((address[0], 0))
            except OSError:
                return False
    return bool(infos)


def control_target(address: object, study_hosts: Sequence[str]) -> str:
    """`address` if it is a TCP endpoint on this host or on one of the study's own nodes (the
    hosts its ranks reported), else ConfigurationError: the secret is never sent elsewhere."""
    match = ADDRESS_SHAPE.fullmatch(address) if isinstance(address, str) else None
    if match is None:
        raise ConfigurationError(f"control address {address!r} is not tcp://HOST:PORT: refused")
    host = match.group(1).strip("[]")
    if host in study_hosts or _is_this_host(host):
        return address
    raise ConfigurationError(
        f"control address {address} is neither on this host nor on the study's nodes "
        f"{list(study_hosts)}: the secret is not sent"
    )


Action = Callable[[], dict[str, Any]]
Reject = Callable[[str, str, float], None]


class ControlEndpoint:
    """Rank 0's REP socket; `answer()` serves one request with the matching action."""

    def __init__(
        self,
        context: zmq.Context,
        bind: str,
        port: int,
        actions: dict[str, Action],
        log: logging.Logger,
        reject: Reject,
        secret: str,
    ) -> None:
        self.actions = actions
        self.secret = secret.encode()
        self.reject = reject  # counts and logs a refused request (the rank's Progress.reject)
        self.log = log
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.MAXMSGSIZE, CONTROL_MAX_MESSAGE)
        self.socket.setsockopt(zmq.LINGER, LINGER_MS)
        try:
            self.socket.bind(f"tcp://{bind}:{port if port else '*'}")
        except zmq.ZMQError:
            self.socket.close()
            raise
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def answer(self) -> None:
        """Read one request and reply (REP: exactly one reply per request, errors included)."""
        try:
            request = receive_request(self.socket)
        except ProtocolError as error:
            self.reject(error.reason, str(error), time.monotonic())
            self.socket.send(json.dumps({"ok": False, "error": str(error)}).encode())
            return
        if request is None:
            return
        token, _, words = request.partition(b" ")
        if not hmac.compare_digest(token, self.secret):
            self.reject(
                "unauthenticated",
                f"control request without the study's secret (its owner reads {SECRET_FILE} "
                "in the output directory)",
                time.monotonic(),
            )
            reply = {
                "ok": False,
                "error": f"unauthenticated: send '<secret> <command>', the "
                f"secret being in {SECRET_FILE} of the server's output directory",
            }
            self.socket.send(json.dumps(reply).encode())
            return
        command = words.decode("ascii", errors="replace").strip()
        action = self.actions.get(command)
        if action is None:
            reply: dict[str, Any] = {
                "ok": False,
                "error": f"unknown command {command[:32]!r}; known: {', '.join(COMMANDS)}",
            }
        else:
            try:
                reply = {"ok": True, **action()}
            except Exception as error:  # a failing action is reported, the server goes on
                self.log.exception("control command %s failed", command)
                reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        self.socket.send(json.dumps(reply).encode())

    def close(self) -> None:
        """Close the socket (finite linger)."""
        self.socket.close()


def control_request(
    address: str, command: str, secret: str, timeout: float = 5.0
) -> dict[str, Any]:
    """Send one command with the study's secret (`read_secret(output_dir)`) to a server's
    control endpoint; TimeoutError if it does not answer."""
    context = zmq.Context.instance()
    socket = context.socket(zmq.REQ)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(address)
        socket.send(f"{secret} {command}".encode("ascii"))
        if not socket.poll(int(timeout * 1000)):
            raise TimeoutError(f"no answer to {command!r} from {address} in {timeout:g} s")
        return json.loads(socket.recv())
    finally:
        socket.close()
