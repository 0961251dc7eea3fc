"""The MPI side of the server: who this rank is, and the few moments ranks talk to each other.

Ranks are independent except at start (gathering data addresses) and at the end. The end is
decided by repeated non-blocking all-gathers of every rank's summary row (`EndVote`): no rank
ever waits for another while data is flowing, and since every rank evaluates the same gathered
rows, all of them decide to stop in the same round. A plain process is an MPI world of one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np


def _mpi() -> Any:
    from mpi4py import MPI

    return MPI


class World:
    """This process's place among the server ranks."""

    def __init__(self) -> None:
        mpi = _mpi()
        self.comm = mpi.COMM_WORLD
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        node = self.comm.Split_type(mpi.COMM_TYPE_SHARED, key=self.rank)
        self.local_index: int = node.Get_rank()
        self.local_size: int = node.Get_size()
        node.Free()

    def threads_per_rank(self) -> int:
        """Numba threads for this rank: the node's usable cores shared by its server ranks."""
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return max(1, (cores or 1) // self.local_size)

    def allgather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order (start-up only: small picklable values)."""
        return self.comm.allgather(value)

    def sum(self, values: np.ndarray) -> np.ndarray:
        """The elementwise sum of every rank's float64 `values` (same shape on every rank)."""
        mine = np.ascontiguousarray(values, dtype=np.float64)
        total = np.empty_like(mine)
        self.comm.Allreduce(mine, total)
        return total

    def barrier(self) -> None:
        """Wait for every rank (end of the study only)."""
        self.comm.Barrier()

    def wait_turn(self) -> None:
        """Block until the previous rank hands over the turn (rank 0 goes first)."""
        if self.rank > 0:
            self.comm.recv(source=self.rank - 1, tag=_TURN_TAG)

    def pass_turn(self) -> None:
        """Hand the turn to the next rank (the last rank has nobody to hand it to)."""
        if self.rank + 1 < self.size:
            self.comm.send(None, dest=self.rank + 1, tag=_TURN_TAG)


_TURN_TAG = 7301


class EndVote:
    """Rounds of `Iallgather` of one int64 row per rank; `poll` returns the rows of a round."""

    def __init__(self, world: World, width: int, interval: float) -> None:
        self.world = world
        self.interval = interval
        self._send = np.zeros(width, dtype=np.int64)
        self._rows = np.zeros((world.size, width), dtype=np.int64)
        self._request: Any = None
        self._next_round = 0.0

    def poll(self, make_row: Callable[[], np.ndarray], now: float) -> np.ndarray | None:
        """Start a round with `make_row()` when due; return all rows when a round completes."""
        if self._request is None:
            if now < self._next_round:
                return None
            self._send[:] = make_row()
            self._request = self.world.comm.Iallgather(self._send, self._rows)
            self._next_round = now + self.interval
        if not self._request.Test():
            return None
        self._request = None
        return self._rows.copy()
