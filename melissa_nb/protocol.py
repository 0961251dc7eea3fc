"""Bytes <-> frozen dataclasses for every message of the Melissa 0.6 wire protocol.

This module knows nothing of sockets or statistics: it turns frames into validated messages and
back. Every decoding failure raises `ProtocolError(reason, message)` with a short `reason` key
(one of `melissa_nb.errors.REJECTION_REASONS`) that the server counts. `docs/protocol.md` is the
authoritative description of the format; integers are int32 little-endian, reals float64
little-endian. (Over 400 lines: the whole wire format, message after message in the order of
docs/protocol.md, so the two read side by side.)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar

import numpy as np

from melissa_nb.errors import ConfigurationError, ProtocolError

PROTOCOL_VERSION = "1.0"
"""Version of docs/protocol.md (the wire format itself is Melissa 0.6's)."""

DEFAULT_ENTRY_WIDTH = 256
"""Bytes per data-address entry of the connection reply (the C client's MPI_MAX_PROCESSOR_NAME)."""

MAX_CLIENT_RANKS = 1 << 17
"""Most ranks a simulation may have: a handshake above it is refused, and data of a client rank
at or above it too, since every client rank's data makes a state block on the server."""

FIELD_NAME_WIDTH = 128
DATA_HEADER = struct.Struct(f"<4i{FIELD_NAME_WIDTH}s")
DATA_HEADER_SIZE = DATA_HEADER.size  # 144, a multiple of 8 so the payload stays aligned
FLOAT64 = np.dtype("<f8")

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_INT32 = struct.Struct("<i")
_FLOAT64 = struct.Struct("<d")
_CONNECTION_REQUEST = struct.Struct("<2i")
_CONNECTION_REPLY_HEADER = struct.Struct("<5i")


# --- shared checks and readers ------------------------------------------------------------------


def _check_int32(name: str, value: int, minimum: int = INT32_MIN) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ProtocolError("bad_value", f"{name} must be an integer, got {value!r}")
    if not minimum <= value <= INT32_MAX:
        raise ProtocolError("bad_value", f"{name} = {value} not in [{minimum}, {INT32_MAX}]")


def _check_text(name: str, text: str, width: int | None = None, allow_empty: bool = False) -> bytes:
    """UTF-8 bytes of `text`, checked to fit a NUL-terminated C string of `width` bytes."""
    if not isinstance(text, str):
        raise ProtocolError("bad_string", f"{name} must be a str, got {text!r}")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("bad_string", f"{name} {text!r} is not encodable as UTF-8") from None
    if "\0" in text:
        raise ProtocolError("bad_string", f"{name} {text!r} contains a NUL character")
    if not raw and not allow_empty:
        raise ProtocolError("bad_string", f"{name} is empty")
    if width is not None and len(raw) > width - 1:
        raise ProtocolError(
            "bad_string", f"{name} {text!r} is {len(raw)} bytes, at most {width - 1} fit"
        )
    return raw


def _c_string(raw: bytes | memoryview, name: str, reason: str, allow_empty: bool = False) -> str:
    """The text before the first NUL of `raw`; bytes after it are ignored."""
    end = bytes(raw).find(b"\0")
    if end < 0:
        raise ProtocolError(reason, f"{name} has no NUL terminator within {len(raw)} bytes")
    return _decode_text(bytes(raw[:end]), name, allow_empty)


def _decode_text(raw: bytes, name: str, allow_empty: bool = False) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("bad_string", f"{name} {raw[:40]!r} is not valid UTF-8") from None
    if not text and not allow_empty:
        raise ProtocolError("bad_string", f"{name} is empty")
    return text


def _bytes_view(buffer: object) -> memoryview:
    """A flat byte view of any buffer (bytes, bytearray, memoryview, zmq.Frame)."""
    view = memoryview(buffer)  # type: ignore[arg-type]
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class _Reader:
    """Sequential reads from a frame; running off its end is a `short_frame`."""

    def __init__(self, buffer: object, what: str) -> None:
        self.view = _bytes_view(buffer)
        self.offset = 0
        self.what = what

    def take(self, size: int) -> memoryview:
        if self.offset + size > len(self.view):
            raise ProtocolError(
                "short_frame",
                f"{self.what} of {len(self.view)} bytes ends before byte {self.offset + size}",
            )
        part = self.view[self.offset : self.offset + size]
        self.offset += size
        return part

    def int32(self, name: str, minimum: int = INT32_MIN) -> int:
        value = _INT32.unpack(self.take(4))[0]
        if value < minimum:
            raise ProtocolError("bad_value", f"{self.what}: {name} = {value} is below {minimum}")
        return value

    def float64(self) -> float:
        return _FLOAT64.unpack(self.take(8))[0]

    def c_string(self, name: str, allow_empty: bool = False) -> str:
        rest = bytes(self.view[self.offset :])
        end = rest.find(b"\0")
        if end < 0:
            raise ProtocolError("unterminated_string", f"{self.what}: {name} has no NUL")
        self.offset += end + 1
        return _decode_text(rest[:end], f"{self.what}: {name}", allow_empty)

    def remaining(self) -> int:
        return len(self.view) - self.offset

    def rest(self) -> memoryview:
        return self.take(self.remaining())

    def finish(self) -> None:
        if self.remaining():
            raise ProtocolError(
                "bad_size", f"{self.what}: {self.remaining()} unexpected trailing bytes"
            )


# --- connection handshake (REQ/REP, port 2003) ---------------------------------------------------


@dataclass(frozen=True)
class ConnectionRequest:
    """Simulation rank 0 -> server rank 0: the client's communicator size and simulation id."""

    client_comm_size: int
    simu_id: int

    def __post_init__(self) -> None:
        _check_int32("client_comm_size", self.client_comm_size, minimum=1)
        _check_int32("simu_id", self.simu_id, minimum=0)
        if self.client_comm_size > MAX_CLIENT_RANKS:
            raise ProtocolError(
                "bad_value",
                f"client_comm_size = {self.client_comm_size} is more than {MAX_CLIENT_RANKS}",
            )

    def encode(self) -> bytes:
        """The 8-byte request frame."""
        return _CONNECTION_REQUEST.pack(self.client_comm_size, self.simu_id)

    @classmethod
    def decode(cls, buffer: object) -> ConnectionRequest:
        """Parse and validate a request frame (exactly 8 bytes)."""
        reader = _Reader(buffer, "connection request")
        client_comm_size = reader.int32("client_comm_size", minimum=1)
        simu_id = reader.int32("simu_id", minimum=0)
        reader.finish()
        return cls(client_comm_size, simu_id)


@dataclass(frozen=True)
class ConnectionReply:
    """Server rank 0 -> simulation rank 0: study settings and one data address per server rank.

    `server_comm_size` is `len(data_addresses)`. Each address is a NUL-padded entry of
    `entry_width` bytes on the wire (the client build's MPI_MAX_PROCESSOR_NAME).
    """

    sobol: bool
    learning: int
    nb_parameters: int
    verbose_level: int
    data_addresses: tuple[str, ...]
    entry_width: int = DEFAULT_ENTRY_WIDTH

    def __post_init__(self) -> None:
        if not isinstance(self.sobol, (bool, np.bool_)):
            raise ProtocolError("bad_value", f"sobol must be a bool, got {self.sobol!r}")
        _check_int32("learning", self.learning, minimum=0)
        _check_int32("nb_parameters", self.nb_parameters, minimum=0)
        _check_int32("verbose_level", self.verbose_level, minimum=0)
        _check_int32("entry_width", self.entry_width, minimum=2)
        object.__setattr__(self, "data_addresses", tuple(self.data_addresses))
        if not self.data_addresses:
            raise ProtocolError("bad_value", "a connection reply needs at least one data address")
        for address in self.data_addresses:
            _check_text("data address", address, self.entry_width)

    @property
    def server_comm_size(self) -> int:
        """Number of server ranks (one data address each)."""
        return len(self.data_addresses)

    def encode(self) -> bytes:
        """Five int32 then `server_comm_size` NUL-padded entries of `entry_width` bytes."""
        header = _CONNECTION_REPLY_HEADER.pack(
            self.server_comm_size,
            int(self.sobol),
            self.learning,
            self.nb_parameters,
            self.verbose_level,
        )
        entries = (
            address.encode("utf-8").ljust(self.entry_width, b"\0")
            for address in self.data_addresses
        )
        return header + b"".join(entries)

    @classmethod
    def decode(
        cls, buffer: object, entry_width: int | None = DEFAULT_ENTRY_WIDTH
    ) -> ConnectionReply:
        """Parse a reply; `entry_width=None` infers the width from the frame length.

        Inference lets a client talk to servers built for either MPI_MAX_PROCESSOR_NAME.
        """
        reader = _Reader(buffer, "connection reply")
        server_comm_size = reader.int32("server_comm_size", minimum=1)
        sobol = reader.int32("sobol_op", minimum=0)
        if sobol > 1:
            raise ProtocolError("bad_value", f"connection reply: sobol_op = {sobol} is not 0 or 1")
        learning = reader.int32("learning", minimum=0)
        nb_parameters = reader.int32("nb_parameters", minimum=0)
        verbose_level = reader.int32("verbose_level", minimum=0)
        table = reader.remaining()
        if entry_width is None:
            if table % server_comm_size or table // server_comm_size < 2:
                raise ProtocolError(
                    "bad_size",
                    f"connection reply: {table} bytes of port table do not split into "
                    f"{server_comm_size} entries",
                )
            entry_width = table // server_comm_size
        elif table != server_comm_size * entry_width:
            raise ProtocolError(
                "bad_size",
                f"connection reply: port table of {table} bytes, expected {server_comm_size} "
                f"entries of {entry_width}",
            )
        addresses = tuple(
            _c_string(reader.take(entry_width), f"data address {rank}", "unterminated_string")
            for rank in range(server_comm_size)
        )
        return cls(bool(sobol), learning, nb_parameters, verbose_level, addresses, entry_width)


# --- data messages (client PUSH -> server PULL) --------------------------------------------------


def check_field_name(field_name: str) -> bytes:
    """The field name's bytes; ProtocolError("bad_string") unless it fits the 128-byte field."""
    return _check_text("field name", field_name, FIELD_NAME_WIDTH)


def encode_data_header(
    time_stamp: int, simu_id: int, client_rank: int, vect_size: int, field_name: str
) -> bytes:
    """The 144-byte header that precedes the float64 payload of a data frame."""
    _check_int32("time_stamp", time_stamp, minimum=0)
    _check_int32("simu_id", simu_id, minimum=0)
    _check_int32("client_rank", client_rank, minimum=0)
    _check_int32("vect_size", vect_size, minimum=1)
    return DATA_HEADER.pack(
        time_stamp, simu_id, client_rank, vect_size, check_field_name(field_name)
    )


def data_frame_size(vect_size: int, nb_vectors: int = 1) -> int:
    """Bytes of a data frame: for ZMQ_MAXMSGSIZE and preallocated receive buffers."""
    return DATA_HEADER_SIZE + nb_vectors * vect_size * FLOAT64.itemsize


def encode_data_frame(
    time_stamp: int, simu_id: int, client_rank: int, field_name: str, values: np.ndarray
) -> bytearray:
    """One complete data frame, with the payload copied exactly once from `values`.

    `values` is `(vect_size,)` or `(nb_vectors, vect_size)`, any strides (a column slice of a
    Sobol group is fine). The wire format is one frame, so header and payload share one buffer;
    sending the result with `copy=False` avoids any further copy.
    """
    values = np.asarray(values)
    if values.ndim not in (1, 2) or values.shape[-1] < 1:
        raise ProtocolError(
            "bad_size", f"values must be 1-D or 2-D and non-empty, got {values.shape}"
        )
    header = encode_data_header(time_stamp, simu_id, client_rank, values.shape[-1], field_name)
    frame = bytearray(data_frame_size(values.shape[-1], values.size // values.shape[-1]))
    frame[:DATA_HEADER_SIZE] = header
    payload = np.frombuffer(frame, dtype=FLOAT64, offset=DATA_HEADER_SIZE)
    np.copyto(payload.reshape(values.shape), values, casting="same_kind")
    return frame


@dataclass(frozen=True, eq=False)
class DataMessage:
    """One field of one simulation (or Sobol group) at one timestep, from one client rank.

    `values` has shape `(nb_vectors, vect_size)`: 1 vector, or p+2 (Y_A, Y_B, Y_C1..Y_Cp) from a
    Sobol group master. A decoded message's `values` is a read-only view of the frame (no copy).
    """

    time_stamp: int
    simu_id: int
    client_rank: int
    field_name: str
    values: np.ndarray

    def __post_init__(self) -> None:
        values = self.values
        if not isinstance(values, np.ndarray) or values.dtype != FLOAT64:
            values = np.asarray(values, dtype=FLOAT64)
        if values.ndim == 1:
            values = values[np.newaxis, :]
        if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
            raise ProtocolError(
                "bad_size", f"values must be (nb_vectors, vect_size), got {values.shape}"
            )
        object.__setattr__(self, "values", values)
        encode_data_header(
            self.time_stamp, self.simu_id, self.client_rank, self.vect_size, self.field_name
        )

    @property
    def vect_size(self) -> int:
        """Doubles per vector."""
        return self.values.shape[1]

    @property
    def nb_vectors(self) -> int:
        """1, or p+2 for a Sobol group message."""
        return self.values.shape[0]

    def encode(self) -> bytes:
        """The data frame (one copy of the payload)."""
        return bytes(self.encode_frame())

    def encode_frame(self) -> bytearray:
        """The data frame as a mutable buffer, for zero-further-copy sends."""
        return encode_data_frame(
            self.time_stamp, self.simu_id, self.client_rank, self.field_name, self.values
        )

    @classmethod
    def decode(cls, buffer: object, nb_vectors: int | Iterable[int] = 1) -> DataMessage:
        """Parse a data frame; `nb_vectors` is the accepted vector count (or counts).

        The count actually present is read from the frame length, which must be exactly
        144 + 8 * count * vect_size for one of the accepted counts.
        """
        view = _bytes_view(buffer)
        if len(view) < DATA_HEADER_SIZE:
            raise ProtocolError(
                "short_frame",
                f"data frame of {len(view)} bytes, header alone is {DATA_HEADER_SIZE}",
            )
        time_stamp, simu_id, client_rank, vect_size, raw_name = DATA_HEADER.unpack_from(view)
        if time_stamp < 0 or simu_id < 0 or client_rank < 0:
            name, value = next(
                item
                for item in (
                    ("time_stamp", time_stamp),
                    ("simu_id", simu_id),
                    ("client_rank", client_rank),
                )
                if item[1] < 0
            )
            raise ProtocolError("bad_value", f"data frame: {name} = {value} is negative")
        if vect_size < 1:
            raise ProtocolError("bad_size", f"data frame: vect_size = {vect_size} is not positive")
        field_name = _c_string(raw_name, "data frame: field name", "unterminated_field")
        payload = len(view) - DATA_HEADER_SIZE
        row_bytes = vect_size * FLOAT64.itemsize
        accepted = (
            (nb_vectors,)
            if isinstance(nb_vectors, int)
            else nb_vectors
            if isinstance(nb_vectors, tuple)
            else tuple(nb_vectors)
        )
        count, leftover = divmod(payload, row_bytes)
        if leftover or count not in accepted:
            raise ProtocolError(
                "bad_size",
                f"data frame: {payload} payload bytes for vect_size {vect_size}, expected "
                f"{' or '.join(str(n * row_bytes) for n in accepted)}",
            )
        values = np.ndarray((count, vect_size), FLOAT64, view, DATA_HEADER_SIZE)
        # Every field is checked above: skip __post_init__, which re-encodes the header to
        # validate a message built by hand (a third of the decoding time).
        message = object.__new__(cls)
        for name, value in zip(
            _DATA_MESSAGE_FIELDS,
            (time_stamp, simu_id, client_rank, field_name, values),
            strict=True,
        ):
            object.__setattr__(message, name, value)
        return message


_DATA_MESSAGE_FIELDS = tuple(item.name for item in fields(DataMessage))


def sobol_member(simu_id: int, nb_parameters: int) -> tuple[int, int]:
    """(group, member) of a Sobol simulation id; member 0 is Y_A, 1 is Y_B, 2+j is Y_C(j+1)."""
    return divmod(simu_id, nb_parameters + 2)


@dataclass
class DataValidator:
    """Context checks of data messages that need the study settings and what came before.

    Known field names, time_stamp in [0, nb_timesteps), simu_id in range, client_rank in range
    (when `client_comm_size` is known) and a vect_size equal to the one this (field, client_rank)
    sent first. With Sobol on, a message of p+2 vectors names a group (simu_id < nb_samples) and a
    message of 1 vector names a single member (simu_id < nb_samples * (p+2)).
    """

    field_names: tuple[str, ...]
    nb_timesteps: int
    nb_samples: int
    sobol: bool = False
    nb_parameters: int = 0
    client_comm_size: int | None = None
    vect_sizes: dict[tuple[str, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.field_names = tuple(self.field_names)
        if self.nb_timesteps < 1 or self.nb_samples < 1:
            raise ConfigurationError(
                f"nb_timesteps ({self.nb_timesteps}) and nb_samples ({self.nb_samples}) "
                "must be >= 1"
            )
        if self.sobol and self.nb_parameters < 1:
            raise ConfigurationError(f"Sobol needs nb_parameters >= 1, got {self.nb_parameters}")

    @property
    def accepted_vector_counts(self) -> tuple[int, ...]:
        """Vector counts a data frame may carry: (1,) or (1, p+2) with Sobol."""
        return (1, self.nb_parameters + 2) if self.sobol else (1,)

    def decode(self, buffer: object) -> DataMessage:
        """Decode a data frame and run every context check on it."""
        message = DataMessage.decode(buffer, self.accepted_vector_counts)
        self.check(message)
        return message

    def check(self, message: DataMessage) -> None:
        """Raise ProtocolError if `message` does not fit the study (see `remember`)."""
        if message.field_name not in self.field_names:
            raise ProtocolError(
                "unknown_field", f"field {message.field_name!r} is not in {list(self.field_names)}"
            )
        if message.time_stamp >= self.nb_timesteps:
            raise ProtocolError(
                "timestep_out_of_range",
                f"time_stamp {message.time_stamp} not in [0, {self.nb_timesteps})",
            )
        ids = self.nb_samples
        if self.sobol and message.nb_vectors == 1:
            ids *= self.nb_parameters + 2
        if message.simu_id >= ids:
            raise ProtocolError(
                "simu_id_out_of_range", f"simu_id {message.simu_id} not in [0, {ids})"
            )
        ranks = MAX_CLIENT_RANKS if self.client_comm_size is None else self.client_comm_size
        if message.client_rank >= ranks:
            raise ProtocolError(
                "client_rank_out_of_range", f"client_rank {message.client_rank} not in [0, {ranks})"
            )
        key = (message.field_name, message.client_rank)
        known = self.vect_sizes.get(key, message.vect_size)
        if known != message.vect_size:
            raise ProtocolError(
                "vect_size_changed",
                f"field {key[0]!r} client rank {key[1]} sent "
                f"vect_size {message.vect_size}, before {known}",
            )

    def remember(self, field_name: str, client_rank: int, vect_size: int) -> None:
        """Fix the vect_size of (field, client_rank), once its data is kept.

        Only a kept message fixes it: a refused one (no room for its state) must not make the
        real data of that slice look changed.
        """
        self.vect_sizes.setdefault((field_name, client_rank), vect_size)


# --- launcher messages (int32 type first) --------------------------------------------------------


@dataclass(frozen=True)
class LauncherMessage:
    """Base of the launcher messages; `TYPE` is the int32 that starts the frame."""

    TYPE: ClassVar[int]

    def encode(self) -> bytes:
        """The frame: int32 type then the body."""
        return _INT32.pack(self.TYPE) + self._body()

    def _body(self) -> bytes:
        return b""

    @classmethod
    def decode(cls, buffer: object) -> LauncherMessage:
        """Parse a frame of exactly this message type."""
        reader = _Reader(buffer, cls.__name__)
        kind = reader.int32("type")
        if kind != cls.TYPE and not (cls is Hello and kind == LEGACY_HELLO_TYPE):
            raise ProtocolError(
                "unknown_type", f"type {kind} where {cls.__name__} ({cls.TYPE}) was expected"
            )
        message = cls._decode_body(reader)
        reader.finish()
        return message

    @classmethod
    def _decode_body(cls, reader: _Reader) -> LauncherMessage:
        return cls()


@dataclass(frozen=True)
class Job(LauncherMessage):
    """Launcher -> server: the parameters of a simulation (or Sobol group)."""

    TYPE: ClassVar[int] = 1
    simu_id: int
    job_id: str
    parameters: tuple[float, ...]

    def __post_init__(self) -> None:
        _check_int32("simu_id", self.simu_id, minimum=0)
        _check_text("job_id", self.job_id, allow_empty=True)
        object.__setattr__(self, "parameters", tuple(float(p) for p in self.parameters))

    def _body(self) -> bytes:
        return (
            _INT32.pack(self.simu_id)
            + self.job_id.encode("utf-8")
            + b"\0"
            + np.asarray(self.parameters, dtype=FLOAT64).tobytes()
        )

    @classmethod
    def decode(cls, buffer: object, nb_parameters: int | tuple[int, ...] | None = None) -> Job:
        """Parse a JOB; the parameter count is what remains, or must be (one of)
        `nb_parameters`."""
        message = super().decode(buffer)
        counts = (nb_parameters,) if isinstance(nb_parameters, int) else nb_parameters
        if counts is not None and len(message.parameters) not in counts:
            raise ProtocolError(
                "bad_size",
                f"JOB carries {len(message.parameters)} parameters, expected "
                + " or ".join(map(str, counts)),
            )
        return message  # type: ignore[return-value]

    @classmethod
    def _decode_body(cls, reader: _Reader) -> Job:
        simu_id = reader.int32("simu_id", minimum=0)
        job_id = reader.c_string("job_id", allow_empty=True)
        rest = reader.rest()
        if len(rest) % FLOAT64.itemsize:
            raise ProtocolError(
                "bad_size", f"JOB: {len(rest)} parameter bytes, not a multiple of 8"
            )
        return cls(simu_id, job_id, tuple(np.frombuffer(rest, dtype=FLOAT64).tolist()))


@dataclass(frozen=True)
class Drop(LauncherMessage):
    """Launcher -> server: give up a simulation; it counts as finished."""

    TYPE: ClassVar[int] = 2
    simu_id: int
    job_id: str

    def __post_init__(self) -> None:
        _check_int32("simu_id", self.simu_id, minimum=0)
        _check_text("job_id", self.job_id, allow_empty=True)

    def _body(self) -> bytes:
        return _INT32.pack(self.simu_id) + self.job_id.encode("utf-8") + b"\0"

    @classmethod
    def _decode_body(cls, reader: _Reader) -> Drop:
        return cls(reader.int32("simu_id", minimum=0), reader.c_string("job_id", allow_empty=True))


@dataclass(frozen=True)
class Stop(LauncherMessage):
    """Server -> launcher: the study is finished."""

    TYPE: ClassVar[int] = 3


@dataclass(frozen=True)
class Timeout(LauncherMessage):
    """Server -> launcher: no data from this simulation for longer than the timeout."""

    TYPE: ClassVar[int] = 4
    simu_id: int

    def __post_init__(self) -> None:
        _check_int32("simu_id", self.simu_id, minimum=0)

    def _body(self) -> bytes:
        return _INT32.pack(self.simu_id)

    @classmethod
    def _decode_body(cls, reader: _Reader) -> Timeout:
        return cls(reader.int32("simu_id", minimum=0))


SIMU_RUNNING = 1
SIMU_FINISHED = 2


@dataclass(frozen=True)
class SimuStatus(LauncherMessage):
    """Server -> launcher: a simulation is connected/running (1) or finished (2)."""

    TYPE: ClassVar[int] = 5
    simu_id: int
    status: int

    def __post_init__(self) -> None:
        _check_int32("simu_id", self.simu_id, minimum=0)
        if self.status not in (SIMU_RUNNING, SIMU_FINISHED):
            raise ProtocolError(
                "bad_value",
                f"simulation status {self.status!r} is not {SIMU_RUNNING} or {SIMU_FINISHED}",
            )

    def _body(self) -> bytes:
        return _INT32.pack(self.simu_id) + _INT32.pack(self.status)

    @classmethod
    def _decode_body(cls, reader: _Reader) -> SimuStatus:
        return cls(reader.int32("simu_id", minimum=0), reader.int32("status"))


@dataclass(frozen=True)
class Server(LauncherMessage):
    """Server -> launcher: a server rank and its node name (every rank, at start)."""

    TYPE: ClassVar[int] = 6
    rank: int
    node_name: str

    def __post_init__(self) -> None:
        _check_int32("rank", self.rank, minimum=0)
        _check_text("node_name", self.node_name)

    def _body(self) -> bytes:
        return _INT32.pack(self.rank) + self.node_name.encode("utf-8") + b"\0"

    @classmethod
    def _decode_body(cls, reader: _Reader) -> Server:
        return cls(reader.int32("rank", minimum=0), reader.c_string("node_name"))


@dataclass(frozen=True)
class Alive(LauncherMessage):
    """Server -> launcher: heartbeat."""

    TYPE: ClassVar[int] = 7


NON_FINITE = "non_finite"
"""`ConfidenceInterval.stat_name` of melissa_nb's notice that simulation `int(value)` sent NaN or
infinite values of `field_name` (sent with a TIMEOUT for it; Melissa's launcher ignores it)."""


@dataclass(frozen=True)
class ConfidenceInterval(LauncherMessage):
    """Server -> launcher: the current confidence-interval width of a statistic of a field."""

    TYPE: ClassVar[int] = 8
    stat_name: str
    field_name: str
    value: float

    def __post_init__(self) -> None:
        _check_text("stat_name", self.stat_name)
        _check_text("field_name", self.field_name)
        object.__setattr__(self, "value", float(self.value))

    def _body(self) -> bytes:
        return (
            self.stat_name.encode("utf-8")
            + b"\0"
            + self.field_name.encode("utf-8")
            + b"\0"
            + _FLOAT64.pack(self.value)
        )

    @classmethod
    def _decode_body(cls, reader: _Reader) -> ConfidenceInterval:
        return cls(reader.c_string("stat_name"), reader.c_string("field_name"), reader.float64())


@dataclass(frozen=True)
class Options(LauncherMessage):
    """Launcher -> server (REQ reply): the server's command-line options as one string.

    Encoded NUL-terminated; decoding also accepts a body without the NUL.
    """

    TYPE: ClassVar[int] = 9
    options: str

    def __post_init__(self) -> None:
        _check_text("options", self.options, allow_empty=True)

    def _body(self) -> bytes:
        return self.options.encode("utf-8") + b"\0"

    @classmethod
    def _decode_body(cls, reader: _Reader) -> Options:
        return cls(_c_text_tail(reader.rest(), "OPTIONS body"))


@dataclass(frozen=True)
class Hello(LauncherMessage):
    """Launcher -> server: heartbeat (about every 10 s). Type 10; 0 is accepted on decode."""

    TYPE: ClassVar[int] = 10


LEGACY_HELLO_TYPE = 0
"""melissa4py and some 0.6 headers numbered HELLO 0: accepted when decoding, never sent."""

LAUNCHER_MESSAGES: Mapping[int, type[LauncherMessage]] = {
    message.TYPE: message
    for message in (
        Job,
        Drop,
        Stop,
        Timeout,
        SimuStatus,
        Server,
        Alive,
        ConfidenceInterval,
        Options,
        Hello,
    )
}


def decode_launcher_message(
    buffer: object, nb_parameters: int | tuple[int, ...] | None = None
) -> LauncherMessage:
    """Decode any launcher message by its int32 type; `nb_parameters` checks a JOB's count."""
    view = _bytes_view(buffer)
    if len(view) < 4:
        raise ProtocolError("short_frame", f"launcher message of {len(view)} bytes has no type")
    kind = _INT32.unpack_from(view)[0]
    if kind == LEGACY_HELLO_TYPE:
        kind = Hello.TYPE
    message_class = LAUNCHER_MESSAGES.get(kind)
    if message_class is None:
        raise ProtocolError(
            "unknown_type", f"launcher message type {kind} is not in {sorted(LAUNCHER_MESSAGES)}"
        )
    if message_class is Job:
        return Job.decode(view, nb_parameters)
    return message_class.decode(view)


# --- text requests from the server to the launcher (REQ -> REP) ----------------------------------


def _c_text_tail(raw: memoryview | bytes, name: str) -> str:
    """Text up to the first NUL, or the whole buffer when it has none."""
    data = bytes(raw)
    end = data.find(b"\0")
    return _decode_text(data if end < 0 else data[:end], name, allow_empty=True)


@dataclass(frozen=True)
class TextRequest:
    """A request from server rank 0: `options`, `simu_info <id>` or `test_timeout`."""

    KINDS: ClassVar[tuple[str, ...]] = ("options", "simu_info", "test_timeout")
    kind: str
    simu_id: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in self.KINDS:
            raise ProtocolError("bad_request", f"request {self.kind!r} is not one of {self.KINDS}")
        if (self.kind == "simu_info") != (self.simu_id is not None):
            raise ProtocolError(
                "bad_request",
                f"{self.kind!r} with simu_id {self.simu_id!r}: only simu_info carries an id",
            )
        if self.simu_id is not None:
            _check_int32("simu_id", self.simu_id, minimum=0)

    def encode(self) -> bytes:
        """ASCII text, NUL-terminated like every C string of the protocol."""
        text = self.kind if self.simu_id is None else f"{self.kind} {self.simu_id}"
        return text.encode("ascii") + b"\0"

    @classmethod
    def decode(cls, buffer: object) -> TextRequest:
        """Parse a request; a trailing NUL is optional, whitespace separates the words."""
        words = _c_text_tail(_bytes_view(buffer), "text request").split()
        if not words:
            raise ProtocolError("bad_request", "empty text request")
        kind, arguments = words[0], words[1:]
        if kind == "simu_info":
            if len(arguments) != 1 or not (arguments[0].isascii() and arguments[0].isdigit()):
                raise ProtocolError("bad_request", f"simu_info needs one id, got {arguments!r}")
            return cls(kind, int(arguments[0]))
        if arguments:
            raise ProtocolError("bad_request", f"{kind!r} takes no argument, got {arguments!r}")
        return cls(kind)
