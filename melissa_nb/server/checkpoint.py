"""Checkpoints of a server rank: snapshot, atomic netCDF4 files, restart and repartition.

A checkpoint of rank r is `<dir>/checkpoint.r<r>.nc` (the newest) and `checkpoint.r<r>.prev.nc`
(the one before, the fallback). One file holds a rank's whole state as named arrays plus one
JSON attribute `meta` (study options, format version, slice layouts, job ids, counters):

- `slice<k>/<name>`: every state array of slice k (`general.*`, `sobol.*`: timesteps first,
  cells last) and `slice<k>/bits`, its received-timestep bitset (ids, words);
- `tracker/dropped`, `tracker/started`, `tracker/announced`: simulation statuses (uint8 per
  id; announced: its handshake was answered, so its data is accepted after a restart too; a
  checkpoint without it takes the started ones);
- `member<k>/values`, `member<k>/received`: Sobol groups being assembled from single members.

Writing never stalls the receive loop longer than a copy of the state: `snapshot` copies the
arrays (the loop's only cost), then a writer thread writes the copy to a temporary file, fsyncs
it, renames the newest file to `.prev`, renames the temporary file in place and fsyncs the
directory. At most one write is in flight and every netCDF call of a rank happens with no other
in progress (HDF5 is not thread safe). A sha256 over the meta and every array, stored as the
attribute `sha256`, detects a truncated or damaged file; loading then falls back to `.prev`.

Restart (`-r DIR`) with the same number of ranks gives each rank its own file back. With a
different number, every state array has cells last (`count`, per timestep, excepted), so a new
rank cuts the cells the partition gives it out of the old slices: exact for every statistic,
quantiles included, since nothing is merged. This needs the old ranks to have learned the whole
layout and to agree on the timesteps received of every slice they share between them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from melissa_nb.errors import ConfigurationError, SharedMemoryUnavailable
from melissa_nb.partition import block_bounds
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.slices import RECEIVED
from melissa_nb.server.stages import STAGE_PREFIX
from melissa_nb.server.tracking import SliceSteps, Tracker, Vote

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
)
"""The options that define a study's state: a checkpoint is refused if any differs."""


class CheckpointDamaged(Exception):
    """A checkpoint file is missing, truncated or fails its checksum."""


def study_options(config: ServerConfig) -> dict[str, Any]:
    """The study-defining options of `config`, as JSON-ready values."""
    options = {}
    for name in STUDY_OPTIONS:
        value = getattr(config, name)
        options[name] = list(value) if isinstance(value, tuple) else value
    return options


def checkpoint_path(directory: Path, rank: int, previous: bool = False) -> Path:
    """The newest (or previous) checkpoint file of `rank` in `directory`."""
    return Path(directory) / f"checkpoint.r{rank}{'.prev' if previous else ''}.nc"


# --- snapshot ----------------------------------------------------------------------------------


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
            k = len(slice_meta)
            slice_meta.append(
                {
                    "field": field_name,
                    "client_rank": client_rank,
                    "cells": steps.vect_size,
                    "rank_offset": offset,  # cells of the client ranks before it on this rank
                }
            )
            offset += steps.vect_size
            statistics = slices.get((field_name, client_rank))  # None: no built-in statistics
            arrays = statistics.block.arrays if statistics is not None else {}
            for name, array in arrays.items():
                if name != RECEIVED:
                    snapshot.arrays[f"slice{k}/{name}"] = array.copy()
            for block in stage_blocks:
                if (block.metadata["field"], block.metadata["client_rank"]) == (
                    field_name,
                    client_rank,
                ):
                    for name, array in block.arrays.items():
                        stage_name = f"{STAGE_PREFIX}{block.metadata['stage']}.{name}"
                        snapshot.arrays[f"slice{k}/{stage_name}"] = array.copy()
            snapshot.arrays[f"slice{k}/bits"] = steps.bits.copy()
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
        "slices": slice_meta,
        "members": member_meta,
        "counts": {name: int(value) for name, value in counts.items()},
    }
    return snapshot


# --- files -------------------------------------------------------------------------------------


def write_file(path: Path, snapshot: Snapshot) -> None:
    """Write `snapshot` to `path` (not atomic by itself: see `write_atomically`)."""
    import netCDF4

    dataset = netCDF4.Dataset(path, "w", format="NETCDF4")
    try:
        empty = {}
        for name, array in snapshot.arrays.items():
            if array.size == 0:  # netCDF reads a size-0 dimension as unlimited
                empty[name] = [list(array.shape), array.dtype.str]
                continue
            group_name, variable = name.split("/", 1)
            group = dataset.groups.get(group_name) or dataset.createGroup(group_name)
            dimensions = []
            for axis, size in enumerate(array.shape):
                dimensions.append(f"{variable}.d{axis}")
                group.createDimension(dimensions[-1], size)
            group.createVariable(variable, array.dtype, dimensions)[...] = array
        dataset.setncattr("meta", json.dumps(snapshot.meta))
        dataset.setncattr("empty", json.dumps(empty))
        dataset.setncattr("sha256", snapshot.digest())
    finally:
        dataset.close()


