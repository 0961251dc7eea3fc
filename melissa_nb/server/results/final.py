"""The study's end on one rank: the counts every rank agrees on (global attributes of every
result file), where the results go (collective: a directory every rank can write) and every
field written in turn."""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from melissa_nb.errors import ConfigurationError
from melissa_nb.server.claim import check_writable
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.ranks import World
from melissa_nb.server.results.output import grid_of, write_field


def end_attributes(
    world: World,
    counts: Mapping[str, int],
    rejections: Counter[str],
    dropped: int,
    aborted: bool,
) -> dict[str, Any]:
    """The message counts of every rank summed, and the study's state (collective)."""
    every_rejection: Counter[str] = Counter()
    for counter in world.allgather(rejections):
        every_rejection.update(counter)
    return {
        "study_complete": int(not aborted),
        "simulations_dropped": dropped,
        "messages_accepted": int(sum(world.allgather(counts["accepted"]))),
        "messages_duplicate": int(sum(world.allgather(counts["duplicates"]))),
        "messages_rejected": int(sum(every_rejection.values())),
        "rejected_reasons": ",".join(f"{key}={n}" for key, n in sorted(every_rejection.items())),
    }


def results_directory(config: ServerConfig, world: World, log: logging.Logger) -> Path | None:
    """Where the results go (collective): --output-dir if every rank can write there, else
    the first of the checkpoint directory, `./melissa_nb_results_<study>` and the same in
    the temporary directory that every rank can write (said in the log); None if none."""
    fallback = f"melissa_nb_results_{config.study_id}"
    candidates = (
        config.output_dir,
        config.checkpoint_directory,
        Path.cwd() / fallback,
        Path(tempfile.gettempdir()) / fallback,
    )
    problems = []
    for directory in candidates:
        try:
            check_writable(directory, "results in")
            problem = None
        except ConfigurationError as error:
            problem = str(error)
        if not any(world.allgather(problem)):
            if problems and world.rank == 0:
                log.error("%s: the results go to %s instead", problems[0], directory)
            return directory
        problems.append(problem or "another rank cannot write there")
    log.error("cannot write the results: %s", "; ".join(problems))
    return None


def write_results(
    world: World,
    config: ServerConfig,
    slices: Iterable[Any],
    extra: Mapping[str, Any],
    log: logging.Logger,
) -> Path | None:
    """Every field's file, this rank's slices written in turn (collective); the directory, or
    None when no directory every rank can write was found (nothing written)."""
    directory = results_directory(config, world, log)
    if directory is None:
        return None
    slices = list(slices)
    for field in config.field_names:
        mine = sorted(
            (item for item in slices if item.field == field), key=lambda item: item.client_rank
        )
        total = int(sum(world.allgather(sum(item.cells for item in mine))))
        if config.grid_shape and grid_of(config, total) is None and world.rank == 0:
            log.error(
                "--grid-shape %s does not hold the %d cells of field %s: its results are flat",
                ":".join(map(str, config.grid_shape)),
                total,
                field,
            )
        path = write_field(
            world, config.for_field(field), field, mine, total, dict(extra), directory
        )
        if world.rank == 0:
            log.info("wrote %s", path)
    return directory
