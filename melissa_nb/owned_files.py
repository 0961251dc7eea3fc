"""Reading a file that someone else may have prepared: only a regular file of this user, never
through a symbolic link, never more than a bound, never blocking (a FIFO or a device is refused
before any read). What `melissa-nb status` and the control client read from a study directory
goes through here; every refusal is one `ConfigurationError` line naming the file."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from melissa_nb.errors import ConfigurationError


def read_owned_file(path: str | os.PathLike[str], limit: int, private: bool = False) -> bytes:
    """The bytes of `path`, a regular file owned by this user of at most `limit` bytes
    (`private`: also unreadable by anyone else, mode 0600 or stricter)."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        raise  # the caller says what a missing file means
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ConfigurationError(
                f"{path} is a symbolic link (or lies under a loop of them): refused"
            ) from None
        raise ConfigurationError(f"cannot open {path}: {error.strerror}") from None
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"{path} is not a regular file: refused")
        if info.st_uid != os.getuid():
            raise ConfigurationError(
                f"{path} belongs to user id {info.st_uid}, not to you ({os.getuid()}): refused"
            )
        if private and info.st_mode & 0o077:
            raise ConfigurationError(
                f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}, "
                "expected 600): refused"
            )
        if info.st_size > limit:
            raise ConfigurationError(f"{path} holds {info.st_size} bytes, more than {limit}")
        data = os.read(descriptor, limit + 1)
        if len(data) > limit:
            raise ConfigurationError(f"{path} holds more than {limit} bytes")
        return data
    finally:
        os.close(descriptor)
