"""What arrived: received-timestep bitsets, simulation statuses and the completion rule.

Tracking ids are simulation ids, or Sobol group ids when Sobol is on (a group is one sample).
For every (field, client slice) a rank has learned, a bitset of shape (ids, timesteps) records
which timesteps arrived, so a re-sent timestep (restarted simulation, duplicated message) is
recognised and never counted twice. Memory: ids * timesteps / 8 bytes per (field, slice).

Completion (docs/architecture.md): a simulation is finished on a rank when every timestep of every
field has arrived for every client slice the rank has learned; a rank that has learned no slice of
a field has finished nothing. The study ends when every rank has every simulation finished or
dropped and the ranks' learned layouts agree with the partition of the total cell count and cover
every client rank; `Vote.count` decides that from every rank's `summary()`. The same rows say
which simulations are finished on every rank: only those are reported finished to the launcher.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from melissa_nb.partition import rank_cells

_WORD = 64


class SliceSteps:
    """Received timesteps of one (field, client slice): one bit per (tracking id, timestep)."""

    def __init__(
        self, ids: int, timesteps: int, vect_size: int, received: np.ndarray | None = None
    ) -> None:
        self.vect_size = vect_size
        self.timesteps = timesteps
        # Little-endian words, so bit t of a row is bit t % 8 of its byte t // 8 on any machine.
        self.bits = np.zeros((ids, -(-timesteps // _WORD)), dtype="<u8")
        # Timesteps received per id; may live in the slice's shared block so `status` sees it.
        self.received = np.zeros(ids, dtype=np.int32) if received is None else received
        # Per message, the checks go through memoryviews: a numpy scalar operation costs ~0.3 us,
        # a memoryview item ~0.03 us.
        self._row_bytes = self.bits.shape[1] * 8
        self._bytes = memoryview(self.bits).cast("B")
        self._counts = memoryview(self.received)

    def has(self, simulation: int, timestep: int) -> bool:
        """True if this timestep of this simulation already arrived."""
        byte = self._bytes[simulation * self._row_bytes + (timestep >> 3)]
        return bool(byte >> (timestep & 7) & 1)

    def add(self, simulation: int, timestep: int) -> bool:
        """Record an arrival the caller checked is new (`has` was False).

        True when it completes the simulation (every timestep arrived).
        """
        index = simulation * self._row_bytes + (timestep >> 3)
        self._bytes[index] |= 1 << (timestep & 7)
        count = self._counts[simulation] + 1
        self._counts[simulation] = count
        return count == self.timesteps

    def release(self) -> None:
        """Drop every view of `received`, which may live in a shared-memory block that can
        only be closed once no view of it is left."""
        self._counts.release()
        self._bytes.release()
        self.received = np.zeros(0, dtype=np.int32)


STATE_IDLE, STATE_RUNNING, STATE_FINISHED, STATE_DROPPED = 0, 1, 2, 3


@dataclass(frozen=True)
class FieldLayout:
    """What one rank learned of one field: cells it holds and the client ranks they came from."""

    cells: int
    first_client: int
    last_client: int
    clients: int

    @property
    def contiguous(self) -> bool:
        """True when the client ranks seen form one run (they must, by the partition)."""
        return self.clients == 0 or self.last_client - self.first_client + 1 == self.clients


class Tracker:
    """Arrivals and statuses of every simulation of the study, as seen by one server rank."""

    def __init__(self, field_names: tuple[str, ...], timesteps: int, simulations: int) -> None:
        self.field_names = tuple(field_names)
        self.timesteps = timesteps
        self.simulations = simulations
        self.slices: dict[str, dict[int, SliceSteps]] = {name: {} for name in self.field_names}
        self.complete_slices = np.zeros(simulations, dtype=np.int32)
        self.dropped = np.zeros(simulations, dtype=bool)
        self.started = np.zeros(simulations, dtype=bool)
        self.announced = np.zeros(simulations, dtype=bool)  # a handshake was seen (by rank 0)
        self.last_seen = np.zeros(simulations, dtype=np.float64)
        self.reported_finished = np.zeros(simulations, dtype=bool)
        self.job_ids: dict[int, str] = {}
        self.job_parameters: dict[int, tuple[float, ...]] = {}  # JOB values (correlation, users)
        self.client_comm_size = 0

    def learn_slice(
        self, field: str, client_rank: int, vect_size: int, received: np.ndarray | None = None
    ) -> SliceSteps:
        """The steps of (field, client_rank), created the first time that slice sends.

        `received`: a zeroed int32 array of one count per id to keep the counts in (optional).
        """
        steps = self.slices[field].get(client_rank)
        if steps is None:
            steps = SliceSteps(self.simulations, self.timesteps, vect_size, received)
            self.slices[field][client_rank] = steps
        return steps

    def forget_slices_from(self, client_ranks: int) -> list[tuple[str, int]]:
        """Forget the slices of client ranks >= `client_ranks` (the study's simulations have
        fewer: such data was forged or stray); the (field, client rank) pairs forgotten."""
        forgotten = []
        for field, slices in self.slices.items():
            for client_rank in [rank for rank in slices if rank >= client_ranks]:
                steps = slices.pop(client_rank)
                self.complete_slices -= (steps.received == self.timesteps).astype(np.int32)
                steps.release()
                forgotten.append((field, client_rank))
        return forgotten

    def record(self, field: str, client_rank: int, simulation: int, timestep: int) -> bool:
        """Record one arrival of a learned slice; False for a duplicate."""
        steps = self.slices[field][client_rank]
        if steps.has(simulation, timestep):
            return False
        self.add(steps, simulation, timestep)
        return True

    def add(self, steps: SliceSteps, simulation: int, timestep: int) -> None:
        """Record an arrival the caller checked is new (`steps.has` was False): one check per
        message for the receive loop, which checks before folding and records after."""
        if steps.add(simulation, timestep):
            self.complete_slices[simulation] += 1

    def release(self) -> None:
        """Forget every learned slice, releasing their views of the slices' blocks."""
        for slices in self.slices.values():
            for steps in slices.values():
                steps.release()
            slices.clear()

    def touch(self, simulation: int, now: float) -> None:
        """The simulation showed a sign of life (connection or data) at time `now`."""
        self.started[simulation] = True
        self.last_seen[simulation] = now

    def drop(self, simulation: int) -> None:
        """Give a simulation up: it counts as finished from now on."""
        self.dropped[simulation] = True

    @property
    def learned_slices(self) -> int:
        """Number of (field, client slice) pairs learned so far."""
        return sum(len(slices) for slices in self.slices.values())

    def finished(self) -> np.ndarray:
        """Boolean mask of the simulations finished on this rank (dropped ones excluded)."""
        if any(not slices for slices in self.slices.values()):
            return np.zeros(self.simulations, dtype=bool)
        return self.complete_slices == self.learned_slices

    def status(self) -> np.ndarray:
        """STATE_* code of every simulation."""
        codes = np.where(self.started, STATE_RUNNING, STATE_IDLE).astype(np.int8)
        codes[self.finished()] = STATE_FINISHED
        codes[self.dropped] = STATE_DROPPED
        return codes

    def silent(self, now: float, timeout: float) -> list[int]:
        """Running simulations with no sign of life for longer than `timeout` seconds."""
        running = self.started & ~self.finished() & ~self.dropped
        return np.flatnonzero(running & (now - self.last_seen > timeout)).tolist()

    def all_done(self) -> bool:
        """True when every simulation is finished or dropped on this rank."""
        return bool((self.finished() | self.dropped).all())

    def layout(self, field: str) -> FieldLayout:
        """The learned layout of `field` on this rank."""
        slices = self.slices[field]
        if not slices:
            return FieldLayout(0, 0, -1, 0)
        return FieldLayout(
            cells=sum(steps.vect_size for steps in slices.values()),
            first_client=min(slices),
            last_client=max(slices),
            clients=len(slices),
        )

    def summary(self, abort: bool) -> np.ndarray:
        """This rank's row of the end-of-study vote, int64 (see `Vote`).

        [all done, abort, client comm size, all dropped, per field (cells, first client, last
        client, clients), then the finished-or-dropped mask of every simulation and the mask of
        the announced ones (whose handshake rank 0 answered), 64 per word each].
        """
        row = [int(self.all_done()), int(abort), self.client_comm_size, int(self.dropped.all())]
        for field in self.field_names:
            layout = self.layout(field)
            row += [layout.cells, layout.first_client, layout.last_client, layout.clients]
        masks = [_mask(self.finished() | self.dropped), _mask(self.announced)]
        return np.concatenate([np.asarray(row, dtype=np.int64), *masks])

    def newly_finished(self, done_everywhere: np.ndarray) -> list[int]:
        """Simulations finished or dropped on every rank not reported before (each once)."""
        fresh = done_everywhere & ~self.reported_finished & ~self.dropped
        self.reported_finished |= fresh
        return np.flatnonzero(fresh).tolist()


