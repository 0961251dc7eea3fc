"""Frames a rank holds until it learns that their simulation was announced (ranks other than 0)
or, with correlations or chaos, the simulation's parameters (any rank).

Data is accepted only from simulations whose handshake rank 0 answered: a frame sent before any
handshake (a stray or forged one) must not teach the server a slice layout, or it can keep the
study from completing. Only rank 0 sees handshakes; the others learn them from the end votes
(every 0.2 s), and a real simulation sends to them right after its handshake. A handshake rank
0 answered before a frame reached another rank is in the rows of the third vote that rank
completes after the frame at the latest: rank 0 may be a round ahead, its rows of the next two
rounds posted before it answered (the second of them once this rank posted its row of the
first), but its row of the third needs this rank's row of the second, posted only once the
first completed here, after the frame (seen at the second: a busy rank behind rank 0 refused
such frames, and its simulation never completed). So a frame of a simulation not yet announced
waits here, zero-copy, for `ANNOUNCE_VOTES` votes, and is refused (`no_handshake`) if its
simulation is still unknown then: only a frame sent less than about three votes (0.6 s) before
its simulation's handshake can pass.
Frames that come while one waits wait behind it, whatever their simulation: a rank folds in
arrival order (quantiles depend on it, and a restart must fold as the first run did). The bytes
held are bounded: past the bound the rank stops receiving until a vote frees room (ZeroMQ
queues the rest, as for any slow rank).
"""

from __future__ import annotations

from collections import deque

ANNOUNCE_VOTES = 3
PARAMETER_VOTES = 50
"""End votes (0.2 s each) the frames of a simulation wait for its JOB with correlations or
chaos, counted from the moment this rank first lacked it: the JOB is published at launch, and
asked again
(`simu_info`) when the simulation's first frame reaches this rank, even queued behind others (a
frame's time in the queue does not count against its own simulation); after that its frames are
refused (`no_parameters`)."""


class WaitingFrames:
    """Frames in arrival order, each with the number of votes completed when it came."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = max(limit_bytes, 1)
        self.bytes = 0
        self._frames: deque[tuple[memoryview, int]] = deque()

    @property
    def pending(self) -> bool:
        """True while a frame waits (the next ones must queue behind it)."""
        return bool(self._frames)

    @property
    def full(self) -> bool:
        """True once the held frames reach the bound: receive no more before the next vote."""
        return self.bytes >= self.limit_bytes

    def hold(self, buffer: memoryview, votes: int) -> None:
        """Keep a frame that came after `votes` votes (its memoryview keeps the frame alive)."""
        self._frames.append((buffer, votes))
        self.bytes += buffer.nbytes

    def take(self) -> list[tuple[memoryview, int]]:
        """Every held frame, oldest first, and forget them (the caller holds again the ones
        still waiting)."""
        frames = list(self._frames)
        self._frames.clear()
        self.bytes = 0
        return frames
