"""Samples accepted in one burst of the receive loop, folded per (slice, timestep) in one pass.

The statistics kernels are bound by the memory traffic of their state: a general update reads
and writes about 12 bytes of state per byte received, a Sobol p = 5 update 8. When messages
queue up (the server is behind the wire), the loop takes several at once; folding the k samples
of one (slice, timestep) together moves that state once instead of k times. Samples of one
(slice, timestep) keep their arrival order, so the state is bit for bit what folding them one by
one gives; different timesteps have separate state, so their relative order does not matter.

Bound: the batch holds the received frames (zero-copy views, or assembled Sobol groups) until it
is folded: it folds as soon as they reach `limit_bytes` (--batch-mb), so it never holds more
than that plus one message; 0 folds every message on arrival. The loop also folds at the end of
every burst, before it answers anything else (checkpoints, votes and status see folded state).
"""

from __future__ import annotations

import numpy as np

from melissa_nb.server.receive.slices import SliceStatistics


class FoldBatch:
    """Pending samples (or Sobol groups) keyed by (slice, timestep), in arrival order."""

    def __init__(self, sobol: bool, limit_bytes: int) -> None:
        self.sobol = sobol
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self._pending: dict[
            tuple[SliceStatistics, int],
            tuple[list[np.ndarray], list[int], list[tuple[float, ...] | None]],
        ] = {}

    @property
    def full(self) -> bool:
        """True once the held data reached the bound: fold before taking more."""
        return self.bytes >= self.limit_bytes

    def add(
        self,
        statistics: SliceStatistics,
        timestep: int,
        values: np.ndarray,
        sample: int,
        parameters: tuple[float, ...] | None = None,
    ) -> None:
        """Hold one message's vectors (1, cells), or a whole Sobol group (p + 2, cells), of
        simulation (or group) `sample` run with `parameters` (needed by correlations and chaos)."""
        vectors, samples, inputs = self._pending.setdefault((statistics, timestep), ([], [], []))
        vectors.append(values if self.sobol else values[0])
        samples.append(sample)
        inputs.append(parameters)
        self.bytes += values.nbytes

    def fold(self) -> int:
        """Fold everything held, one pass over each (slice, timestep) state, and let go;
        returns the number of passes."""
        passes = len(self._pending)
        for (statistics, timestep), (vectors, samples, inputs) in self._pending.items():
            table = np.array(inputs, dtype=np.float64) if None not in inputs else None
            if self.sobol:
                statistics.update_groups(timestep, vectors, samples, table)
            else:
                statistics.update_samples(timestep, vectors, samples, table)
        self._pending.clear()
        self.bytes = 0
        return passes
