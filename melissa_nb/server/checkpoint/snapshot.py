"""What a checkpoint holds: a rank's state copied (the only part of a checkpoint the loop waits
for), with the study options that make a checkpoint belong to one study."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from melissa_nb.server.config import ServerConfig
from melissa_nb.server.pipeline.stages import STAGE_PREFIX
from melissa_nb.server.receive.ingest import Ingest
from melissa_nb.server.receive.slices import RECEIVED
from melissa_nb.server.receive.tracking import Tracker

FORMAT_VERSION = 1
STUDY_OPTIONS = (
    "sampling_size",
    "timesteps",
    "field_names",
    "parameters",
    "operations",
    "thresholds",
    "quantiles",
    "confidence",
    "study_fingerprint",
)
"""The options that define a study's state: a checkpoint is refused if any differs."""
CHAOS_OPTIONS = ("chaos_degree", "chaos_laws", "chaos_fields", "chaos_timesteps")
"""With chaos in the operations, these define its state too."""


def study_options(config: ServerConfig) -> dict[str, Any]:
    """The study-defining options of `config`, as JSON-ready values."""
    options = {}
    for name in STUDY_OPTIONS + (CHAOS_OPTIONS if config.chaos else ()):
        value = getattr(config, name)
        options[name] = list(value) if isinstance(value, tuple) else value
    return options


@dataclass
class Snapshot:
    """A rank's state, copied: JSON-ready `meta` and named arrays (`group/name`)."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def digest(self) -> str:
        """sha256 over the meta and every array (name, dtype, shape, bytes) in name order."""
        digest = hashlib.sha256(json.dumps(self.meta, sort_keys=True).encode())
        for name in sorted(self.arrays):
            array = np.ascontiguousarray(self.arrays[name])
            digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
            digest.update(array.reshape(-1).view(np.uint8))  # no copy; hashlib frees the GIL
        return digest.hexdigest()

    def slice_arrays(self, k: int) -> dict[str, np.ndarray]:
        """The state arrays of slice `k` (statistics and user stages), by name."""
        prefix = f"slice{k}/"
        return {
            name[len(prefix) :]: array
            for name, array in self.arrays.items()
            if name.startswith(prefix) and name != prefix + "bits"
        }


def take_snapshot(
    config: ServerConfig,
    rank: int,
    ranks: int,
    slices: Mapping[tuple[str, int], Any],
    tracker: Tracker,
    members: Any,
    counts: Mapping[str, int],
    stage_blocks: Sequence[Any] = (),
) -> Snapshot:
    """Copy everything a restart needs (the only part of a checkpoint the loop waits for).

    User stage state (`stage_blocks`) is kept with its slice as `stage.<stage>.<array>`: cells
    last, so it is cut like the statistics on a restart with another number of ranks.
    """
    slice_meta = []
    snapshot = Snapshot({})
    for field_name in config.field_names:
        offset = 0
        for client_rank in sorted(tracker.slices[field_name]):
            steps = tracker.slices[field_name][client_rank]
            statistics = slices.get((field_name, client_rank))  # None: no built-in statistics
            # One entry per piece: a slice restored in segments keeps them (receive/segments.py).
            pieces = (
                statistics.pieces(steps.bits)
                if statistics is not None
                else [(0, steps.vect_size, {}, steps.bits)]
            )
            for piece_offset, cells, arrays, bits in pieces:
                k = len(slice_meta)
                slice_meta.append(
                    {
                        "field": field_name,
                        "client_rank": client_rank,
                        "cells": cells,
                        # cells of the client ranks (and pieces) before it on this rank
                        "rank_offset": offset + piece_offset,
                    }
                )
                for name, array in arrays.items():
                    if name != RECEIVED:
                        snapshot.arrays[f"slice{k}/{name}"] = array.copy()
                for block in stage_blocks if len(pieces) == 1 else ():
                    if (block.metadata["field"], block.metadata["client_rank"]) == (
                        field_name,
                        client_rank,
                    ):
                        for name, array in block.arrays.items():
                            stage_name = f"{STAGE_PREFIX}{block.metadata['stage']}.{name}"
                            snapshot.arrays[f"slice{k}/{stage_name}"] = array.copy()
                snapshot.arrays[f"slice{k}/bits"] = bits.copy()
            offset += steps.vect_size
    snapshot.arrays["tracker/dropped"] = tracker.dropped.astype(np.uint8)
    snapshot.arrays["tracker/started"] = tracker.started.astype(np.uint8)
    snapshot.arrays["tracker/announced"] = tracker.announced.astype(np.uint8)
    member_meta = []
    for k, (key, values, received) in enumerate(members.partials()):
        member_meta.append(list(key))
        snapshot.arrays[f"member{k}/values"] = values.copy()
        snapshot.arrays[f"member{k}/received"] = received.astype(np.uint8)
    snapshot.meta = {
        "format_version": FORMAT_VERSION,
        "study": study_options(config),
        "rank": rank,
        "ranks": ranks,
        "created_at": time.time(),
        "client_comm_size": tracker.client_comm_size,
        "job_ids": {str(simulation): job for simulation, job in tracker.job_ids.items()},
        "job_parameters": {
            str(simulation): list(values) for simulation, values in tracker.job_parameters.items()
        },
        "slices": slice_meta,
        "members": member_meta,
        "counts": {name: int(value) for name, value in counts.items()},
    }
    return snapshot


def snapshot_rank(ingest: Ingest, ranks: int) -> Snapshot:
    """A copy of everything a restart needs of a rank (slices, tracker, member buffers,
    counters, user stage state)."""
    return take_snapshot(
        ingest.config,
        ingest.rank,
        ranks,
        ingest.slices,
        ingest.tracker,
        ingest.members,
        ingest.progress.counts,
        ingest.processing.state_blocks(),
    )
