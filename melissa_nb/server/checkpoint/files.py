"""The checkpoint file of one rank: netCDF4, written atomically, read back and verified."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from melissa_nb.errors import CheckpointDamaged, ConfigurationError
from melissa_nb.netcdf import NetCDFStore
from melissa_nb.server.checkpoint.snapshot import Snapshot


def checkpoint_path(directory: Path, rank: int, previous: bool = False) -> Path:
    """The newest (or previous) checkpoint file of `rank` in `directory`."""
    return Path(directory) / f"checkpoint.r{rank}{'.prev' if previous else ''}.nc"


def write_file(path: Path, snapshot: Snapshot) -> None:
    """Write `snapshot` to `path` (not atomic by itself: see `write_atomically`)."""
    with NetCDFStore(path, "w") as store:
        empty = {}
        for name, array in snapshot.arrays.items():
            if array.size == 0:  # netCDF reads a size-0 dimension as unlimited
                empty[name] = [list(array.shape), array.dtype.str]
            else:
                store.write_array(name, array)
        store.set_attributes(
            {
                "meta": json.dumps(snapshot.meta),
                "empty": json.dumps(empty),
                "sha256": snapshot.digest(),
            }
        )


def read_file(path: Path) -> Snapshot:
    """Read a checkpoint file; CheckpointDamaged if it is unreadable or fails its checksum."""
    if not path.is_file():
        raise CheckpointDamaged(f"{path}: missing")
    try:
        store = NetCDFStore(path)
    except OSError as error:
        raise CheckpointDamaged(f"{path}: unreadable ({error})") from None
    try:
        attributes = store.attributes()
        if not {"meta", "sha256", "empty"} <= set(attributes):
            raise CheckpointDamaged(f"{path}: not a melissa_nb checkpoint (attributes missing)")
        snapshot = Snapshot(json.loads(attributes["meta"]), store.read_arrays())
        for name, (shape, dtype) in json.loads(attributes["empty"]).items():
            snapshot.arrays[name] = np.zeros(shape, dtype=dtype)
        expected = attributes["sha256"]
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        raise CheckpointDamaged(f"{path}: unreadable ({error})") from None
    finally:
        store.close()
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
