"""The simulation side of the protocol, with the semantics of Melissa's `melissa_api`.

A simulation (optionally an MPI job, given as an mpi4py communicator) initialises each field with
its local size, sends the field once per timestep and finalises:

    melissa_init("temperature", local_size, comm)
    for step in range(T):
        melissa_send("temperature", values)
    melissa_finalize()

Client rank 0 does the connection handshake with server rank 0 and broadcasts the reply; every
client rank then sends to each server rank whose block of cells (melissa_nb.partition) overlaps
its own slice exactly that overlap, one data frame per server rank and timestep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from melissa_nb.auth import KEY_ENVIRONMENT, connect_with, read_key_file
from melissa_nb.errors import ConfigurationError, ProtocolError, ServerUnreachableError
from melissa_nb.partition import overlaps
from melissa_nb.protocol import (
    ConnectionReply,
    ConnectionRequest,
    check_field_name,
    encode_data_frame,
    sobol_member,
)

DEFAULT_CONNECTION_PORT = 2003
SERVER_NAME_FILE = "server_name.txt"


def simulation_id_from_environment(environ: os._Environ[str] | dict[str, str] | None = None) -> int:
    """MELISSA_SIMU_ID as a non-negative integer (required, like the C library)."""
    environ = os.environ if environ is None else environ
    raw = environ.get("MELISSA_SIMU_ID")
    if raw is None:
        raise ConfigurationError(
            "MELISSA_SIMU_ID is not set: the launcher (or you) must give each simulation its id"
        )
    try:
        simu_id = int(raw)
    except ValueError:
        raise ConfigurationError(f"MELISSA_SIMU_ID={raw!r} is not an integer") from None
    if not 0 <= simu_id < 2**31:
        raise ConfigurationError(f"MELISSA_SIMU_ID={raw!r} is not in [0, 2**31)")
    return simu_id


def server_endpoint_from_environment(
    environ: os._Environ[str] | dict[str, str] | None = None, directory: Path | None = None
) -> str:
    """`tcp://host:port` of the server's connection socket.

    Host: MELISSA_SERVER_NODE_NAME, else the first line of server_name.txt in `directory` (the
    current directory by default), else localhost. Port: MELISSA_SERVER_PORT (our extension, so
    tests can use free ports), else 2003.
    """
    environ = os.environ if environ is None else environ
    host = environ.get("MELISSA_SERVER_NODE_NAME", "").strip()
    name_file = (Path.cwd() if directory is None else directory) / SERVER_NAME_FILE
    if not host and name_file.is_file():
        words = name_file.read_text(encoding="utf-8").split()
        host = words[0] if words else ""
    host = host or "localhost"
    raw_port = environ.get("MELISSA_SERVER_PORT", str(DEFAULT_CONNECTION_PORT))
    try:
        port = int(raw_port)
    except ValueError:
        raise ConfigurationError(f"MELISSA_SERVER_PORT={raw_port!r} is not an integer") from None
    if not 1 <= port <= 65535:
        raise ConfigurationError(f"MELISSA_SERVER_PORT={raw_port!r} is not in [1, 65535]")
    return f"tcp://{host}:{port}"


@dataclass
class _Field:
    """What a client rank knows about one initialised field."""

    local_size: int
    pieces: list[tuple[int, int, int]]  # (server_rank, offset_in_local_vector, size)
    time_stamp: int = 0


class Client:
    """One simulation's connection to a melissa_nb (or Melissa 0.6) server.

    Collective over `comm` (an mpi4py communicator, or None for a single process): construction
    does the handshake, `init_field` must be called by every rank. Not thread-safe.

    Args:
        comm: mpi4py communicator of the simulation, or None.
        simu_id: simulation id; default MELISSA_SIMU_ID.
        server: `tcp://host:port` of the server's connection socket; default from the
            environment (see `server_endpoint_from_environment`).
        connect_timeout: seconds to wait for the handshake reply before raising
            ServerUnreachableError (the C client waits forever).
        send_timeout: seconds a send may block on a full queue (server not reading) before
            raising ServerUnreachableError; None blocks without limit.
        linger: seconds `finalize` waits at most for queued data to leave.
        key_file: the key file of a server started with `--auth` (`<output>/study.key`);
            default MELISSA_NB_KEY_FILE, else none (a server without --auth).
    """

    def __init__(
        self,
        comm: Any = None,
        *,
        simu_id: int | None = None,
        server: str | None = None,
        connect_timeout: float = 60.0,
        send_timeout: float | None = 300.0,
        linger: float = 30.0,
        key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.comm = comm
        key_file = key_file or os.environ.get(KEY_ENVIRONMENT) or None
        self.key = None if key_file is None else read_key_file(key_file)
        self.rank = 0 if comm is None else comm.Get_rank()
        self.comm_size = 1 if comm is None else comm.Get_size()
        self.simu_id = simulation_id_from_environment() if simu_id is None else simu_id
        if not 0 <= self.simu_id < 2**31:
            raise ConfigurationError(f"simulation id {self.simu_id} is not in [0, 2**31)")
        self.server = server_endpoint_from_environment() if server is None else server
        self._linger_ms = int(linger * 1000)
        self._send_timeout_ms = -1 if send_timeout is None else int(send_timeout * 1000)
        self._context = zmq.Context()
        self._sockets: dict[int, zmq.Socket] = {}
        self._fields: dict[str, _Field] = {}
        self._finalized = False
        try:
            self.reply = self._handshake(connect_timeout)
        except BaseException:
            self._context.destroy(linger=0)
            raise
        self.group: int | None = None
        self.member: int | None = None
        if self.reply.sobol:
            self.group, self.member = sobol_member(self.simu_id, self.reply.nb_parameters)

    # --- setup -----------------------------------------------------------------------------------

    def _handshake(self, timeout: float) -> ConnectionReply:
        """Rank 0 asks the server; the reply frame (or the failure) is broadcast to all ranks."""
        outcome: tuple[str, bytes | str] = ("reply", b"")
        if self.rank == 0:
            try:
                outcome = ("reply", self._request_connection(timeout))
            except ProtocolError as error:  # every rank must learn of a failure, not hang in bcast
                outcome = (error.reason, f"malformed connection reply from {self.server}: {error}")
            except Exception as error:  # unreachable, or a bad endpoint (zmq.ZMQError)
                outcome = ("unreachable", f"{type(error).__name__}: {error}")
        if self.comm is not None:
            outcome = self.comm.bcast(outcome, root=0)
        kind, payload = outcome
        if kind == "unreachable":
            raise ServerUnreachableError(payload)
        if kind != "reply":
            raise ProtocolError(kind, str(payload))
        return ConnectionReply.decode(payload, entry_width=None)

    def _request_connection(self, timeout: float) -> bytes:
        request = self._context.socket(zmq.REQ)
        request.setsockopt(zmq.LINGER, 0)
        if self.key is not None:
            connect_with(request, self.key)
        try:
            request.connect(self.server)
            request.send(ConnectionRequest(self.comm_size, self.simu_id).encode())
            if not request.poll(int(timeout * 1000), zmq.POLLIN):
                raise ServerUnreachableError(
                    f"no server answered at {self.server} within {timeout:g} s (check "
                    "MELISSA_SERVER_NODE_NAME / server_name.txt and MELISSA_SERVER_PORT; a "
                    f"server started with --auth needs its key file in {KEY_ENVIRONMENT})"
                )
            reply = request.recv()
        finally:
            request.close()
        ConnectionReply.decode(reply, entry_width=None)  # fail here, on rank 0, if malformed
        return reply

    def init_field(self, field_name: str, local_size: int) -> None:
        """Declare a field and this rank's number of cells (collective over the communicator)."""
        if self._finalized:
            raise RuntimeError("the client is finalized")
        problem = self._field_problem(field_name, local_size)
        # every rank learns of any rank's mistake, so none is left waiting in a collective
        reports = (
            [(local_size, problem)]
            if self.comm is None
            else self.comm.allgather((local_size, problem))
        )
        problems = [f"rank {rank}: {p}" for rank, (_, p) in enumerate(reports) if p is not None]
        if problems:
            raise ValueError(f"init_field({field_name!r}): " + "; ".join(problems))
        sizes = [int(size) for size, _ in reports]
        pieces = overlaps(
            sum(sizes[: self.rank]), sizes[self.rank], sum(sizes), self.reply.server_comm_size
        )
        for server_rank, _, _ in pieces:
            self._socket(server_rank)
        self._fields[field_name] = _Field(sizes[self.rank], pieces)

    def _field_problem(self, field_name: str, local_size: int) -> str | None:
        """Why this rank cannot declare the field, or None."""
        if field_name in self._fields:
            return f"field {field_name!r} is already initialised"
        try:
            check_field_name(field_name)
        except ProtocolError as error:
            return str(error)
        if not isinstance(local_size, (int, np.integer)) or local_size < 0:
            return f"local size must be an integer >= 0, got {local_size!r}"
        return None

    def _socket(self, server_rank: int) -> zmq.Socket:
        """The PUSH socket to a server rank's data address (created on first use)."""
        socket = self._sockets.get(server_rank)
        if socket is None:
            socket = self._context.socket(zmq.PUSH)
            socket.setsockopt(zmq.LINGER, self._linger_ms)
            socket.setsockopt(zmq.SNDTIMEO, self._send_timeout_ms)
            # queue only on a live connection: an absent server rank makes send wait (and time
            # out) instead of silently buffering up to SNDHWM whole frames in memory
            socket.setsockopt(zmq.IMMEDIATE, 1)
            if self.key is not None:
                connect_with(socket, self.key)
            socket.connect(self.reply.data_addresses[server_rank])
            self._sockets[server_rank] = socket
        return socket

    # --- data ------------------------------------------------------------------------------------

    def send(self, field_name: str, values: np.ndarray) -> None:
        """Send this rank's values of a field for the next timestep (time stamps count from 0).

        `values` has shape `(local_size,)`. With Sobol on, a `(p + 2, local_size)` array (rows
        Y_A, Y_B, Y_C1..Y_Cp) is a whole group sent by its master (member 0) under the group id;
        a `(local_size,)` array is this member's own vector, sent under its own simulation id.
        """
        state = self._fields.get(field_name)
        if state is None:
            raise ValueError(f"field {field_name!r} was not initialised: call init_field first")
        values = np.asarray(values)
        wire_id = self._wire_id(values, field_name)
        if values.shape[-1] != state.local_size:
            raise ValueError(
                f"field {field_name!r}: got {values.shape[-1]} values, local size is "
                f"{state.local_size}"
            )
        for server_rank, offset, size in state.pieces:
            frame = encode_data_frame(
                state.time_stamp,
                wire_id,
                self.rank,
                field_name,
                values[..., offset : offset + size],
            )
            try:
                self._sockets[server_rank].send(frame, copy=False)
            except zmq.Again:
                raise ServerUnreachableError(
                    f"server rank {server_rank} at {self.reply.data_addresses[server_rank]} did "
                    f"not take field {field_name!r} step {state.time_stamp} within "
                    f"{self._send_timeout_ms / 1000:g} s"
                ) from None
        state.time_stamp += 1

    def _wire_id(self, values: np.ndarray, field_name: str) -> int:
        """The simu_id a message of this shape carries (group id for a Sobol group)."""
        if values.ndim == 1:
            return self.simu_id
        rows = self.reply.nb_parameters + 2 if self.reply.sobol else 1
        if values.ndim != 2 or values.shape[0] != rows:
            raise ValueError(
                f"field {field_name!r}: values of shape {values.shape}, expected (local_size,)"
                + (f" or ({rows}, local_size) for a Sobol group" if self.reply.sobol else "")
            )
        if not self.reply.sobol:
            return self.simu_id
        if self.member != 0:
            raise ValueError(
                f"simulation {self.simu_id} is member {self.member} of Sobol group {self.group}: "
                "only the group master (member 0) sends whole groups"
            )
        return self.group

    # --- end -------------------------------------------------------------------------------------

    def finalize(self) -> None:
        """Close the sockets, waiting at most `linger` seconds for queued data to leave.

        Sends nothing: the server learns that a simulation is done by counting its timesteps.
        """
        if self._finalized:
            return
        self._finalized = True
        for socket in self._sockets.values():
            socket.close()
        self._context.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.finalize()


_default_client: Client | None = None


def melissa_init(field_name: str, local_size: int, comm: Any = None) -> None:
    """Declare a field; the first call connects to the server (collective over `comm`)."""
    global _default_client
    if _default_client is None:
        _default_client = Client(comm)
    elif comm is not _default_client.comm:
        raise ValueError("melissa_init: every field must use the communicator of the first call")
    _default_client.init_field(field_name, local_size)


def melissa_send(field_name: str, values: np.ndarray) -> None:
    """Send the next timestep of a field (see `Client.send`)."""
    if _default_client is None:
        raise RuntimeError(f"melissa_send({field_name!r}) before melissa_init")
    _default_client.send(field_name, values)


def melissa_finalize() -> None:
    """Finish: wait (bounded) for queued data to leave, then close the connection."""
    global _default_client
    if _default_client is not None:
        client, _default_client = _default_client, None
        client.finalize()
