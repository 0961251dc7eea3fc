"""The one error hierarchy of melissa_nb: every message names the offending value."""

from __future__ import annotations


class MelissaError(Exception):
    """Base class of every error melissa_nb raises on purpose."""


class ConfigurationError(MelissaError, ValueError):
    """A setting (CLI option, study file key, constructor argument) is missing or invalid."""


class ProtocolError(MelissaError, ValueError):
    """A message does not follow the wire protocol; `reason` is a short key used for counting."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class SharedMemoryUnavailable(MelissaError, OSError):
    """A shared-memory block cannot be had: /dev/shm full, no mapping or descriptor left, or
    its name taken by someone else."""


class CheckpointDamaged(MelissaError):
    """A checkpoint file is missing, truncated or fails its checksum (its `.prev` is tried)."""


class ServerUnreachableError(MelissaError, TimeoutError):
    """No server answered the connection request, or it stopped taking data, within the timeout."""
