"""What an earlier run of a study left in its output directory: refused while it still runs,
cleared before a new run, taken up again by `melissa-nb run --resume`.

- One run at a time: a run holds an exclusive lock on `<output>/.melissa_nb_run.lock` (the
  kernel drops it when the run's process dies, whatever kills it); a second run of the same
  study file is refused at once.
- A new run starts clean: the result files, the server's checkpoints and the job scripts of an
  earlier run are removed first, so nothing stale can look current, nor be restarted from.
- `--resume` keeps the checkpoints of an interrupted run: the server restarts from them (`-r`),
  the samples they hold as finished or dropped are not run again, the others are. The
  checkpoint must be of this study's design (`fingerprint.check_same_design`): a changed study
  file or a foreign checkpoint is refused before anything runs.
"""

from __future__ import annotations

import fcntl
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from melissa_nb.errors import ConfigurationError, MelissaError, StudyError
from melissa_nb.server.checkpoint.files import checkpoint_path, load_rank_file
from melissa_nb.server.checkpoint.restart import finished_in_checkpoint
from melissa_nb.study.config import StudyConfig
from melissa_nb.study.fingerprint import check_same_design
from melissa_nb.study.sampling import SimulationSpec, read_parameters_csv

LOCK_NAME = ".melissa_nb_run.lock"


def checkpoint_directory(config: StudyConfig) -> Path:
    """Where the server of a study writes its checkpoints (its default, under output_dir)."""
    return config.output_dir / "checkpoint"


def hold_output(config: StudyConfig) -> IO[str]:
    """Lock the study's output directory for this run (StudyError if another run holds it);
    keep the returned file open for the whole run."""
    config.output_dir.mkdir(parents=True, exist_ok=True)
    path = config.output_dir / LOCK_NAME
    handle = open(path, "a+")  # noqa: SIM115 - held open for the whole run
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StudyError(
            f"another `melissa-nb run` of this study is running (it holds {path}): wait for "
            "it to end, or give this run another [study] output_dir"
        ) from None
    return handle


def clear_previous_run(config: StudyConfig, keep_checkpoints: bool) -> list[str]:
    """Remove what an earlier run left (results, job scripts, and its checkpoints unless they
    are resumed from); the names removed."""
    output = config.output_dir
    removed = []
    stale = [output / f"{field}.nc" for field in config.fields]
    stale += [output / f"{field}.nc.partial" for field in config.fields]
    if not keep_checkpoints:
        stale += sorted(checkpoint_directory(config).glob("checkpoint.r*.nc*"))
    for path in stale:
        if path.exists():
            path.unlink()
            removed.append(path.name)
    if (output / "jobs").is_dir():
        shutil.rmtree(output / "jobs")
        removed.append("jobs/")
    return removed


@dataclass(frozen=True)
class Resumed:
    """What an interrupted run left: where its checkpoints are, samples done and dropped."""

    checkpoints: Path
    finished: list[int]
    dropped: list[int]


def resume_point(config: StudyConfig, design: list[SimulationSpec]) -> Resumed:
    """The state to resume from; ConfigurationError if there is none or it is not this study's
    (another design: a changed study file)."""
    checkpoints = checkpoint_directory(config)
    if not any(checkpoint_path(checkpoints, 0, previous).exists() for previous in (False, True)):
        raise ConfigurationError(
            f"--resume: no checkpoint in {checkpoints} (the run stopped before its server wrote "
            "one): run without --resume, and every simulation runs again"
        )
    try:
        first = load_rank_file(checkpoints, 0)
    except MelissaError as error:
        raise ConfigurationError(f"--resume: the checkpoint is unusable: {error}") from None
    study = first.meta.get("study")
    check_same_design(
        config, study.get("study_fingerprint") if isinstance(study, dict) else None, checkpoints
    )
    record = config.output_dir / "parameters.csv"
    statuses: dict[int, str] = {}
    if record.exists():
        _, rows = read_parameters_csv(record)
        if [spec.values for spec, _ in rows] != [spec.values for spec in design]:
            raise ConfigurationError(
                f"--resume: {record} holds another design than the study file's (was the study "
                "file changed?): run without --resume"
            )
        statuses = {spec.simulation_id: status for spec, status in rows}
    try:
        done = finished_in_checkpoint(
            checkpoints, config.fields, config.timesteps, config.sample_size
        )
    except (MelissaError, KeyError, ValueError) as error:
        raise ConfigurationError(f"--resume: the checkpoint is unusable: {error}") from None
    size = config.group_size
    dropped = [
        sample
        for sample in np.flatnonzero(done).tolist()
        if statuses.get(sample * size) == "dropped"
    ]
    finished = [sample for sample in np.flatnonzero(done).tolist() if sample not in dropped]
    return Resumed(checkpoints, finished, dropped)
