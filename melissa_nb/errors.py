"""The one error hierarchy of melissa_nb: every message names the offending value."""

from __future__ import annotations

import signal


class MelissaError(Exception):
    """Base class of every error melissa_nb raises on purpose."""


class ConfigurationError(MelissaError, ValueError):
    """A setting (CLI option, study file key, constructor argument) is missing or invalid."""


REJECTION_REASONS = (
    # decoding (melissa_nb.protocol, the pipeline codec)
    "short_frame",
    "bad_size",
    "bad_value",
    "bad_version",
    "unterminated_field",
    "unterminated_string",
    "bad_string",
    "unknown_type",
    "bad_request",
    "multipart_request",
    "unauthenticated",
    # the study's settings (DataValidator)
    "unknown_field",
    "timestep_out_of_range",
    "simu_id_out_of_range",
    "client_rank_out_of_range",
    "vect_size_changed",
    # what came before (the server's ingest and launcher link)
    "no_handshake",
    "no_parameters",
    "client_comm_size_changed",
    "checkpoint_layout",
    "dropped_simulation",
    "drop_out_of_range",
    "unexpected_launcher_message",
    "non_finite",
    "member_buffer_full",
    "no_shared_memory",
)
"""Every reason a message is refused for, counted by the server; docs/protocol.md has the table
saying what each means (a test checks the two agree)."""


class ProtocolError(MelissaError, ValueError):
    """A message does not follow the wire protocol; `reason` (one of REJECTION_REASONS) is the
    short key it is counted under."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REJECTION_REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}: add it to REJECTION_REASONS")
        super().__init__(f"{reason}: {message}")
        self.reason = reason


class SharedMemoryUnavailable(MelissaError, OSError):
    """A shared-memory block cannot be had: /dev/shm full, no mapping or descriptor left, or
    its name taken by someone else."""


class CheckpointDamaged(MelissaError):
    """A checkpoint file is missing, truncated or fails its checksum (its `.prev` is tried)."""


class BlockNotReady(MelissaError, ValueError):
    """A shared-memory block exists but its creator has not finished writing its header yet."""


class StudyError(MelissaError):
    """A study could not complete: the server failed, or a deadline passed."""


class StudyInterrupted(MelissaError):
    """SIGINT, SIGTERM or SIGHUP: the runner stopped everything and gives up."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


class ServerUnreachableError(MelissaError, TimeoutError):
    """No server answered the connection request, or it stopped taking data, within the timeout."""
