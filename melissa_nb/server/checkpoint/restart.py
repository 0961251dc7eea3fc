"""What a new rank takes back from the checkpoints of the old ranks (any number of them)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.server.checkpoint.files import checkpoint_path, load_rank_file
from melissa_nb.server.checkpoint.repartition import repartition, repartition_members
from melissa_nb.server.checkpoint.snapshot import (
    FORMAT_VERSION,
    Snapshot,
    study_options,
)
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.receive.restored import RestoredRank, RestoredSlice, restore_steps
from melissa_nb.server.receive.tracking import Tracker, Vote


def restart_directory(config: ServerConfig) -> Path:
    """Where `-r DIR` finds its checkpoints: DIR itself, else this server's checkpoint directory.

    Melissa's launcher restarts a server with its command line and ` -r . ` appended, in the
    working directory it ran in, so `.` must find what the same command line wrote (by default
    under `<output-dir>/checkpoint`).
    """
    assert config.restart_dir is not None
    given = Path(config.restart_dir)  # an existing directory (checked with the options)
    for directory in (given, config.checkpoint_directory):
        if any(checkpoint_path(directory, 0, previous).exists() for previous in (False, True)):
            return directory
    raise ConfigurationError(
        f"-r/--restart {given}: no checkpoint there nor in {config.checkpoint_directory}, where "
        "this command line writes them (the server was stopped before its first checkpoint: "
        "start it without -r, and every simulation runs again)"
    )


def check_compatible(snapshot: Snapshot, config: ServerConfig, directory: Path) -> None:
    """Refuse a checkpoint of another format version or of a study with other options."""
    version = snapshot.meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigurationError(
            f"-r/--restart {directory}: checkpoint format version {version!r}, this server "
            f"reads version {FORMAT_VERSION}"
        )
    mine = study_options(config)
    theirs = snapshot.meta.get("study", {})
    for name in mine:
        if theirs.get(name) != mine[name]:
            raise ConfigurationError(
                f"-r/--restart {directory}: checkpoint of another study: {name} is "
                f"{theirs.get(name)!r} there, {mine[name]!r} here"
            )


def load_restart(
    directory: Path, config: ServerConfig, rank: int, ranks: int, log: logging.Logger | None = None
) -> RestoredRank:
    """What rank `rank` of `ranks` restores from `directory` (any old number of ranks)."""
    directory = Path(directory)
    first = load_rank_file(directory, 0, log)
    check_compatible(first, config, directory)
    old_ranks = int(first.meta["ranks"])
    if old_ranks == ranks:
        snapshots = {rank: first if rank == 0 else load_rank_file(directory, rank, log)}
    else:
        snapshots = {0: first}
        snapshots.update({r: load_rank_file(directory, r, log) for r in range(1, old_ranks)})
    for old_rank, snapshot in snapshots.items():
        check_compatible(snapshot, config, directory)
        if int(snapshot.meta["ranks"]) != old_ranks:  # left over from a run on other ranks
            raise ConfigurationError(
                f"-r/--restart {directory}: the checkpoint of rank {old_rank} was written by "
                f"{snapshot.meta['ranks']} ranks, that of rank 0 by {old_ranks}"
            )
    own = snapshots[rank] if old_ranks == ranks else None
    if own is not None:
        starts: dict[tuple[str, int], int] = {}  # a slice's first piece: where its cells start
        slices = []
        for k, item in enumerate(own.meta["slices"]):
            start = starts.setdefault((item["field"], item["client_rank"]), item["rank_offset"])
            slices.append(
                RestoredSlice(
                    item["field"],
                    item["client_rank"],
                    item["cells"],
                    own.slice_arrays(k),
                    own.arrays[f"slice{k}/bits"],
                    item["rank_offset"] - start,
                )
            )
        members = [
            (tuple(key), own.arrays[f"member{k}/values"], own.arrays[f"member{k}/received"] > 0)
            for k, key in enumerate(own.meta["members"])
        ]
    else:
        slices = repartition(list(snapshots.values()), config, rank, ranks, directory)
        members = repartition_members(list(snapshots.values()), config, rank, ranks)
        if members and log is not None:
            log.info("repartition: %d partly assembled Sobol groups kept", len(members))
    everyone = list(snapshots.values())
    job_ids: dict[int, str] = {}
    job_parameters: dict[int, tuple[float, ...]] = {}
    for snapshot in everyone:
        job_ids.update({int(key): job for key, job in snapshot.meta["job_ids"].items()})
        job_parameters.update(
            {
                int(key): tuple(values)
                for key, values in snapshot.meta.get("job_parameters", {}).items()
            }
        )
    source = everyone if own is None else [own]
    return RestoredRank(
        old_ranks=old_ranks,
        slices=slices,
        dropped=np.logical_or.reduce([s.arrays["tracker/dropped"] > 0 for s in everyone]),
        started=np.logical_or.reduce([s.arrays["tracker/started"] > 0 for s in everyone]),
        announced=np.logical_or.reduce(
            [s.arrays.get("tracker/announced", s.arrays["tracker/started"]) > 0 for s in everyone]
        ),
        client_comm_size=max(int(s.meta["client_comm_size"]) for s in everyone),
        job_ids=job_ids,
        job_parameters=job_parameters,
        members=members,
        counts={
            name: sum(int(s.meta["counts"].get(name, 0)) for s in source)
            for name in ("messages", "accepted", "duplicates", "rejected")
        },
    )


def finished_in_checkpoint(
    directory: Path, field_names: tuple[str, ...], timesteps: int, sampling_size: int
) -> np.ndarray:
    """Samples finished or dropped on every old rank of the checkpoint in `directory`.

    What a runner needs after a restart: every other launched simulation must run again (the
    server drops the timesteps it already has). Reads the files a restart would use (the
    previous one where the newest is damaged); the restarted server checks the study options.
    """
    first = load_rank_file(Path(directory), 0)
    snapshots = [first] + [
        load_rank_file(Path(directory), r) for r in range(1, int(first.meta["ranks"]))
    ]
    rows = []
    for snapshot in snapshots:
        tracker = Tracker(field_names, timesteps, sampling_size)
        tracker.dropped[:] = snapshot.arrays["tracker/dropped"] > 0
        tracker.client_comm_size = int(snapshot.meta["client_comm_size"])
        for k, item in enumerate(snapshot.meta["slices"]):
            steps = tracker.learn_slice(item["field"], item["client_rank"], item["cells"])
            restore_steps(steps, tracker, snapshot.arrays[f"slice{k}/bits"])
        rows.append(tracker.summary(False))
    vote = Vote.count(np.array(rows), len(field_names), sampling_size)
    return vote.done_everywhere
