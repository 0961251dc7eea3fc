"""Old ranks' slices cut for a new number of ranks.

Every state array has cells last (`GLOBAL_STATE` excepted: copied; the Sobol groups'
increments, summed over cells, go whole to the new slice that holds an old piece's first cell),
so a new rank cuts the cells the partition gives it out of the old slices: exact for every
statistic, quantiles included, since nothing is merged. This needs the old ranks to have learned
the whole layout. Where old ranks had received different timesteps of a client slice (a
checkpoint taken mid-stream), the new rank gets one segment per run of cells that agree
(receive/segments.py), unless user stage state is kept with the slice (it cannot be cut into
segments: refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.api import GLOBAL_STATE
from melissa_nb.partition import rank_cells
from melissa_nb.server.checkpoint.snapshot import Snapshot
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.pipeline.stages import STAGE_PREFIX
from melissa_nb.server.receive.restored import Member, RestoredSlice
from melissa_nb.server.receive.slices import SOBOL_GROUPS


def _per_cell(name: str) -> bool:
    """Every state array has cells last except those of GLOBAL_STATE."""
    return name.rsplit(".", 1)[-1] not in GLOBAL_STATE


@dataclass
class _Piece:
    start: int  # first global cell
    cells: int
    arrays: dict[str, np.ndarray]
    bits: np.ndarray
    old_rank: int

    @property
    def end(self) -> int:
        """One past its last global cell."""
        return self.start + self.cells


def repartition(
    snapshots: list[Snapshot], config: ServerConfig, rank: int, ranks: int, directory: Path
) -> list[RestoredSlice]:
    """The slices new rank `rank` of `ranks` holds, cut out of every old rank's slices."""
    old_ranks = len(snapshots)
    restored = []
    for field_name in config.field_names:
        per_rank = [
            [(k, item) for k, item in enumerate(s.meta["slices"]) if item["field"] == field_name]
            for s in snapshots
        ]
        total = sum(item["cells"] for items in per_rank for _, item in items)
        if total == 0:
            continue  # nothing of this field arrived before the checkpoint
        pieces: dict[int, list[_Piece]] = {}
        for old_rank, (snapshot, items) in enumerate(zip(snapshots, per_rank, strict=True)):
            start, end = rank_cells(total, old_ranks, old_rank)
            clients = sorted({item["client_rank"] for _, item in items})
            held = sum(item["cells"] for _, item in items)
            contiguous = not clients or clients == list(range(clients[0], clients[-1] + 1))
            if held != end - start or not contiguous:
                raise ConfigurationError(
                    f"-r/--restart {directory}: cannot restart on {ranks} ranks: old rank "
                    f"{old_rank} had learned only part of field {field_name!r} ({held} of "
                    f"{end - start} cells); restart with {old_ranks} ranks"
                )
            for k, item in items:
                pieces.setdefault(item["client_rank"], []).append(
                    _Piece(
                        start + item["rank_offset"],
                        item["cells"],
                        snapshot.slice_arrays(k),
                        snapshot.arrays[f"slice{k}/bits"],
                        old_rank,
                    )
                )
        low, high = rank_cells(total, ranks, rank)
        for client_rank in sorted(pieces):
            client_pieces = sorted(pieces[client_rank], key=lambda piece: piece.start)
            first = max(low, client_pieces[0].start)
            last = min(high, client_pieces[-1].end)
            if last <= first:
                continue
            used = [p for p in client_pieces if p.start < last and p.end > first]
            runs = _agreeing_runs(used)
            if len(runs) > 1 and any(STAGE_PREFIX in name for name in used[0].arrays):
                raise ConfigurationError(
                    f"-r/--restart {directory}: cannot restart on {ranks} ranks: old ranks "
                    f"{runs[0][0].old_rank} and {runs[1][0].old_rank} had received different "
                    f"timesteps of field {field_name!r} client rank {client_rank}, whose user "
                    f"stage state cannot be cut; restart with {old_ranks} ranks"
                )
            for run in runs:
                low_cell, high_cell = max(first, run[0].start), min(last, run[-1].end)
                arrays = {}
                for name, array in run[0].arrays.items():
                    if name == SOBOL_GROUPS:  # additive over pieces: each old piece's go once,
                        starting = [p for p in run if low_cell <= p.start < high_cell]
                        arrays[name] = sum((p.arrays[name] for p in starting), np.zeros_like(array))
                        continue  # to the new slice holding its first cell
                    if not _per_cell(name):
                        arrays[name] = array.copy()
                        continue
                    arrays[name] = np.concatenate(
                        [p.arrays[name][..., _local(p, low_cell, high_cell)] for p in run], axis=-1
                    )
                restored.append(
                    RestoredSlice(
                        field_name,
                        client_rank,
                        high_cell - low_cell,
                        arrays,
                        run[0].bits.copy(),
                        low_cell - first,
                    )
                )
    return restored


