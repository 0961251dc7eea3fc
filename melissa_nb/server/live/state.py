"""Named shared-memory blocks holding statistic state, and the read-only reader API.

A block is self-describing: it starts with an 8-byte magic, an 8-byte little-endian length and a
JSON header naming every array (dtype, shape, byte offset) plus free-form metadata. Arrays start
on 64-byte boundaries after the header. Another process can therefore attach to a block knowing
only its name (`attach_block`) and see the server's live numbers without any other channel.

Blocks are POSIX shared memory (`multiprocessing.shared_memory`, files under /dev/shm on Linux).
The creating process owns a block and unlinks it (`StateBlock.release`); readers never unlink.
The creator writes the magic last, so a reader that sees it also sees the whole header; a block
seen before that (empty, or its magic still zero) raises `BlockNotReady`.
"""

from __future__ import annotations

import json
import os
import resource
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

from melissa_nb.errors import BlockNotReady, SharedMemoryUnavailable

MAGIC = b"MNBSTAT1"
ALIGNMENT = 64
_LENGTH = struct.Struct("<Q")
_PREAMBLE = len(MAGIC) + _LENGTH.size
SHM_DIRECTORY = "/dev/shm"
DESCRIPTOR_DIRECTORY = "/proc/self/fd"
DESCRIPTOR_RESERVE = 64

ArrayLayout = Mapping[str, tuple[tuple[int, ...], Any]]
"""name -> (shape, dtype) of every array a block holds."""

_OWNED: set[str] = set()
"""Blocks created by this process: attaching to one of them (the control endpoint's `status`
on rank 0) must leave the resource tracker's record of it alone."""


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


