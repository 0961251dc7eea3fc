"""Stopping when converged: the worst Sobol interval width of every field, over every rank.

Each rank computes, at the heartbeat pace, the widest Fisher-z interval (first and total order,
over its cells, parameters and timesteps with at least 4 groups) of every field, and appends
these widths to its row of the end vote, so no other collective is needed: every vote round
gives every rank the widths of all ranks. A field's width is undefined (NaN) while any rank has
no defined interval for it (too few groups, or only constant cells).

With `--target-width W`, once every field's first- and total-order widths are defined and below
W, rank 0 tells the launcher: one CONFIDENCE_INTERVAL per field and index with the study-wide
width, then CONFIDENCE_INTERVAL `("converged", "*", W)`. A launcher that knows it (the melissa_nb
runner) stops launching, DROPs the samples not started and lets the running ones finish; the
study then ends as usual with results from the groups received. Melissa 0.6 launchers log an
unknown statistic name and go on: the message is harmless to them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from melissa_nb.protocol import ConfidenceInterval
from melissa_nb.server.results.output import SOBOL_VARIABLES

CONVERGED = "converged"
INDICES = SOBOL_VARIABLES[:2]  # sobol_first, sobol_total


def local_widths(slices: Any, fields: tuple[str, ...], timesteps: int) -> np.ndarray:
    """(fields, 2) widest first/total interval of this rank's slices (NaN: none defined)."""
    widths = np.full((len(fields), 2), np.nan)
    for index, field in enumerate(fields):
        held = [statistics for statistics in slices.values() if statistics.field == field]
        found = [
            statistics.worst_interval(t)
            for statistics in held
            for t in range(timesteps)
            if statistics.group_count(t) >= 4
        ]
        for which in range(2):
            defined = [width[which] for width in found if not np.isnan(width[which])]
            if defined and held:
                widths[index, which] = max(defined)
    return widths


def interval_messages(fields: tuple[str, ...], widths: np.ndarray) -> list[ConfidenceInterval]:
    """The launcher's CONFIDENCE_INTERVAL messages of (fields, 2) widths, NaN ones left out."""
    return [
        ConfidenceInterval(stat, field, float(widths[index, which]))
        for index, field in enumerate(fields)
        for which, stat in enumerate(INDICES)
        if not np.isnan(widths[index, which])
    ]


class Convergence:
    """The widths a rank appends to its vote row, and what rank 0 does with everyone's."""

    def __init__(self, config: Any, interval: float) -> None:
        self.config = config
        self.fields = tuple(config.field_names)
        wanted = config.sobol and config.target_width is not None
        self.columns = 2 * len(self.fields) if wanted else 0  # no target: the vote is unchanged
        self.interval = interval
        self.widths = np.full((len(self.fields), 2), np.nan)
        self._next = 0.0
        self.reached = False
        self.study_widths: np.ndarray | None = None

    def row(self, slices: Any, now: float) -> np.ndarray:
        """This rank's widths as int64 words (recomputed at most every `interval` seconds)."""
        if not self.columns:
            return np.zeros(0, dtype=np.int64)
        if now >= self._next:
            self._next = now + self.interval
            self.widths = local_widths(slices, self.fields, self.config.timesteps)
        return np.ascontiguousarray(self.widths, dtype=np.float64).reshape(-1).view(np.int64)

    def count(self, columns: np.ndarray) -> bool:
        """Study-wide widths from every rank's columns; True the first time all are below target."""
        if not self.columns:
            return False
        per_rank = np.ascontiguousarray(columns).view(np.float64)
        per_rank = per_rank.reshape(columns.shape[0], len(self.fields), 2)
        self.study_widths = per_rank.max(axis=0)  # NaN anywhere stays NaN: not converged
        if self.reached or np.isnan(self.study_widths).any():
            return False
        self.reached = bool((self.study_widths < self.config.target_width).all())
        return self.reached

    def messages(self) -> list[ConfidenceInterval]:
        """What rank 0 sends when the target is reached: the widths, then CONVERGED."""
        assert self.study_widths is not None and self.config.target_width is not None
        messages = interval_messages(self.fields, self.study_widths)  # none is NaN here
        messages.append(ConfidenceInterval(CONVERGED, "*", float(self.config.target_width)))
        return messages