def _agreeing_runs(pieces: list[_Piece]) -> list[list[_Piece]]:
    """Consecutive pieces (in cell order) grouped while they received the same timesteps."""
    runs = [[pieces[0]]]
    for piece in pieces[1:]:
        if np.array_equal(piece.bits, runs[-1][0].bits):
            runs[-1].append(piece)
        else:
            runs.append([piece])
    return runs


def _local(piece: _Piece, first: int, last: int) -> slice:
    """The cells of global range [first, last) inside `piece`, as a slice of its arrays."""
    return slice(max(first, piece.start) - piece.start, min(last, piece.end) - piece.start)


def repartition_members(
    snapshots: list[Snapshot], config: ServerConfig, rank: int, ranks: int
) -> list[Member]:
    """The partly assembled Sobol groups of new rank `rank` of `ranks`, cut out of every old
    rank's buffers of the same (field, client slice, group, timestep) like the slices.

    A member counts as received only if every old rank whose cells the new rank takes had it
    (a member that reached some ranks only is re-sent by the relaunch of its unfinished group,
    and taken then); a group with no member left is not kept.
    """
    old_ranks = len(snapshots)
    starts: dict[tuple[int, str, int], tuple[int, int]] = {}  # (old rank, field, client) -> cells
    totals: dict[str, int] = {}
    for snapshot in snapshots:
        for item in snapshot.meta["slices"]:
            totals[item["field"]] = totals.get(item["field"], 0) + item["cells"]
    for old_rank, snapshot in enumerate(snapshots):
        for item in snapshot.meta["slices"]:
            start = rank_cells(totals[item["field"]], old_ranks, old_rank)[0] + item["rank_offset"]
            starts[(old_rank, item["field"], item["client_rank"])] = (start, item["cells"])
    pieces: dict[tuple[str, int, int, int], dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    for old_rank, snapshot in enumerate(snapshots):
        for k, key in enumerate(snapshot.meta["members"]):
            received = snapshot.arrays[f"member{k}/received"] > 0
            pieces.setdefault(tuple(key), {})[old_rank] = (
                snapshot.arrays[f"member{k}/values"],
                received,
            )
    kept: list[Member] = []
    for key, held in pieces.items():
        field_name, client_rank = key[0], key[1]
        low, high = rank_cells(totals[field_name], ranks, rank)
        parts = []
        for old_rank in range(old_ranks):
            start, cells = starts.get((old_rank, field_name, client_rank), (0, 0))
            first, last = max(low, start), min(high, start + cells)
            if last <= first:
                continue
            if old_rank not in held:  # that rank had none of this group's members yet
                parts = []
                break
            values, received = held[old_rank]
            parts.append((values[:, first - start : last - start], received))
        if not parts:
            continue
        received = np.logical_and.reduce([mask for _, mask in parts])
        if received.any():
            values = np.concatenate([piece for piece, _ in parts], axis=1)
            kept.append((key, np.ascontiguousarray(values), received))
    return kept