def read_file(path: Path) -> Snapshot:
    """Read a checkpoint file; CheckpointDamaged if it is unreadable or fails its checksum."""
    import netCDF4

    if not path.is_file():
        raise CheckpointDamaged(f"{path}: missing")
    try:
        dataset = netCDF4.Dataset(path, "r")
    except OSError as error:
        raise CheckpointDamaged(f"{path}: unreadable ({error})") from None
    try:
        attributes = dataset.ncattrs()
        if not {"meta", "sha256", "empty"} <= set(attributes):
            raise CheckpointDamaged(f"{path}: not a melissa_nb checkpoint (attributes missing)")
        snapshot = Snapshot(json.loads(dataset.getncattr("meta")))
        for group_name, group in dataset.groups.items():
            for variable_name, variable in group.variables.items():
                variable.set_auto_maskandscale(False)
                snapshot.arrays[f"{group_name}/{variable_name}"] = np.asarray(variable[...])
        for name, (shape, dtype) in json.loads(dataset.getncattr("empty")).items():
            snapshot.arrays[name] = np.zeros(shape, dtype=dtype)
        expected = dataset.getncattr("sha256")
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise CheckpointDamaged(f"{path}: unreadable ({error})") from None
    finally:
        dataset.close()
    if snapshot.digest() != expected:
        raise CheckpointDamaged(f"{path}: checksum mismatch (damaged file)")
    return snapshot


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_atomically(directory: Path, rank: int, snapshot: Snapshot) -> Path:
    """Temporary file, fsync, newest -> .prev, temporary -> newest, fsync of the directory.

    At every instant either the newest or the previous file is complete and valid.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    newest = checkpoint_path(directory, rank)
    temporary = newest.with_name(newest.name + ".tmp")
    write_file(temporary, snapshot)
    _fsync(temporary)
    if newest.exists():
        os.replace(newest, checkpoint_path(directory, rank, previous=True))
    os.replace(temporary, newest)
    _fsync(directory)
    return newest


# --- the rank's checkpointer -------------------------------------------------------------------


class Checkpointer:
    """When to checkpoint (every -c seconds, on SIGUSR1, on request) and the writer thread."""

    def __init__(self, config: ServerConfig, rank: int, log: logging.Logger, now: float) -> None:
        self.directory = config.checkpoint_directory
        self.interval = config.check_interval
        self.rank = rank
        self.log = log
        self._next = now + self.interval
        self._thread: threading.Thread | None = None
        self._requested = False
        self.written = 0
        self.failures = 0
        self._previous_handler: Any = None
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGUSR1, self._on_signal)

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self._requested = True

    def request(self) -> None:
        """Checkpoint at the next turn of the loop (SIGUSR1, control `checkpoint`)."""
        self._requested = True

    def due(self, now: float) -> bool:
        """True when the interval has passed or SIGUSR1 asked for one (and none is in flight)."""
        if self.busy:
            return False
        return self._requested or now >= self._next

    @property
    def busy(self) -> bool:
        """True while a write is in flight."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, snapshot: Snapshot, now: float) -> None:
        """Write `snapshot` in the writer thread (the caller checked `due`)."""
        self.wait()
        self._requested = False
        self._next = now + self.interval
        self._thread = threading.Thread(
            target=self._write, args=(snapshot,), name=f"checkpoint-r{self.rank}", daemon=True
        )
        self._thread.start()

    def write_now(self, snapshot: Snapshot) -> Path | None:
        """Write `snapshot` and wait for it (signal, launcher gone): the last checkpoint.

        Returns where it went, or None if it failed (logged).
        """
        self.wait()
        return self._write(snapshot)

    def wait(self) -> None:
        """Wait for the write in flight, if any (before any other netCDF call of this rank)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _write(self, snapshot: Snapshot) -> Path | None:
        started = time.monotonic()
        try:
            path = write_atomically(self.directory, self.rank, snapshot)
        except Exception as error:  # a failed checkpoint must not end the study
            self.failures += 1
            kept = [
                p for p in (False, True) if checkpoint_path(self.directory, self.rank, p).exists()
            ]
            self.log.error(
                "checkpoint failed: %s: %s (%s)",
                type(error).__name__,
                error,
                "the previous one stays valid" if kept else "no earlier checkpoint exists",
            )
            return None
        self.written += 1
        self.log.info("checkpoint %s written in %.3f s", path, time.monotonic() - started)
        return path

    def close(self) -> None:
        """Wait for the write in flight and restore the SIGUSR1 handler."""
        self.wait()
        if self._previous_handler is not None:
            signal.signal(signal.SIGUSR1, self._previous_handler)
            self._previous_handler = None


# --- loading and repartition -------------------------------------------------------------------


def load_rank_file(directory: Path, rank: int, log: logging.Logger | None = None) -> Snapshot:
    """The newest valid checkpoint of old rank `rank`: the newest file, else the previous one."""
    problems = []
    for previous in (False, True):
        path = checkpoint_path(directory, rank, previous)
        try:
            snapshot = read_file(path)
        except CheckpointDamaged as error:
            problems.append(str(error))
            continue
        if previous and log is not None:
            log.warning("using the previous checkpoint %s: %s", path, problems[0])
        return snapshot
    raise ConfigurationError(
        f"-r/--restart {directory}: no valid checkpoint of rank {rank} ({'; '.join(problems)})"
    )


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
    for name in STUDY_OPTIONS:
        if theirs.get(name) != mine[name]:
            raise ConfigurationError(
                f"-r/--restart {directory}: checkpoint of another study: {name} is "
                f"{theirs.get(name)!r} there, {mine[name]!r} here"
            )


@dataclass
class RestoredSlice:
    """One slice a new rank starts with: its cells, state arrays and received bitset."""

    field: str
    client_rank: int
    cells: int
    arrays: dict[str, np.ndarray]
    bits: np.ndarray


@dataclass
class RestoredRank:
    """Everything a rank restores from the checkpoints of the old ranks."""

    old_ranks: int
    slices: list[RestoredSlice]
    dropped: np.ndarray
    started: np.ndarray
    announced: np.ndarray
    client_comm_size: int
    job_ids: dict[int, str]
    members: list[tuple[tuple[str, int, int, int], np.ndarray, np.ndarray]]
    counts: dict[str, int]


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
        slices = [
            RestoredSlice(
                item["field"],
                item["client_rank"],
                item["cells"],
                _slice_arrays(own, k),
                own.arrays[f"slice{k}/bits"],
            )
            for k, item in enumerate(own.meta["slices"])
        ]
        members = [
            (tuple(key), own.arrays[f"member{k}/values"], own.arrays[f"member{k}/received"] > 0)
            for k, key in enumerate(own.meta["members"])
        ]
    else:
        slices = repartition(list(snapshots.values()), config, rank, ranks, directory)
        members = []
        pending = sum(len(snapshot.meta["members"]) for snapshot in snapshots.values())
        if pending and log is not None:
            log.warning(
                "repartition: %d partly assembled Sobol groups discarded (their members must "
                "be sent again)",
                pending,
            )
    everyone = list(snapshots.values())
    job_ids: dict[int, str] = {}
    for snapshot in everyone:
        job_ids.update({int(key): job for key, job in snapshot.meta["job_ids"].items()})
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
        members=members,
        counts={
            name: sum(int(s.meta["counts"].get(name, 0)) for s in source)
            for name in ("messages", "accepted", "duplicates", "rejected")
        },
    )


def _slice_arrays(snapshot: Snapshot, k: int) -> dict[str, np.ndarray]:
    prefix = f"slice{k}/"
    return {
        name[len(prefix) :]: array
        for name, array in snapshot.arrays.items()
        if name.startswith(prefix) and name != prefix + "bits"
    }


def _per_cell(name: str) -> bool:
    """Every state array has cells last except the per-timestep sample counts."""
    return name.rsplit(".", 1)[-1] != "count"


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
            start, end = block_bounds(total, old_ranks, old_rank)
            clients = [item["client_rank"] for _, item in items]
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
                        _slice_arrays(snapshot, k),
                        snapshot.arrays[f"slice{k}/bits"],
                        old_rank,
                    )
                )
        low, high = block_bounds(total, ranks, rank)
        for client_rank in sorted(pieces):
            client_pieces = sorted(pieces[client_rank], key=lambda piece: piece.start)
            first = max(low, client_pieces[0].start)
            last = min(high, client_pieces[-1].end)
            if last <= first:
                continue
            used = [p for p in client_pieces if p.start < last and p.end > first]
            for piece in used[1:]:
                if not np.array_equal(piece.bits, used[0].bits):
                    raise ConfigurationError(
                        f"-r/--restart {directory}: cannot restart on {ranks} ranks: old ranks "
                        f"{used[0].old_rank} and {piece.old_rank} had received different "
                        f"timesteps of field {field_name!r} client rank {client_rank}; restart "
                        f"with {old_ranks} ranks"
                    )
            arrays = {}
            for name, array in used[0].arrays.items():
                if not _per_cell(name):
                    arrays[name] = array.copy()
                    continue
                arrays[name] = np.concatenate(
                    [p.arrays[name][..., _local(p, first, last)] for p in used], axis=-1
                )
            restored.append(
                RestoredSlice(field_name, client_rank, last - first, arrays, used[0].bits.copy())
            )
    return restored


def _local(piece: _Piece, first: int, last: int) -> slice:
    """The cells of global range [first, last) inside `piece`, as a slice of its arrays."""
    return slice(max(first, piece.start) - piece.start, min(last, piece.end) - piece.start)


def received_counts(bits: np.ndarray) -> np.ndarray:
    """Timesteps received per id, from a bitset of shape (ids, words)."""
    as_bytes = np.ascontiguousarray(bits).view(np.uint8).reshape(bits.shape[0], -1)
    return np.unpackbits(as_bytes, axis=1).sum(axis=1, dtype=np.int32)


def restore_tracker(tracker: Tracker, restored: RestoredRank, now: float) -> None:
    """Statuses of the restored rank (the caller restores its slices through learn_slice)."""
    tracker.dropped[:] = restored.dropped
    tracker.started[:] = restored.started
    tracker.announced[:] = restored.announced
    tracker.last_seen[restored.started] = now  # the timeout counts from the restart
    tracker.job_ids.update(restored.job_ids)
    tracker.client_comm_size = restored.client_comm_size


def restore_steps(steps: SliceSteps, tracker: Tracker, bits: np.ndarray) -> None:
    """Put a slice's received bitset back and count its completed simulations."""
    steps.bits[:] = bits
    steps.received[:] = received_counts(bits)
    tracker.complete_slices += (steps.received == steps.timesteps).astype(np.int32)


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


