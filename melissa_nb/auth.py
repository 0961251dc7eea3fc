"""CURVE authentication of ZeroMQ links: only whoever can read the study's key file gets in.

A key file (mode 0600 from its creation, as `control.secret`) holds one CURVE key pair. The
listening end of a link (a server rank's data and connection sockets with `--auth`, a pipeline
consumer's sockets) is a CURVE server with that pair; the connecting end (a melissa_nb client, a
server rank's forwarder) is a CURVE client with the same pair; and the listening process's
`Gatekeeper`, its ZeroMQ authentication (ZAP) handler, lets in that public key only. A peer that
cannot read the file cannot complete the handshake: ZeroMQ closes the connection before any
message reaches the application, and the gatekeeper counts the refusal. The links are encrypted
as well. The gatekeeper is answered on its owner's poll loop (no thread): ZeroMQ consults it for
CURVE handshakes only (NULL sockets of the same context, the launcher's and the control
endpoint, do not ask it).
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from melissa_nb.errors import ConfigurationError

KEY_FILE = "study.key"
"""The server's key file in its output directory (`--auth`)."""
PIPELINE_KEY_FILE = "pipeline.key"
"""A pipeline consumer's key file by default (in the current directory)."""
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # fixed by ZeroMQ's RFC 27
KEY_ENVIRONMENT = "MELISSA_NB_KEY_FILE"
"""The variable that gives a simulation's client the server's key file."""


@dataclass(frozen=True)
class LinkKey:
    """One CURVE key pair, Z85-encoded (40 bytes each)."""

    public: bytes
    secret: bytes


def create_key_file(path: str | os.PathLike[str]) -> LinkKey:
    """A new key pair written to `path`, mode 0600 from its creation (replaces an old one)."""
    public, secret = zmq.curve_keypair()
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(f"public {public.decode()}\nsecret {secret.decode()}\n")
    os.replace(temporary, path)
    return LinkKey(public, secret)


def read_key_file(path: str | os.PathLike[str]) -> LinkKey:
    """The key pair of `path` (ConfigurationError saying what is wrong with the file)."""
    try:
        words = dict(line.split(None, 1) for line in Path(path).read_text().splitlines() if line)
        key = LinkKey(words["public"].strip().encode(), words["secret"].strip().encode())
    except (OSError, ValueError, KeyError) as error:
        raise ConfigurationError(f"cannot read the key file {path}: {error}") from None
    if len(key.public) != 40 or len(key.secret) != 40:
        raise ConfigurationError(f"the key file {path} holds no CURVE key pair")
    return key


def load_or_create_key(path: str | os.PathLike[str]) -> LinkKey:
    """The key pair of `path`, created there first if the file does not exist."""
    return read_key_file(path) if Path(path).exists() else create_key_file(path)


def serve_with(socket: zmq.Socket, key: LinkKey) -> None:
    """Make `socket` (before it binds) the CURVE server end of its links."""
    socket.setsockopt(zmq.CURVE_SERVER, 1)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, key.public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, key.secret)


def connect_with(socket: zmq.Socket, key: LinkKey) -> None:
    """Make `socket` (before it connects) a CURVE client holding the study's key."""
    socket.setsockopt(zmq.CURVE_SERVERKEY, key.public)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, key.public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, key.secret)


class Gatekeeper:
    """The ZAP handler of one process's context: admits CURVE clients holding `key` only;
    `refused(address)` hears of every other handshake. Poll `socket`, then call `answer`."""

    def __init__(self, context: zmq.Context, key: LinkKey, refused: Callable[[str], None]) -> None:
        self.allowed = z85.decode(key.public)
        self.refused = refused
        self.socket = context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind(ZAP_ENDPOINT)

    def answer(self) -> None:
        """Answer every authentication request waiting (RFC 27: 200 admits, 400 refuses)."""
        while self.socket.poll(0):
            frames = self.socket.recv_multipart()
            request_id = frames[1] if len(frames) > 1 else b""
            mechanism = frames[5] if len(frames) > 5 else b""
            client_key = frames[6] if len(frames) > 6 else b""
            admitted = mechanism == b"CURVE" and hmac.compare_digest(client_key, self.allowed)
            if not admitted:
                self.refused(frames[3].decode(errors="replace") if len(frames) > 3 else "?")
            status = (b"200", b"OK") if admitted else (b"400", b"not the study's key")
            self.socket.send_multipart([b"1.0", request_id, *status, b"", b""])

    def close(self) -> None:
        """Close the handler's socket (idempotent)."""
        self.socket.close()