HEAD = 4
"""Columns of a summary row before the per-field layouts."""


def _mask(flags: np.ndarray) -> np.ndarray:
    """One bit per simulation, packed into int64 words."""
    words = np.zeros(8 * -(-flags.size // 64), dtype=np.uint8)
    packed = np.packbits(flags, bitorder="little")
    words[: packed.size] = packed
    return words.view(np.int64)


def _unmask(words: np.ndarray, simulations: int) -> np.ndarray:
    """The flags of `_mask` (rows of words: one flag row per row)."""
    bits = np.ascontiguousarray(words).view(np.uint8)
    return np.unpackbits(bits, axis=-1, bitorder="little")[..., :simulations].astype(bool)


def summary_width(fields: int, simulations: int) -> int:
    """Length of a `Tracker.summary` row."""
    return HEAD + 4 * fields + 2 * -(-simulations // 64)


@dataclass(frozen=True)
class Vote:
    """What every rank's summary rows say, evaluated identically on every rank.

    `end`: a rank aborts, or every rank is done and the layouts agree. `layouts_agree`: for every
    field, each rank holds exactly its partition block of the total cells and the client ranks
    seen, in rank order, run contiguously from 0 to client_comm_size - 1. `done_everywhere`:
    simulations finished or dropped on every rank (meaningful once the layouts agree).
    """

    end: bool
    aborted: bool
    layouts_agree: bool
    done_everywhere: np.ndarray
    all_dropped: bool
    announced: np.ndarray  # simulations whose handshake rank 0 answered
    client_comm_size: int  # the study's, once rank 0 has data that confirms it (else 0)

    @classmethod
    def count(cls, rows: np.ndarray, fields: int, simulations: int) -> Vote:
        """Evaluate the gathered rows (in rank order)."""
        head = HEAD + 4 * fields
        words = -(-simulations // 64)
        done = _unmask(rows[:, head : head + words], simulations).all(axis=0)
        announced = _unmask(rows[:, head + words :], simulations).any(axis=0)
        agree = _layouts_agree(rows, fields)
        aborted = bool(rows[:, 1].any())
        # Every simulation dropped everywhere: nothing more can come, even if the layouts
        # never formed (no data arrived at all); the loop ends such a study with an error.
        nothing_to_come = bool(rows[:, 3].all())
        end = aborted or nothing_to_come or (bool(rows[:, 0].all()) and agree)
        return cls(
            end, aborted, agree, done & agree, nothing_to_come, announced, int(rows[:, 2].max())
        )


def _layouts_agree(rows: np.ndarray, fields: int) -> bool:
    ranks = rows.shape[0]
    client_comm_size = int(rows[:, 2].max())
    for field in range(fields):
        layouts = [
            FieldLayout(*map(int, row[HEAD + 4 * field : HEAD + 4 + 4 * field])) for row in rows
        ]
        total = sum(layout.cells for layout in layouts)
        if total == 0:
            return False
        for rank, layout in enumerate(layouts):
            start, end = rank_cells(total, ranks, rank)
            if layout.cells != end - start or not layout.contiguous:
                return False
        if client_comm_size and not _covers(layouts, client_comm_size):
            return False
    return True


def _covers(layouts: list[FieldLayout], client_comm_size: int) -> bool:
    """True when the ranks' client runs chain from client 0 to client_comm_size - 1.

    Consecutive server blocks either share a client rank (its slice straddles the boundary) or
    continue with the next one.
    """
    held = [layout for layout in layouts if layout.clients]
    if held[0].first_client != 0 or held[-1].last_client != client_comm_size - 1:
        return False
    return all(
        nxt.first_client in (prev.last_client, prev.last_client + 1)
        for prev, nxt in zip(held, held[1:], strict=False)
    )
