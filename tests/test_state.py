"""Shared-memory state blocks: create, attach from another process, read-only views, unlink."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from melissa_nb.errors import BlockNotReady, SharedMemoryUnavailable
from melissa_nb.server.live.progress import Progress
from melissa_nb.server.live.state import (
    ALIGNMENT,
    SHM_DIRECTORY,
    StateBlock,
    attach_block,
    list_blocks,
    reading,
)
from melissa_nb.server.results.status import SERVER_FILE, read_progress

LAYOUT = {
    "mean": ((3, 5), np.float64),
    "count": ((3, 1), np.int64),
    "flags": ((7,), np.uint8),
    "m2": ((3, 5), np.float64),
}


@pytest.fixture
def name() -> str:
    return f"melissa_nb_test_{uuid.uuid4().hex[:12]}"


def test_create_fills_zeros_and_aligns_every_array(name: str) -> None:
    block = StateBlock.create(name, LAYOUT, {"field": "u", "cells": 5})
    try:
        assert set(block.arrays) == set(LAYOUT)
        for key, (shape, dtype) in LAYOUT.items():
            array = block.arrays[key]
            assert array.shape == shape and array.dtype == np.dtype(dtype)
            assert not array.any()
            assert array.ctypes.data % ALIGNMENT == 0
            assert array.flags.c_contiguous and array.flags.writeable
        del array
        assert block.metadata == {"field": "u", "cells": 5}
        assert list_blocks(name) == [name]
    finally:
        block.release()
    assert list_blocks(name) == []
    assert not os.path.exists(f"/dev/shm/{name}")


def test_another_process_reads_live_values_and_cannot_unlink(name: str) -> None:
    block = StateBlock.create(name, LAYOUT, {"field": "u"})
    try:
        block.arrays["mean"][1] = np.arange(5.0) + 0.5
        block.arrays["count"][:, 0] = [4, 5, 6]
        script = (
            "import json, sys\n"
            "from melissa_nb.server.live.state import reading\n"
            "with reading(sys.argv[1]) as b:\n"
            "    print(json.dumps({'mean': b.arrays['mean'][1].tolist(),\n"
            "                      'count': b.arrays['count'][:, 0].tolist(),\n"
            "                      'writeable': b.arrays['mean'].flags.writeable,\n"
            "                      'field': b.metadata['field']}))\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script, name],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        seen = json.loads(result.stdout)
        assert seen == {
            "mean": [0.5, 1.5, 2.5, 3.5, 4.5],
            "count": [4, 5, 6],
            "writeable": False,
            "field": "u",
        }
        assert result.stderr == ""
        # The reader exited: its resource tracker must not have removed the owner's block.
        assert list_blocks(name) == [name]
    finally:
        block.release()
    assert list_blocks(name) == []


def test_reader_views_are_read_only_and_see_updates(name: str) -> None:
    block = StateBlock.create(name, LAYOUT)
    try:
        with reading(name) as reader:
            view = reader.arrays["m2"]
            with pytest.raises(ValueError, match="read-only"):
                view[0, 0] = 1.0
            block.arrays["m2"][2, 4] = 7.25
            assert view[2, 4] == 7.25
            del view
    finally:
        block.release()


def test_attach_to_missing_block_fails(name: str) -> None:
    with pytest.raises(FileNotFoundError):
        attach_block(name)


def test_creating_an_existing_block_fails(name: str) -> None:
    block = StateBlock.create(name, LAYOUT)
    try:
        with pytest.raises(SharedMemoryUnavailable, match="already exists, created by this user"):
            StateBlock.create(name, LAYOUT)
    finally:
        block.release()


def test_large_header_moves_data_area(name: str) -> None:
    layout = {f"array_with_a_long_name_{i}": ((2, 3), np.float64) for i in range(40)}
    block = StateBlock.create(name, layout, {"note": "x" * 3000})
    try:
        for index, key in enumerate(block.arrays):
            block.arrays[key][:] = index
        with reading(name) as reader:
            assert reader.metadata["note"] == "x" * 3000
            for index, array in enumerate(reader.arrays.values()):
                assert (array == index).all()
                assert array.ctypes.data % ALIGNMENT == 0
            del array
    finally:
        block.release()


def test_block_seen_before_its_header_is_written_is_not_ready(name: str) -> None:
    path = os.path.join(SHM_DIRECTORY, name)
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))  # named, not sized yet
    try:
        with pytest.raises(BlockNotReady, match="still empty"):
            attach_block(name)
        os.truncate(path, 4096)  # sized, header not written yet (all zeros)
        with pytest.raises(BlockNotReady, match="no header yet"):
            attach_block(name)
        with open(path, "r+b") as raw:
            raw.write(b"NOTOURS!")
        with pytest.raises(ValueError, match="not a melissa_nb state block") as error:
            attach_block(name)
        assert not isinstance(error.value, BlockNotReady)
    finally:
        os.unlink(path)


def test_read_progress_skips_blocks_still_being_created(tmp_path, name: str) -> None:
    prefix = f"{name}_"
    (tmp_path / SERVER_FILE).write_text(json.dumps({"shm_prefix": prefix}))
    progress = Progress(name[len("melissa_nb_") :], 0, logging.getLogger("test"))
    half_made = [
        os.path.join(SHM_DIRECTORY, f"{prefix}r1_progress"),
        os.path.join(SHM_DIRECTORY, f"{prefix}r0_u_c0"),
    ]
    try:
        progress.publish(accepted=3)
        for path in half_made:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600))
        os.truncate(half_made[1], 4096)
        read = read_progress(tmp_path)
        assert list(read.ranks) == [0] and read.ranks[0]["accepted"] == 3
        assert read.slices == []
    finally:
        for path in half_made:
            os.unlink(path)
        progress.release()
