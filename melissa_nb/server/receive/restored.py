"""What a rank starts with after a restart, as checkpoint/ hands it in: the old ranks' slices
cut for this rank, the simulations' statuses and the Sobol groups being assembled, and the two
functions that put a received bitset and the statuses back into the tracker."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from melissa_nb.errors import ProtocolError
from melissa_nb.protocol import ConnectionRequest, DataMessage
from melissa_nb.server.receive.tracking import SliceSteps, Tracker

Member = tuple[tuple[str, int, int, int], np.ndarray, np.ndarray]
"""A partly assembled Sobol group: (field, client_rank, group, timestep), values (p + 2,
cells), the members received."""


@dataclass
class RestoredSlice:
    """One slice (or one segment of it: receive/segments.py) a new rank starts with: its cells,
    state arrays and received bitset, `offset` cells into the rank's cells of its client
    slice."""

    field: str
    client_rank: int
    cells: int
    arrays: dict[str, np.ndarray]
    bits: np.ndarray
    offset: int = 0


@dataclass
class RestoredRank:
    """Everything a rank restores from the checkpoints of the old ranks."""

    old_ranks: int
    slices: list[RestoredSlice]
    dropped: np.ndarray
    started: np.ndarray
    announced: np.ndarray
    client_comm_size: int
    job_ids: dict[int, str]
    job_parameters: dict[int, tuple[float, ...]]
    members: list[Member]
    counts: dict[str, int]


def received_counts(bits: np.ndarray) -> np.ndarray:
    """Timesteps received per id, from a bitset of shape (ids, words)."""
    as_bytes = np.ascontiguousarray(bits).view(np.uint8).reshape(bits.shape[0], -1)
    return np.unpackbits(as_bytes, axis=1).sum(axis=1, dtype=np.int32)


def restore_tracker(tracker: Tracker, restored: RestoredRank, now: float) -> None:
    """Statuses of the restored rank (the caller restores its slices through learn_slice)."""
    tracker.dropped[:] = restored.dropped
    tracker.started[:] = restored.started
    tracker.announced[:] = restored.announced
    tracker.last_seen[restored.started] = now  # the timeout counts from the restart
    tracker.job_ids.update(restored.job_ids)
    tracker.job_parameters.update(restored.job_parameters)
    tracker.client_comm_size = restored.client_comm_size


def restore_steps(steps: SliceSteps, tracker: Tracker, bits: np.ndarray) -> None:
    """Put a slice's received bitset back and count its completed simulations."""
    steps.bits[:] = bits
    steps.received[:] = received_counts(bits)
    tracker.complete_slices += (steps.received == steps.timesteps).astype(np.int32)


class RestoredLayout:
    """The layout a restart's checkpoint gave (slice sizes, client ranks) and the first sign
    that the study's data does not fit it: the checkpoint is then another study's, and the
    study cannot end complete (`contradiction`)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.sizes: dict[tuple[str, int], int] = {}
        self.client_comm_size = 0
        self.contradiction: str | None = None

    def learn(self, restored: RestoredRank) -> None:
        """The layout of what this rank restored (segments of a slice add up)."""
        self.client_comm_size = restored.client_comm_size
        for item in restored.slices:
            key = (item.field, item.client_rank)
            self.sizes[key] = self.sizes.get(key, 0) + item.cells

    def check_frame(self, message: DataMessage) -> None:
        """ProtocolError (`checkpoint_layout`) for data of another size than the checkpoint's."""
        restored = self.sizes.get((message.field_name, message.client_rank))
        if restored not in (None, message.vect_size):
            self._contradicted(
                f"field {message.field_name!r} client rank {message.client_rank} has "
                f"{message.vect_size} cells in the data of simulation {message.simu_id}, "
                f"{restored} in the checkpoint"
            )

    def check_handshake(self, request: ConnectionRequest) -> None:
        """ProtocolError (`checkpoint_layout`) for a simulation of another client layout."""
        if self.client_comm_size not in (0, request.client_comm_size):
            self._contradicted(
                f"simulation {request.simu_id} has {request.client_comm_size} ranks, the "
                f"checkpoint's simulations had {self.client_comm_size}"
            )

    def _contradicted(self, detail: str) -> None:
        if self.contradiction is None:
            self.contradiction = detail
            self.log.error("the checkpoint restarted from is not this study's: %s", detail)
        raise ProtocolError("checkpoint_layout", detail)
