"""A rank's claim on its study: a lock the kernel holds for the live process and drops at death,
and the directories it will write, checked before anything else.

Each rank holds an exclusive `flock` on `<output>/server.r<rank>.lock` for its whole life. A
second server of the same study (same output directory) finds the lock taken and refuses to
start, naming the live process. A restarted server (Melissa's launcher starts the same command
line again, `-r .` appended, after a SIGKILL) takes the lock freely: the kernel released it when
the holder died, whatever its PID became since. It then reads what the dead rank wrote in the
file (its host and the prefix of its shared-memory blocks) and removes those blocks, which a
killed process cannot remove itself. A clean exit removes the blocks, then the file.

The lock lives beside the results, so every host of a study sees the same one (flock over NFS
is emulated with POSIX locks on Linux; Lustre needs its `flock` mount option).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from melissa_nb.errors import ConfigurationError
from melissa_nb.server.live.state import unlink_blocks


def check_writable(directory: Path, option: str) -> None:
    """Create `directory` if needed and write a file in it; ConfigurationError naming `option`
    otherwise, so a server never learns at its first checkpoint that it cannot write one."""
    probe = Path(directory) / f".melissa_nb_probe_{os.getpid()}"
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ConfigurationError(
            f"{option} {directory}: cannot write there ({error.strerror or error})"
        ) from None


def lock_path(output_dir: Path, rank: int) -> Path:
    """The lock file of one rank of the study writing into `output_dir`."""
    return Path(output_dir) / f"server.r{rank}.lock"


class RankClaim:
    """The held lock of one rank; `previous` is what a killed holder left in the file."""

    def __init__(self, path: Path, descriptor: int, previous: dict[str, Any] | None) -> None:
        self.path = path
        self._descriptor = descriptor
        self.previous = previous

    @classmethod
    def take(cls, path: Path, blocks_prefix: str, option: str = "--output-dir") -> RankClaim:
        """Lock `path` (created, mode 0600) and write this process's host, PID and block prefix.

        ConfigurationError naming the live holder if another process holds it, or naming
        `option` if the file cannot be created.
        """
        check_writable(path.parent, option)
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise ConfigurationError(
                f"{option} {path.parent}: cannot write there ({error.strerror or error})"
            ) from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(descriptor) or {}
            os.close(descriptor)
            raise ConfigurationError(
                f"a server of this study already runs: pid {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} holds {path}; stop it first, or choose another "
                f"{option}"
            ) from None
        previous = _read(descriptor)
        own = {"host": socket.gethostname(), "pid": os.getpid(), "blocks_prefix": blocks_prefix}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(own).encode(), 0)
        return cls(path, descriptor, previous)

    def release(self, remove: bool) -> None:
        """Drop the lock; `remove` also deletes the file (a clean exit: nothing left behind)."""
        if self._descriptor < 0:
            return
        if remove:
            with contextlib.suppress(OSError):  # gone with its directory: nothing to remove
                self.path.unlink()
        os.close(self._descriptor)  # closing the last descriptor releases the flock
        self._descriptor = -1


def reclaim(previous: dict[str, Any]) -> list[str]:
    """Remove the shared-memory blocks a killed holder (`RankClaim.previous`) left on this host."""
    if previous.get("host") != socket.gethostname():
        return []
    prefix = str(previous.get("blocks_prefix", ""))
    return unlink_blocks(prefix) if prefix.startswith("melissa_nb_") else []


def _read(descriptor: int) -> dict[str, Any] | None:
    """The JSON a holder wrote in the lock file (None if empty or not ours)."""
    text = os.pread(descriptor, 4096, 0)
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def stale_claims(output_dir: Path, ranks: int) -> list[RankClaim]:
    """Claims of ranks >= `ranks` left by a killed server that had more ranks (each taken, so
    the caller can reclaim and release them); ConfigurationError if one is still held."""
    claims = []
    for path in sorted(Path(output_dir).glob("server.r*.lock")):
        rank = path.name[len("server.r") : -len(".lock")]
        if rank.isdigit() and int(rank) >= ranks:
            claims.append(RankClaim.take(path, ""))
    return claims
