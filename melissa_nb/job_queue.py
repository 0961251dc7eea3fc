"""What a cluster study's jobs wait for, as a file: the runner writes `<output>/jobs/queue.json`
(each open job's Slurm state and reason) while it runs and removes it at the end; `melissa-nb
status` reads it from any node that sees the output directory. One definition for both."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from melissa_nb.errors import ConfigurationError
from melissa_nb.owned_files import read_owned_file

QUEUE_FILE = Path("jobs") / "queue.json"
QUEUE_BYTES = 1 << 20  # at most `at_once` jobs and the server: far less


@dataclass(frozen=True)
class QueuedJob:
    """One open job of the study, as the scheduler last said."""

    job_id: str
    name: str
    state: str  # PENDING, RUNNING, ...
    reason: str  # why it waits (Resources, Priority, QOSMaxJobsPerUserLimit), "" otherwise
    waited: float  # seconds since it was submitted


def write_queue(output_dir: Path, jobs: list[QueuedJob]) -> None:
    """Replace the queue file at once (readers never see half a file)."""
    path = output_dir / QUEUE_FILE
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({"written": time.time(), "jobs": [asdict(j) for j in jobs]}))
    os.replace(partial, path)


def read_queue(output_dir: Path) -> list[QueuedJob] | None:
    """The study's open jobs, None when no runner writes the file (a local study, or ended);
    ConfigurationError (one line) for a file that is not ours or not one of these."""
    try:
        text = read_owned_file(output_dir / QUEUE_FILE, QUEUE_BYTES)
    except FileNotFoundError:
        return None
    try:
        return [QueuedJob(**job) for job in json.loads(text)["jobs"]]
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigurationError(f"{output_dir / QUEUE_FILE} is not a job queue: {error}") from None


def queue_summary(jobs: list[QueuedJob]) -> str:
    """One line: `jobs running 2, pending 3 (2 Resources, 1 Priority); longest wait 611 s`."""
    states: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for job in jobs:
        states[job.state] = states.get(job.state, 0) + 1
        if job.state == "PENDING" and job.reason not in ("", "None"):
            reasons[job.reason] = reasons.get(job.reason, 0) + 1
    line = "jobs " + (", ".join(f"{s.lower()} {n}" for s, n in sorted(states.items())) or "none")
    if reasons:
        line += " (" + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())) + ")"
    pending = [job for job in jobs if job.state == "PENDING"]
    if pending:
        longest = max(pending, key=lambda job: job.waited)
        line += f"; job {longest.job_id} ({longest.name}) pending {longest.waited:.0f} s"
    return line
