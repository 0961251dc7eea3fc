"""Server-side assembly of Sobol groups sent member by member (bounded memory).

With Sobol on, a data message of one vector comes from a single member of a group: simu_id =
group * (p + 2) + member (member 0 is Y_A, 1 is Y_B, 2 + k is Y_C(k+1)). Members of one
(field, client slice, group, timestep) are copied into a (p + 2, vect_size) buffer; when the last
one arrives the whole group is handed to the statistics and the buffer is freed.

Bound: the buffers together never exceed `limit_bytes` (--member-buffer-mb). When a new member
would need a new buffer beyond the bound, that member is refused (counted as
`member_buffer_full`); buffers already open are never evicted, so the groups that started first
can still complete and free memory. A refused member's simulation then never finishes and is
handled like any silent simulation (timeout, launcher drop).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass

import numpy as np

Key = tuple[str, int, int, int]
"""(field, client_rank, group, timestep)."""


def mapped_buffer(shape: tuple[int, int]) -> np.ndarray:
    """A float64 buffer in its own anonymous mapping, unmapped when the last view goes.

    Group buffers come and go by the thousand, all of one size. From malloc, glibc would serve
    them from its heap once it has freed one (its mmap threshold follows the largest block
    freed) and keep freed ones resident: Sobol members, 1e5 cells, 16 timesteps
    (bench/memory.py), peak RSS 675-678 MiB with malloc, 647-650 mapped.
    """
    count = shape[0] * shape[1]
    return np.frombuffer(mmap.mmap(-1, max(1, 8 * count)), np.float64, count).reshape(shape)


@dataclass
class _Partial:
    values: np.ndarray
    received: np.ndarray


class MemberAssembly:
    """Buffers of incomplete groups, keyed by (field, client_rank, group, timestep)."""

    ACCEPTED, DUPLICATE, FULL = "accepted", "duplicate", "full"

    def __init__(self, group_size: int, limit_bytes: int) -> None:
        self.group_size = group_size
        self.limit_bytes = limit_bytes
        self.used_bytes = 0
        self._partials: dict[Key, _Partial] = {}

    def __len__(self) -> int:
        return len(self._partials)

    def add(self, key: Key, member: int, vector: np.ndarray) -> tuple[str, np.ndarray | None]:
        """Store one member's vector; returns (outcome, the complete group or None)."""
        partial = self._partials.get(key)
        if partial is None:
            size = self.group_size * vector.size * vector.itemsize
            if self.used_bytes + size > self.limit_bytes:
                return self.FULL, None
            partial = _Partial(
                mapped_buffer((self.group_size, vector.size)),
                np.zeros(self.group_size, dtype=bool),
            )
            self._partials[key] = partial
            self.used_bytes += size
        if partial.received[member]:
            return self.DUPLICATE, None
        partial.values[member] = vector
        partial.received[member] = True
        if not partial.received.all():
            return self.ACCEPTED, None
        del self._partials[key]
        self.used_bytes -= partial.values.nbytes
        return self.ACCEPTED, partial.values

    def partials(self) -> list[tuple[Key, np.ndarray, np.ndarray]]:
        """Every incomplete group: (key, values (p + 2, cells), received mask) (checkpoints)."""
        return [(key, p.values, p.received) for key, p in self._partials.items()]

    def restore(self, key: Key, values: np.ndarray, received: np.ndarray) -> None:
        """Put back an incomplete group read from a checkpoint."""
        self._partials[key] = _Partial(values.astype(np.float64), received.astype(bool))
        self.used_bytes += self._partials[key].values.nbytes

    def discard_group(self, group: int) -> None:
        """Free every buffer of a group (it was dropped)."""
        for key in [key for key in self._partials if key[2] == group]:
            self.used_bytes -= self._partials.pop(key).values.nbytes
