"""`melissa-nb status DIR`: live progress of a running server, read from its shared memory.

The server's `<output>/server.json` names the study; every live block of that study is attached
read-only (`melissa_nb.server.state.reading`), so this works from any process on the server's
node while the server runs, and never disturbs it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from melissa_nb.server.stages import STAGE_KIND
from melissa_nb.server.state import list_blocks, reading

SERVER_FILE = "server.json"


@dataclass(frozen=True)
class SliceProgress:
    """What one (rank, field, client slice) block shows."""

    rank: int
    field: str
    client_rank: int
    cells: int
    timesteps_received: int
    timesteps: int
    simulations_complete: int
    simulations: int
    samples_min: int
    samples_max: int
    mean_range: tuple[float, float] | None


@dataclass(frozen=True)
class StudyProgress:
    """Everything `status` shows: server.json, per-rank counters and per-slice progress."""

    description: dict[str, Any]
    ranks: dict[int, dict[str, Any]]
    slices: list[SliceProgress]


def _current_mean(arrays: dict[str, np.ndarray], metadata: dict[str, Any], t: int) -> np.ndarray:
    """Mean of timestep `t`, finalised from a private copy of the block's rows."""
    from melissa_nb.kernels import FieldStatistics

    settings = metadata["general_settings"]
    rows = {
        name[len("general.") :]: np.array(array[t])
        for name, array in arrays.items()
        if name.startswith("general.")
    }
    return FieldStatistics(metadata["cells"], **settings, arrays=rows).mean


def _slice_progress(name: str) -> SliceProgress | None:
    """The progress of a statistics block (None for other blocks: user stage state)."""
    with reading(name) as block:
        metadata = block.metadata
        if metadata.get("kind") == STAGE_KIND:
            return None
        counts_name = "general.count" if "general.count" in block.arrays else "sobol.count"
        counts = np.array(block.arrays[counts_name][:, 0])
        mean_range = None
        settings = metadata.get("general_settings")
        received = np.flatnonzero(counts)
        if settings and settings["order"] >= 1 and received.size:
            mean = _current_mean(block.arrays, metadata, int(received[-1]))
            mean_range = (float(np.nanmin(mean)), float(np.nanmax(mean)))
        return SliceProgress(
            rank=metadata["rank"],
            field=metadata["field"],
            client_rank=metadata["client_rank"],
            cells=metadata["cells"],
            timesteps_received=int(received.size),
            timesteps=metadata["timesteps"],
            simulations_complete=int(
                np.count_nonzero(block.arrays["received"] == metadata["timesteps"])
            ),
            simulations=int(block.arrays["received"].size),
            samples_min=int(counts.min()),
            samples_max=int(counts.max()),
            mean_range=mean_range,
        )


def read_progress(output_dir: str | Path) -> StudyProgress:
    """Read server.json and every live block of the study (FileNotFoundError: no server.json)."""
    description = json.loads((Path(output_dir) / SERVER_FILE).read_text())
    ranks: dict[int, dict[str, Any]] = {}
    slices = []
    for name in list_blocks(description["shm_prefix"]):
        try:
            if name.endswith("_progress"):
                with reading(name) as block:
                    counters = dict(
                        zip(
                            block.metadata["counters"],
                            block.arrays["counters"].tolist(),
                            strict=True,
                        )
                    )
                    counters["updated_at"] = float(block.arrays["times"][1])
                    ranks[block.metadata["rank"]] = counters
            elif (progress := _slice_progress(name)) is not None:
                slices.append(progress)
        except FileNotFoundError:
            continue  # the server removed this block while we listed them: it is ending
    slices.sort(key=lambda item: (item.field, item.rank, item.client_rank))
    return StudyProgress(description, ranks, slices)


def progress_report(output_dir: str | Path) -> dict[str, Any]:
    """`read_progress` as JSON-ready data (the control endpoint's `status` reply)."""
    progress = read_progress(output_dir)
    return {
        "description": progress.description,
        "ranks": {str(rank): counters for rank, counters in progress.ranks.items()},
        "slices": [asdict(item) for item in progress.slices],
    }


def show_status(output_dir: str | Path) -> int:
    """Print the live progress tables; exit code 1 when no server runs for this directory."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    try:
        progress = read_progress(output_dir)
    except FileNotFoundError:
        console.print(f"no {SERVER_FILE} in {output_dir}: no server was started there")
        return 1
    description = progress.description
    if not progress.ranks:
        console.print(
            f"study {description['study_id']}: no live server (finished or stopped); "
            f"results are in {output_dir}"
        )
        return 1
    ranks = Table(title=f"study {description['study_id']}: {description['ranks']} rank(s)")
    for column in (
        "rank",
        "messages",
        "accepted",
        "duplicates",
        "rejected",
        "running",
        "finished",
        "dropped",
        "state MiB",
        "updated",
    ):
        ranks.add_column(column, justify="right")
    for rank, counters in sorted(progress.ranks.items()):
        ranks.add_row(
            str(rank),
            *(
                str(counters[key])
                for key in (
                    "messages",
                    "accepted",
                    "duplicates",
                    "rejected",
                    "running",
                    "finished",
                    "dropped",
                )
            ),
            f"{counters['state_bytes'] / 2**20:.1f}",
            f"{time.time() - counters['updated_at']:.1f} s ago",
        )
    console.print(ranks)
    fields = Table(title=f"fields ({description['sampling_size']} samples expected)")
    for column in (
        "field",
        "rank",
        "client rank",
        "cells",
        "simulations complete",
        "timesteps received",
        "samples per timestep",
        "current mean range",
    ):
        fields.add_column(column, justify="right")
    for item in progress.slices:
        fields.add_row(
            item.field,
            str(item.rank),
            str(item.client_rank),
            str(item.cells),
            f"{item.simulations_complete}/{item.simulations}",
            f"{item.timesteps_received}/{item.timesteps}",
            f"{item.samples_min}..{item.samples_max}",
            "-"
            if item.mean_range is None
            else f"{item.mean_range[0]:.6g} .. {item.mean_range[1]:.6g}",
        )
    console.print(fields)
    return 0
