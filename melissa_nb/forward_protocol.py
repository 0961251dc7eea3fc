"""The pipeline wire format: a server rank pushes accepted data (or results) to a downstream
consumer. Bytes <-> `Forwarded`, no socket here (server/pipeline/forward.py has the two ends).

Wire format, version 1 (docs/embedding.md is the reference). Every message is one or two
ZeroMQ frames on a PUSH (server rank, connects) -> PULL (consumer, binds) pipe:

    frame 1: header, 172 bytes little-endian
        magic "MNBF" | uint16 version | uint16 kind (1 DATA, 2 RESULT, 3 END)
        int32 rank | int32 ranks | int32 simulation_id | int32 client_rank | int32 timestep
        int32 nb_vectors | int32 vect_size | uint64 sequence | char[128] name (NUL-padded)
    frame 2 (DATA, RESULT): nb_vectors * vect_size float64 values, C order

DATA carries an accepted message (name = field), RESULT whatever user code forwards (name =
its own). `sequence` numbers a rank's DATA and RESULT messages from 0; END, the last message of
a rank, carries in `sequence` how many came before it. After END the rank asks the consumer's
acknowledgement socket (REQ -> REP) `ACK?` with the same header; the consumer replies with the
header of an END naming what it received from that rank once it has all of it, so both sides
know the stream arrived whole. A consumer waits for the END of all `ranks` ranks.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from melissa_nb.errors import ProtocolError

FORWARD_VERSION = 1
MAGIC = b"MNBF"
DATA, RESULT, END = 1, 2, 3
NAME_WIDTH = 128
HEADER = struct.Struct(f"<4sHHiiiiiiiQ{NAME_WIDTH}s")


@dataclass(frozen=True)
class Forwarded:
    """One message of a pipeline, as the consumer sees it (`values` is a view of the frame)."""

    kind: int
    rank: int
    ranks: int
    simulation_id: int
    client_rank: int
    timestep: int
    sequence: int
    name: str
    values: np.ndarray | None

    def header(self) -> bytes:
        """The header frame of this message."""
        shape = (0, 0) if self.values is None else self.values.shape
        return HEADER.pack(
            MAGIC,
            FORWARD_VERSION,
            self.kind,
            self.rank,
            self.ranks,
            self.simulation_id,
            self.client_rank,
            self.timestep,
            *shape,
            self.sequence,
            self.name.encode(),
        )

    @classmethod
    def decode(cls, frames: Sequence[Any]) -> Forwarded:
        """Parse a header (and payload) frame list; ProtocolError on anything malformed."""
        head = getattr(frames[0], "buffer", frames[0])  # a ZeroMQ frame, or bytes
        if len(head) != HEADER.size:
            raise ProtocolError("bad_size", f"forward header of {len(head)} bytes")
        magic, version, kind, rank, ranks, simu, client, step, rows, size, sequence, name = (
            HEADER.unpack(head)
        )
        if magic != MAGIC or version != FORWARD_VERSION:
            raise ProtocolError("bad_version", f"forward header {magic!r} version {version}")
        if kind not in (DATA, RESULT, END):
            raise ProtocolError("unknown_type", f"forward message kind {kind}")
        values = None
        if kind != END:
            if len(frames) != 2:
                raise ProtocolError("bad_size", f"forward {kind}: {len(frames)} frames, expected 2")
            payload = getattr(frames[1], "buffer", frames[1])
            if len(payload) != 8 * rows * size:
                raise ProtocolError(
                    "bad_size", f"forward payload of {len(payload)} bytes for {rows}x{size}"
                )
            values = np.frombuffer(payload, dtype="<f8").reshape(rows, size)
        return cls(
            kind,
            rank,
            ranks,
            simu,
            client,
            step,
            sequence,
            name.split(b"\0", 1)[0].decode(),
            values,
        )
