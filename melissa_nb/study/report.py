"""What a study tells when it ends: the summary (results, every dropped sample and why,
refusals), the server's rejections read from its log, the runner's annotations of the result
files, and the final count of messages."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from melissa_nb.errors import StudyError
from melissa_nb.netcdf import NetCDFStore
from melissa_nb.server.results.output import FIELD_UNITS, SQUARED_UNITS
from melissa_nb.study.config import StudyConfig


@dataclass
class StudyReport:
    """What a study did: counts, where the results are, how long it took."""

    output_dir: Path
    finished: int
    dropped: list[int]
    retried: int
    elapsed: float
    rejected: dict[str, int] = field(default_factory=dict)
    non_finite: dict[int, list[str]] = field(default_factory=dict)  # sample -> fields
    drop_reasons: dict[int, str] = field(default_factory=dict)  # sample -> why


def accepted_in_results(config: StudyConfig) -> int | None:
    """Messages the server accepted in all, from a result file it wrote (None: none yet)."""
    path = config.output_dir / f"{config.fields[0]}.nc"
    try:
        with NetCDFStore(path) as store:
            return int(store.attributes()["messages_accepted"])
    except (OSError, KeyError):
        return None


_REJECTION_LINE = re.compile(
    r"\bserver (r\d+) WARNING rejected \d+ message\(s\): (\w+) \(total (\d+); latest: (.*)\)$"
)


def server_rejections(log: Path) -> dict[str, tuple[int, str]]:
    """What the server's log says it refused: reason -> (count over ranks, latest detail)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return {}
    latest: dict[tuple[str, str], tuple[int, str]] = {}  # (reason, rank) -> (total, detail)
    for line in lines:
        match = _REJECTION_LINE.search(line)
        if match:
            rank, reason, total, detail = match.groups()
            latest[(reason, rank)] = (int(total), detail)
    refused: dict[str, tuple[int, str]] = {}
    for (reason, _), (total, detail) in latest.items():
        count = refused.get(reason, (0, ""))[0]
        refused[reason] = (count + total, detail)
    return refused


def why_all_dropped(server_log: Path, log_dir: Path) -> str:
    """Why a study whose every sample was dropped has no results: what the server refused
    (its reasons, with counts and the latest detail) and the end of the log of the
    simulation that failed last (its own words: a missing file, a wrong field name)."""
    why = "every sample was dropped after its retries: no results"
    refused = server_rejections(server_log)
    if refused:
        why += "; the server refused their data: " + "; ".join(
            f"{reason} x{count} (latest: {detail})"
            for reason, (count, detail) in sorted(refused.items())
        )
    logs = sorted(log_dir.glob("simulation_*.log"), key=lambda path: path.stat().st_mtime)
    if not logs:
        return why
    tail = "\n".join(logs[-1].read_text(errors="replace").splitlines()[-10:])
    return f"{why}; {logs[-1]} (the last to fail) ends with:\n{tail}"


def id_ranges(ids: list[int]) -> str:
    """Sorted ids written compactly, every one of them: `2-5, 9, 11-12`."""
    runs: list[list[int]] = []
    for value in sorted(ids):
        if runs and value == runs[-1][1] + 1:
            runs[-1][1] = value
        else:
            runs.append([value, value])
    return ", ".join(f"{low}" if low == high else f"{low}-{high}" for low, high in runs)


def annotate_results(config: StudyConfig) -> None:
    """Add what only the study knows to each result file: parameter names, the grid shape and
    the field's units ([study] units)."""
    for field_name in config.fields:
        path = config.output_dir / f"{field_name}.nc"
        if not path.exists():
            raise StudyError(f"the server wrote no result file {path}")
        attributes: dict[str, object] = {"parameter_names": " ".join(config.parameter_names)}
        if config.grid_shape is not None:
            attributes["grid_shape"] = list(config.grid_shape)
        with NetCDFStore(path, "a") as store:
            store.set_attributes(attributes)
            units = dict(config.units).get(field_name)
            if units is not None:
                squared = f"{units}^2" if units.isalnum() else f"({units})^2"
                for name in store.names():
                    if name in FIELD_UNITS or name in SQUARED_UNITS:
                        store.set_attributes(
                            {"units": squared if name in SQUARED_UNITS else units}, name
                        )


def print_summary(report: StudyReport, console: Console) -> None:
    """Where the results are, what was dropped, the worst Sobol interval widths, the time."""
    from melissa_nb.results import field_summaries

    console.print(
        f"[bold]study finished[/] in {report.elapsed:.1f} s: {report.finished} "
        f"simulations confirmed, {report.retried} retried, {len(report.dropped)} dropped"
    )
    by_reason: dict[str, list[int]] = {}
    for sample, why in sorted(report.drop_reasons.items()):
        by_reason.setdefault(why, []).append(sample)
    for why, samples in by_reason.items():
        console.print(
            f"  dropped sample{'s' if len(samples) > 1 else ''} {id_ranges(samples)}: {why}",
            markup=False,
        )
    for summary in field_summaries(report.output_dir):
        line = f"  {summary.path}"
        if summary.worst_width:
            widths = ", ".join(
                f"{name} {first:.3g}/{total:.3g}"
                for name, (first, total) in summary.worst_width.items()
            )
            line += f"\n    worst Sobol interval width (first/total): {widths}"
        console.print(line, markup=False)
    console.print(f"  {report.output_dir / 'parameters.csv'}", markup=False)
    if report.rejected:
        console.print(f"  malformed messages from the server: {report.rejected}", markup=False)
    if report.non_finite:
        samples = ", ".join(
            f"{sample} ({', '.join(fields)})"
            for sample, fields in sorted(report.non_finite.items())
        )
        console.print(
            f"  samples that sent NaN or infinite values (refused; what they sent "
            f"before stays counted): {samples}",
            markup=False,
        )


def chaos_size(config: StudyConfig) -> str:
    """What the study's polynomial chaos keeps: per cell and timestep, and in all when the study
    file's grid_shape gives the cells."""
    chaos = config.chaos
    assert chaos is not None
    line = (
        f"polynomial chaos of degree {chaos.degree}: {chaos.terms} coefficients, "
        f"{chaos.bytes_per_cell} bytes of state per cell and timestep"
    )
    if config.grid_shape is not None:
        cells = math.prod(config.grid_shape)
        line += (
            f"; {cells:,} cells x {len(chaos.timesteps)} timesteps x {len(chaos.fields)} fields: "
            f"{chaos.state_bytes(cells) / 2**30:,.2f} GiB over {config.server_ranks} server "
            f"rank(s) (budget {chaos.max_gb:,.1f} GiB)"
        )
    return line
