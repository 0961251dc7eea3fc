"""Shared-memory state blocks: create, attach from another process, read-only views, unlink."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from melissa_nb.server.state import (
    ALIGNMENT,
    StateBlock,
    attach_block,
    list_blocks,
    reading,
)

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
            "from melissa_nb.server.state import reading\n"
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
        with pytest.raises(FileExistsError):
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
