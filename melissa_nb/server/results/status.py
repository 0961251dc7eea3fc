"""`melissa-nb status DIR`: live progress of a running server, read from its shared memory.

The server's `<output>/server.json` names the study; every live block of that study is attached
read-only (`melissa_nb.server.live.state.reading`), so this works from any process on the server's
node while the server runs, and never disturbs it.

The directory may be someone else's: server.json is read only as a regular file of this user,
bounded in size and checked key by key (`read_server_file`); a block under the study's name that
is not this user's, or not a well-formed one, is left out and named (`StudyProgress.problems`).
Whatever is wrong ends in one line, never a traceback or a hang.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from melissa_nb.errors import BlockNotReady, ConfigurationError
from melissa_nb.job_queue import queue_summary, read_queue
from melissa_nb.owned_files import read_owned_file
from melissa_nb.server.live.progress import COUNTERS
from melissa_nb.server.live.state import SHM_DIRECTORY, list_blocks, reading
from melissa_nb.server.pipeline.stages import STAGE_KIND

SERVER_FILE = "server.json"
CONTROL_TIMEOUT = 2.0  # seconds `status` waits for a remote server's control endpoint
REFRESH_SECONDS = 0.5  # the ranks refresh their counters at this pace
PIPE_WIDTH = 200  # columns of the tables when the output is not a terminal
SERVER_FILE_LIMIT = 1 << 20  # bytes: a description is a few KiB even with thousands of ranks
DESCRIPTION_KEYS: dict[str, type | tuple[type, ...]] = {
    "study_id": str,
    "ranks": int,
    "hosts": list,
    "shm_prefix": str,
    "fields": list,
    "timesteps": int,
    "sampling_size": int,
    "group_size": int,
    "control_address": (str, type(None)),
}
MAX_RANKS = 1 << 20  # a rank number beyond is not a server's (no "ranks" in server.json)
NAME_SHAPE = re.compile(r"[A-Za-z0-9_.\-]{1,127}")


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
    problems: tuple[str, ...] = ()  # blocks left out, and why


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
        counts = np.array(block.arrays[metadata["count_array"]][:, 0])
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


def read_server_file(output_dir: str | Path) -> dict[str, Any]:
    """server.json, checked (FileNotFoundError: none; ConfigurationError: not the server's)."""
    path = Path(output_dir) / SERVER_FILE
    text = read_owned_file(path, SERVER_FILE_LIMIT)
    try:
        description = json.loads(text)
    except ValueError:
        raise ConfigurationError(f"{path} is not JSON: not a melissa_nb server's") from None
    if not isinstance(description, dict):
        raise ConfigurationError(f"{path} is not a melissa_nb server description")
    for key, kind in DESCRIPTION_KEYS.items():
        value = description.get(key)
        if (key in description or key == "shm_prefix") and (
            not isinstance(value, kind) or isinstance(value, bool)
        ):
            raise ConfigurationError(f"{path}: {key!r} is {value!r}: not a server description")
    names = [
        description.get("study_id", "unnamed"),
        *description.get("fields", []),
        *description.get("hosts", []),
    ]
    prefix = description["shm_prefix"]
    if not all(isinstance(name, str) and NAME_SHAPE.fullmatch(name) for name in names) or not (
        prefix.startswith("melissa_nb_") and NAME_SHAPE.fullmatch(prefix)
    ):
        raise ConfigurationError(f"{path}: malformed study id, field, host or block names")
    return description


def _block_problem(name: str) -> str | None:
    """Why the block `name` in /dev/shm is not to be read (None: it is this user's file)."""
    try:
        info = os.stat(os.path.join(SHM_DIRECTORY, name), follow_symlinks=False)
    except FileNotFoundError:
        return None  # gone meanwhile: reading it says so
    if not stat.S_ISREG(info.st_mode):
        return f"{name}: not a regular file"
    if info.st_uid != os.getuid():
        return f"{name}: belongs to user id {info.st_uid}, not to you"
    return None


def _rank_counters(block: Any, ranks: int) -> tuple[int, dict[str, Any]]:
    """(rank, counters) of a progress block; KeyError/ValueError when it is not well formed."""
    metadata = block.metadata
    counters = dict(zip(metadata["counters"], block.arrays["counters"].tolist(), strict=True))
    counters["updated_at"] = float(block.arrays["times"][1])
    rank = metadata["rank"]
    missing = [name for name in COUNTERS if name not in counters]  # not the server's
    if not isinstance(rank, int) or not 0 <= rank < ranks or missing:
        raise ValueError(f"rank {rank!r}, missing counters {missing}")
    return rank, counters


def read_progress(output_dir: str | Path) -> StudyProgress:
    """server.json and every live block of the study (FileNotFoundError: no server.json;
    ConfigurationError: a server.json that is not the server's)."""
    description = read_server_file(output_dir)
    ranks: dict[int, dict[str, Any]] = {}
    slices = []
    problems = []
    for name in list_blocks(description["shm_prefix"]):
        problem = _block_problem(name)
        if problem is not None:
            problems.append(problem)
            continue
        try:
            if name.endswith("_progress"):
                with reading(name) as block:
                    rank, counters = _rank_counters(block, description.get("ranks", MAX_RANKS))
                    ranks[rank] = counters
            elif (progress := _slice_progress(name)) is not None:
                slices.append(progress)
        except (FileNotFoundError, BlockNotReady):
            continue  # being removed (the server is ending) or still being created: absent
        except (ValueError, KeyError, TypeError, IndexError, OSError) as error:
            problems.append(f"{name}: not a block of this server ({type(error).__name__}: {error})")
    slices.sort(key=lambda item: (item.field, item.rank, item.client_rank))
    return StudyProgress(description, ranks, slices, tuple(problems))


def progress_report(output_dir: str | Path) -> dict[str, Any]:
    """`read_progress` as JSON-ready data (the control endpoint's `status` reply)."""
    progress = read_progress(output_dir)
    return {
        "description": progress.description,
        "ranks": {str(rank): counters for rank, counters in progress.ranks.items()},
        "slices": [asdict(item) for item in progress.slices],
    }


def _progress_from_report(report: dict[str, Any]) -> StudyProgress:
    """A `progress_report` read back (the control endpoint's answer)."""
    slices = [
        SliceProgress(
            **{
                **item,
                "mean_range": None if item["mean_range"] is None else tuple(item["mean_range"]),
            }
        )
        for item in report["slices"]
    ]
    ranks = {int(rank): counters for rank, counters in report["ranks"].items()}
    return StudyProgress(report["description"], ranks, slices)


def live_progress(output_dir: str | Path) -> StudyProgress:
    """The study's progress from its shared memory, else (another node) its control endpoint.

    FileNotFoundError without server.json; `ranks` is empty when no server answers.
    """
    progress = read_progress(output_dir)
    address = progress.description.get("control_address")
    if progress.ranks or not address:
        return progress
    from melissa_nb.server.launcher.control import control_request, control_target, read_secret

    target = control_target(address, progress.description.get("hosts", []))
    try:
        secret = read_secret(output_dir)
    except FileNotFoundError:
        return progress  # not the owner's directory, or the server is gone
    try:
        report = control_request(target, "status", secret, CONTROL_TIMEOUT)
        return _progress_from_report(report) if report.get("ok") else progress
    except (TimeoutError, OSError, ValueError, KeyError, TypeError):  # no (usable) answer
        return progress


def _rate(counters: dict[str, Any]) -> str:
    return f"{counters['message_rate']}/s {counters['byte_rate'] / 2**20:.1f} MiB/s"


def render_progress(progress: StudyProgress) -> Any:
    """The two tables `melissa-nb status` shows: ranks, then fields."""
    from rich.console import Group
    from rich.table import Table

    description = progress.description
    study = description.get("study_id", "?")
    group_size = int(description.get("group_size", 1))
    unit = "groups" if group_size > 1 else "simulations"  # what the server counts
    ranks = Table(title=f"study {study}: {description.get('ranks', '?')} rank(s)")
    columns = ("messages", "accepted", "duplicates", "rejected", "running", "finished", "dropped")
    headings = (
        "rank",
        *columns[:4],
        *(f"{column} {unit}" for column in columns[4:]),
        "rate",
        "links",
        "state MiB",
        "RSS MiB",
        "kernel s",
        "updated",
    )
    for column in headings:
        ranks.add_column(column, justify="right")
    for rank, counters in sorted(progress.ranks.items()):
        ranks.add_row(
            str(rank),
            *(str(counters[key]) for key in columns),
            _rate(counters),
            f"{counters['connections']}/{counters['open_files_limit']}",
            f"{counters['state_bytes'] / 2**20:.1f}",
            f"{counters['rss_bytes'] / 2**20:.0f}",
            f"{counters['kernel_ns'] / 1e9:.2f}",
            f"{time.time() - counters['updated_at']:.1f} s ago",
        )
    expected = f"{description.get('sampling_size', '?')} {unit}"
    if group_size > 1:
        expected += f" of {group_size} simulations"
    fields = Table(title=f"fields ({expected} expected)")
    for column in (
        "field",
        "rank",
        "client rank",
        "cells",
        f"{unit} complete",
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
    return Group(ranks, fields)


def show_final_state(description: dict[str, Any], output_dir: Path, console: Any) -> int:
    """No live server: what its result files say (0), or that it stopped without any (1)."""
    from rich.table import Table

    from melissa_nb.netcdf import NetCDFStore, cell_count

    study = description.get("study_id", "?")
    table = Table(title=f"study {study}: finished (no live server)")
    for column in ("file", "complete", "cells", "dropped", "duplicates", "rejected", "reasons"):
        table.add_column(column, justify="right")
    found = 0
    for field in description.get("fields", []):
        path = output_dir / f"{field}.nc"
        if not path.is_file():
            continue
        try:
            with NetCDFStore(path) as store:
                attributes, cells = store.attributes(), cell_count(store.dimensions())
        except (OSError, KeyError, ValueError):
            table.add_row(str(path), "unreadable", "", "", "", "", "")
            continue
        found += 1
        table.add_row(
            str(path),
            "yes" if attributes.get("study_complete") else "NO (partial)",
            str(cells),
            str(attributes.get("simulations_dropped", "?")),
            str(attributes.get("messages_duplicate", "?")),
            str(attributes.get("messages_rejected", "?")),
            str(attributes.get("rejected_reasons", "")) or "-",
        )
    if not found:
        console.print(
            f"study {study}: no live server and no results in {output_dir} "
            "(stopped before writing them; its checkpoint, if any, is under checkpoint/)"
        )
        return 1
    console.print(table)
    return 0


def show_status(output_dir: str | Path, watch: float = 0.0) -> int:
    """Print the progress tables, refreshed live for `watch` seconds (0: once); once the
    server has ended, what its result files say.

    Exit code 1 when no server runs for this directory and it left no results (or it ended
    while watched), 2 when the directory's server.json or secret is refused (one line why).
    """
    from rich.console import Console

    # Not a terminal (a pipe, a log): rich would squeeze the tables into 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)
    try:
        return _show_status(Path(output_dir), watch, console)
    except FileNotFoundError:
        console.print(f"no {SERVER_FILE} in {output_dir}: no server was started there")
        return 1
    except ConfigurationError as error:
        Console(stderr=True, soft_wrap=True).print(f"error: {error}", markup=False)
        return 2


def _show_status(output_dir: Path, watch: float, console: Any) -> int:
    from rich.live import Live

    progress = live_progress(output_dir)
    for problem in progress.problems:
        console.print(f"left out: {problem}", markup=False)
    queued = read_queue(output_dir)  # a cluster study's jobs, while its runner runs
    if queued is not None:
        console.print(f"Slurm: {queue_summary(queued)}", markup=False)
    if not progress.ranks:
        return show_final_state(progress.description, output_dir, console)
    if watch <= 0:
        console.print(render_progress(progress))
        return 0
    deadline = time.monotonic() + watch
    with Live(render_progress(progress), console=console, auto_refresh=False) as live:
        while time.monotonic() < deadline:
            time.sleep(min(REFRESH_SECONDS, max(0.0, deadline - time.monotonic())))
            progress = live_progress(output_dir)
            if not progress.ranks:
                console.print("the server ended")
                return 1
            live.update(render_progress(progress), refresh=True)
    return 0