# --- wiring into a server rank -----------------------------------------------------------------


def snapshot_server(server: Any) -> Snapshot:
    """Snapshot of a running `ServerRank` (its slices, tracker, member buffers, counters)."""
    return take_snapshot(
        server.config,
        server.rank,
        server.world.size,
        server.slices,
        server.tracker,
        server.members,
        server.progress.counts,
        server.processing.state_blocks(),
    )


def restore_server(server: Any, now: float) -> RestoredRank:
    """Load `-r DIR` into a freshly started `ServerRank` (before its loop runs)."""
    config = server.config
    directory = restart_directory(config)
    restored = load_restart(directory, config, server.rank, server.world.size, server.log)
    restore_tracker(server.tracker, restored, now)
    server.known_jobs.update(restored.job_ids)
    if restored.client_comm_size:
        server.validator.client_comm_size = restored.client_comm_size
    for item in restored.slices:
        received = None
        stage_arrays = {n: a for n, a in item.arrays.items() if n.startswith(STAGE_PREFIX)}
        server.processing.restore_state(item.field, item.client_rank, stage_arrays)
        if getattr(config, "statistics", True):  # False: an embedded server without any
            statistics = server._slice(item.field, item.client_rank, item.cells)
            for name, array in item.arrays.items():
                if name not in stage_arrays:
                    statistics.block.arrays[name][...] = array
            received = statistics.received
        steps = server.tracker.learn_slice(item.field, item.client_rank, item.cells, received)
        restore_steps(steps, server.tracker, item.bits)
        server.validator.vect_sizes[(item.field, item.client_rank)] = item.cells
    for key, values, received in restored.members:
        server.members.restore(key, values, received)
    for name, value in restored.counts.items():
        server.progress.counts[name] += value
    server.log.warning(
        "restarted from %s (written by %d rank(s)): %d slices, %d simulations finished or "
        "dropped here",
        directory,
        restored.old_ranks,
        len(restored.slices),
        int(np.count_nonzero(server.tracker.finished() | server.tracker.dropped)),
    )
    return restored


def restore_collectively(server: Any, now: float) -> None:
    """`restore_server` on every rank; a refusal on any rank stops every rank with its message."""
    problem = None
    try:
        restore_server(server, now)
    except (ConfigurationError, SharedMemoryUnavailable) as error:
        problem = f"rank {server.rank}: {error}"
    problems = [item for item in server.world.allgather(problem) if item]
    if problems:
        raise ConfigurationError("; ".join(problems))
