"""A slice restored from old ranks that had received different timesteps of it.

A checkpoint taken mid-stream can find rank 0 holding timestep t of simulation s for its cells
of a client slice while rank 1 does not yet hold it for its own. A restart on another number of
ranks may give one new rank cells from both: their states cannot become one (a state has one
sample count per timestep, and a folded sample cannot be taken out). So that new rank keeps them
as segments, each its own `SliceStatistics` (own block, own count) with its own received bits,
side by side over the slice's cells. The tracker sees one slice whose bits are what every
segment has; a message it has not is folded into the segments that lack it (the simulation is
unfinished, so its launcher runs it again and it re-sends everything), which brings them back
into agreement. Output, checkpoints and the convergence check see the segments as one slice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from melissa_nb.server.receive.slices import SliceStatistics
from melissa_nb.server.receive.tracking import SliceSteps


@dataclass
class Segment:
    """Cells [offset, offset + statistics.cells) of the slice and what they received."""

    offset: int
    statistics: SliceStatistics
    steps: SliceSteps

    def cut(self, values: np.ndarray) -> np.ndarray:
        """This segment's cells of a vector (cells,) or group (rows, cells), contiguous."""
        return np.ascontiguousarray(values[..., self.offset : self.offset + self.statistics.cells])


class SegmentedSlice:
    """Segments of one (field, client slice) on one rank, used as one `SliceStatistics`."""

    def __init__(self, field: str, client_rank: int, segments: Sequence[Segment]) -> None:
        self.field = field
        self.client_rank = client_rank
        self.segments = list(segments)
        self.cells = sum(segment.statistics.cells for segment in self.segments)

    @property
    def received(self) -> np.ndarray:
        """The per-simulation counts the tracker keeps (in the first segment's block)."""
        return self.segments[0].statistics.received

    def agreed_bits(self) -> np.ndarray:
        """The timesteps every segment received (the tracker's view of the slice)."""
        return np.bitwise_and.reduce([segment.steps.bits for segment in self.segments])

    def update_samples(
        self,
        timestep: int,
        samples: list[np.ndarray],
        simulation_ids: list[int],
        parameters: np.ndarray | None = None,
    ) -> None:
        """Fold each sample into the segments that lack it."""

        def fold(segment: Segment, rows: list[int]) -> None:
            segment.statistics.update_samples(
                timestep,
                [segment.cut(samples[i]) for i in rows],
                [simulation_ids[i] for i in rows],
                None if parameters is None else parameters[rows],
            )

        self._fold_where_missing(timestep, simulation_ids, fold)

    def update_groups(
        self,
        timestep: int,
        groups: list[np.ndarray],
        group_ids: list[int],
        draws: np.ndarray | None = None,
    ) -> None:
        """Fold each Sobol group into the segments that lack it."""

        def fold(segment: Segment, rows: list[int]) -> None:
            segment.statistics.update_groups(
                timestep,
                [segment.cut(groups[i]) for i in rows],
                [group_ids[i] for i in rows],
                None if draws is None else draws[rows],
            )

        self._fold_where_missing(timestep, group_ids, fold)

    def _fold_where_missing(
        self, timestep: int, ids: list[int], fold: Callable[[Segment, list[int]], None]
    ) -> None:
        """`fold(segment, rows)` the rows of `ids` each segment has not received, then mark them."""
        for segment in self.segments:
            rows = [i for i, sample in enumerate(ids) if not segment.steps.has(sample, timestep)]
            if rows:
                fold(segment, rows)
                for i in rows:
                    segment.steps.add(ids[i], timestep)

    def results(self, timestep: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        """The named output variables of one timestep, the segments' cells side by side."""
        parts = [segment.statistics.results(timestep, names) for segment in self.segments]
        return {name: np.concatenate([part[name] for part in parts], axis=-1) for name in parts[0]}

    def sobol_aggregate_sums(self, timestep: int) -> np.ndarray:
        """The aggregated Sobol terms over every segment's cells."""
        return sum(segment.statistics.sobol_aggregate_sums(timestep) for segment in self.segments)

    def sobol_group_increments(self, timestep: int) -> np.ndarray:
        """Each Sobol group's increments summed over every segment's cells."""
        return sum(segment.statistics.sobol_group_increments(timestep) for segment in self.segments)

    def correlation_aggregate_sums(self, timestep: int) -> np.ndarray:
        """The whole-field SRC^2 and R^2 terms over every segment's cells."""
        return sum(
            segment.statistics.correlation_aggregate_sums(timestep) for segment in self.segments
        )

    def sample_count(self, timestep: int) -> int:
        """The fewest samples any segment folded into this timestep."""
        return min(segment.statistics.sample_count(timestep) for segment in self.segments)

    def group_count(self, timestep: int) -> int:
        """The fewest Sobol groups any segment folded into this timestep."""
        return min(segment.statistics.group_count(timestep) for segment in self.segments)

    def worst_interval(self, timestep: int) -> tuple[float, float]:
        """Widest Sobol interval (first, total) over every segment (NaN where none)."""
        widths = np.array(
            [segment.statistics.worst_interval(timestep) for segment in self.segments]
        )
        defined = ~np.isnan(widths)
        return tuple(
            float(widths[defined[:, k], k].max()) if defined[:, k].any() else float("nan")
            for k in range(2)
        )

    def pieces(self, bits: np.ndarray) -> list[tuple[int, int, dict[str, np.ndarray], np.ndarray]]:
        """What a checkpoint keeps: per segment (offset, cells, state arrays, received bits)."""
        return [
            (
                segment.offset,
                segment.statistics.cells,
                segment.statistics.block.arrays,
                segment.steps.bits,
            )
            for segment in self.segments
        ]

    def release(self) -> None:
        """Remove every segment's block."""
        for segment in self.segments:
            segment.steps.release()
            segment.statistics.release()