def _plan(layout: ArrayLayout, metadata: Mapping[str, Any]) -> tuple[bytes, int]:
    """The encoded header and total block size for `layout`.

    Offsets in the header are absolute. The data area starts after the header, whose length
    depends on the offsets written in it, so the header is re-encoded until the start is stable
    (two passes at most: offsets only grow by a few digits).
    """
    data_start = _aligned(_PREAMBLE + 256)
    while True:
        arrays = []
        offset = data_start
        for name, (shape, dtype) in layout.items():
            dtype = np.dtype(dtype)
            shape = tuple(int(n) for n in shape)
            arrays.append(
                {"name": name, "dtype": dtype.str, "shape": list(shape), "offset": offset}
            )
            offset = _aligned(offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        header = json.dumps({"arrays": arrays, "metadata": dict(metadata)}).encode()
        needed = _aligned(_PREAMBLE + len(header))
        if needed <= data_start:
            return header, max(offset, data_start + ALIGNMENT)
        data_start = needed


def _views(buffer: memoryview, header: Mapping[str, Any], writable: bool) -> dict[str, np.ndarray]:
    views = {}
    for entry in header["arrays"]:
        dtype = np.dtype(entry["dtype"])
        shape = tuple(entry["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        view = np.frombuffer(buffer, dtype=dtype, count=count, offset=entry["offset"])
        view = view.reshape(shape)
        view.flags.writeable = writable
        views[entry["name"]] = view
    return views


def _check_descriptors(name: str, size: int) -> None:
    """Refuse a block that would leave fewer than DESCRIPTOR_RESERVE descriptors free.

    A mapping holds one descriptor (Python's mmap keeps a duplicate), so a flood of slices could
    otherwise take the last ones, and the checkpoint, the results and the sockets need some.
    """
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit == resource.RLIM_INFINITY or not os.path.isdir(DESCRIPTOR_DIRECTORY):
        return
    used = len(os.listdir(DESCRIPTOR_DIRECTORY))
    if used + DESCRIPTOR_RESERVE > limit:
        raise SharedMemoryUnavailable(
            f"shared memory: block {name} ({size / 2**20:.1f} MiB) refused: {used} of "
            f"{limit} file descriptors in use and {DESCRIPTOR_RESERVE} kept for files and "
            "sockets; raise the limit (`ulimit -n`; the server raises its soft limit to the hard "
            "one at start)"
        )


def _reserve(memory: shared_memory.SharedMemory, size: int) -> None:
    """Give the block all its pages now, then close its file descriptor.

    tmpfs hands out pages on first touch: without the reservation, a /dev/shm smaller than the
    state kills the process with SIGBUS on the first write past the free space. The mapping
    lives without this descriptor (SharedMemory's own, private; its close() skips it once it
    is -1), which halves the descriptors a block holds: mmap keeps a duplicate of its own.
    """
    os.posix_fallocate(memory._fd, 0, size)  # type: ignore[attr-defined]
    os.close(memory._fd)  # type: ignore[attr-defined]
    memory._fd = -1  # type: ignore[attr-defined]


def shared_memory_free() -> int:
    """Bytes still free in /dev/shm (0 where there is no such directory)."""
    if not os.path.isdir(SHM_DIRECTORY):
        return 0
    status = os.statvfs(SHM_DIRECTORY)
    return status.f_bavail * status.f_frsize


def _taken_message(name: str) -> str:
    try:
        owner = os.stat(os.path.join(SHM_DIRECTORY, name)).st_uid
    except OSError:
        owner = -1
    who = "this user" if owner == os.getuid() else f"user id {owner}"
    return (
        f"shared memory: block {name} already exists, created by {who} and not by a server of "
        "this study (their blocks are reclaimed at start); remove it, or choose another "
        "--study-id"
    )


def _full_message(name: str, size: int, error: OSError) -> str:
    return (
        f"shared memory: block {name} needs {size / 2**20:.1f} MiB, {SHM_DIRECTORY} has "
        f"{shared_memory_free() / 2**20:.1f} MiB free ({error.strerror or error}). Enlarge "
        f"{SHM_DIRECTORY} (`mount -o remount,size=... {SHM_DIRECTORY}`; in Docker "
        "`--shm-size`), or spread the cells over more server ranks or nodes"
    )


class StateBlock:
    """One named shared-memory block: `arrays` (numpy views into it) and `metadata`.

    Build with `StateBlock.create` (owner: zero-filled, writable) or `attach_block` (reader).
    """

    def __init__(
        self, memory: shared_memory.SharedMemory, header: Mapping[str, Any], owner: bool
    ) -> None:
        self._memory = memory
        self.name: str = memory.name
        self.owner = owner
        self.metadata: dict[str, Any] = dict(header["metadata"])
        self.arrays: dict[str, np.ndarray] = _views(memory.buf, header, writable=owner)

    @classmethod
    def create(
        cls, name: str, layout: ArrayLayout, metadata: Mapping[str, Any] | None = None
    ) -> StateBlock:
        """Create block `name` holding zero-filled arrays of `layout`, its pages reserved.

        SharedMemoryUnavailable (naming the size, the free space and the fix) if the name is
        taken or the block cannot be had.
        """
        header, size = _plan(layout, metadata or {})
        _check_descriptors(name, size)
        try:
            memory = shared_memory.SharedMemory(name=name, create=True, size=size)
        except FileExistsError:
            raise SharedMemoryUnavailable(_taken_message(name)) from None
        except OSError as error:  # no mapping left (vm.max_map_count), no memory
            raise SharedMemoryUnavailable(_full_message(name, size, error)) from None
        try:
            _reserve(memory, size)
        except OSError as error:
            memory.close()
            memory.unlink()
            raise SharedMemoryUnavailable(_full_message(name, size, error)) from None
        memory.buf[_PREAMBLE : _PREAMBLE + len(header)] = header
        memory.buf[len(MAGIC) : _PREAMBLE] = _LENGTH.pack(len(header))
        memory.buf[: len(MAGIC)] = MAGIC  # last: readers take the magic as "header complete"
        _OWNED.add(memory.name)
        return cls(memory, json.loads(header), owner=True)

    @property
    def size(self) -> int:
        """Bytes of shared memory the block occupies."""
        return self._memory.size

    def release(self) -> None:
        """Drop the views, unmap the block and, for its owner, remove its name."""
        self.arrays.clear()
        if self.owner:
            _OWNED.discard(self.name)
            self._memory.unlink()
        try:
            self._memory.close()
        except BufferError:
            # A caller still holds a view of the block: the mapping then lives until that view
            # is collected; the name is already gone, so nothing leaks past the process.
            pass


def attach_block(name: str) -> StateBlock:
    """Attach read-only to an existing block.

    Raises FileNotFoundError if it is gone, `BlockNotReady` while its creator is still writing
    its header, ValueError if it is not a melissa_nb block. The reader is removed from Python's
    resource tracker, which would otherwise unlink the block when the reading process exits
    (Python < 3.13 registers attaches too).
    """
    try:
        memory = shared_memory.SharedMemory(name=name, create=False)
    except ValueError as error:  # "cannot mmap an empty file": named but not sized yet
        raise BlockNotReady(f"shared-memory block {name!r} is still empty") from error
    if memory.name not in _OWNED:
        resource_tracker.unregister(memory._name, "shared_memory")  # type: ignore[attr-defined]
    buffer = memory.buf
    magic = bytes(buffer[: len(MAGIC)])
    if magic != MAGIC:
        memory.close()
        if magic == bytes(len(MAGIC)):
            raise BlockNotReady(f"shared-memory block {name!r} has no header yet")
        raise ValueError(f"shared-memory block {name!r} is not a melissa_nb state block")
    (length,) = _LENGTH.unpack(buffer[len(MAGIC) : _PREAMBLE])
    header = json.loads(bytes(buffer[_PREAMBLE : _PREAMBLE + length]))
    return StateBlock(memory, header, owner=False)


@contextmanager
def reading(name: str) -> Iterator[StateBlock]:
    """`with reading(name) as block:` attach read-only, detach at the end."""
    block = attach_block(name)
    try:
        yield block
    finally:
        block.release()


def list_blocks(prefix: str) -> list[str]:
    """Names of the live blocks whose name starts with `prefix` (sorted)."""
    if not os.path.isdir(SHM_DIRECTORY):
        return []
    return sorted(name for name in os.listdir(SHM_DIRECTORY) if name.startswith(prefix))


def block_name(study_id: str, rank: int, field: str, client_rank: int) -> str:
    """Name of the block of one (server rank, field, client slice)."""
    return f"melissa_nb_{study_id}_r{rank}_{field}_c{client_rank}"


def progress_block_name(study_id: str, rank: int) -> str:
    """Name of the small per-rank block holding progress counters."""
    return f"melissa_nb_{study_id}_r{rank}_progress"


def unlink_blocks(prefix: str) -> list[str]:
    """Remove every block whose name starts with `prefix` (those of a killed server).

    Only for blocks whose owner is known to be dead: a live owner keeps its mapping but loses
    the name. Returns the names removed.
    """
    removed = []
    for name in list_blocks(prefix):
        try:
            os.unlink(os.path.join(SHM_DIRECTORY, name))
        except FileNotFoundError:
            continue
        removed.append(name)
    return removed
