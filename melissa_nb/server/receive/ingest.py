"""The receive path of one rank, top to bottom: frame -> checks -> tracking -> Sobol assembly ->
batch -> kernels. `Ingest` owns the rank's state (slices, tracker, member buffers) and the
per-session protocol facts (who shook hands, the study's client layout); it is the one object
checkpoints snapshot (checkpoint/snapshot.py `snapshot_rank`) and restore (`Ingest.restore`).

A data frame, in `handle`: decoded and checked against the study (`DataValidator`); refused if
its simulation was dropped or never shook hands (ranks other than 0 hold it in `WaitingFrames`
for three votes first: only rank 0 sees handshakes); its (field, client rank) slice found or made
in shared memory; with correlations or chaos, it waits (in `WaitingFrames`, on any rank) for its
simulation's JOB parameters; a timestep that arrived before is a duplicate; non-finite values
refuse it; a lone Sobol member waits in `MemberAssembly` for its group; the sample (or whole
group) joins the `FoldBatch`, folded by the kernels at the end of the burst (`fold`); the
timestep is marked received. Socket handling, the launcher and the end vote stay with the loop,
which hears of first sightings and failures through two callbacks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import zmq

from melissa_nb.errors import ProtocolError, SharedMemoryUnavailable
from melissa_nb.kernels.api.chaos import inside_support
from melissa_nb.kernels.finite import count_non_finite
from melissa_nb.protocol import ConnectionRequest, DataMessage, DataValidator, sobol_member
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.live.progress import Progress
from melissa_nb.server.pipeline.stages import STAGE_PREFIX, Processing
from melissa_nb.server.receive.batches import FoldBatch
from melissa_nb.server.receive.members import MemberAssembly
from melissa_nb.server.receive.restored import (
    RestoredLayout,
    RestoredRank,
    RestoredSlice,
    restore_steps,
    restore_tracker,
)
from melissa_nb.server.receive.segments import Segment, SegmentedSlice
from melissa_nb.server.receive.slices import SliceStatistics, slice_bytes
from melissa_nb.server.receive.tracking import SliceSteps, Tracker, Vote
from melissa_nb.server.receive.waiting import ANNOUNCE_VOTES, PARAMETER_VOTES, WaitingFrames


class Ingest:
    """A rank's statistics state and the path of every data frame into it."""

    def __init__(
        self,
        config: ServerConfig,
        rank: int,
        threads: int,
        progress: Progress,
        processing: Processing,
        log: logging.Logger,
        first_seen: Callable[[int], None],
        non_finite: Callable[[int, str], None],
        wants_job: Callable[[int], None],
    ) -> None:
        """`first_seen(simulation)`: its first sign of life on this rank; `non_finite(simulation,
        field)`: it sent NaN or infinity (once per attempt: until it sends a good or re-sent
        message again); `wants_job(simulation)`: with correlations or chaos, this rank has data of a
        simulation whose JOB (parameters) it lacks."""
        self.config = config
        self.rank = rank
        self.threads = threads
        self.progress = progress
        self.processing = processing
        self.log = log
        self.first_seen = first_seen
        self.non_finite = non_finite
        self.wants_job = wants_job
        self.tracker = Tracker(config.field_names, config.timesteps, config.sampling_size)
        self.validator = DataValidator(
            config.field_names,
            config.timesteps,
            config.sampling_size,
            sobol=config.sobol,
            nb_parameters=config.parameters,
        )
        self.slices: dict[tuple[str, int], SliceStatistics | SegmentedSlice] = {}
        self.members = MemberAssembly(config.group_size, int(config.member_buffer_mb * 2**20))
        self.batch = FoldBatch(config.sobol, int(config.batch_mb * 2**20))
        self.waiting = WaitingFrames(int(config.batch_mb * 2**20))
        self.announced_sizes: dict[int, int] = {}  # rank 0: simulation -> its client ranks
        self.vote_rounds = 0  # votes completed: how long a waiting frame has waited
        # Correlations: simulation -> the vote at which this rank first lacked its JOB; its
        # frames wait PARAMETER_VOTES from then, wherever they are in the queue.
        self.parameters_wanted: dict[int, int] = {}
        self.restored_layout = RestoredLayout(log)  # after a restart: what the data must fit
        self._non_finite_told: set[int] = set()  # told since their last good message

    # --- frames -----------------------------------------------------------------------------------

    def drain(self, socket: zmq.Socket, limit: int, now: float) -> None:
        """Handle up to `limit` frames waiting on `socket`, then fold what they brought."""
        counts = self.progress.counts
        try:
            for burst in range(limit):
                try:
                    frame = socket.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    counts["last_burst"] = burst
                    return
                counts["messages"] += 1
                counts["bytes"] += len(frame)
                try:
                    self.handle(frame.buffer, now)
                except ProtocolError as error:
                    self.progress.reject(error.reason, str(error), now)
                if self.batch.full:
                    self.fold()
                if self.waiting.full:  # no more until a vote tells which simulations exist
                    return
        finally:
            self.fold()

    def handle(
        self, buffer: memoryview, now: float, arrived: int | None = None, final: bool = False
    ) -> None:
        """Validate one data frame, hand it to the fold batch, mark its timestep.

        `arrived`: the votes completed when a frame that waited came (else now:
        `self.vote_rounds`); `final`: the study ends, a frame that would wait is refused.
        """
        if arrived is None:
            arrived = self.vote_rounds
            if self.waiting.pending:  # behind a frame that waits: keep the arrival order
                self._queued(buffer)
                self.waiting.hold(buffer, arrived)
                return
        message = DataMessage.decode(buffer, self.validator.accepted_vector_counts)
        self.restored_layout.check_frame(message)
        self.validator.check(message)
        config = self.config
        single_member = config.sobol and message.nb_vectors == 1
        if single_member:
            group, member = sobol_member(message.simu_id, config.parameters)
        else:
            group, member = message.simu_id, 0
        if self.tracker.dropped[group]:
            raise ProtocolError("dropped_simulation", f"data of dropped simulation {group}")
        field, client_rank, timestep = message.field_name, message.client_rank, message.time_stamp
        if not self.tracker.announced[group]:
            if self.rank != 0 and self.vote_rounds - arrived < ANNOUNCE_VOTES and not final:
                self.waiting.hold(buffer, arrived)  # rank 0 may have answered it just now
                return
            raise ProtocolError(
                "no_handshake",
                f"data of simulation {message.simu_id} (client rank {client_rank}) before any "
                "connection request of it",
            )
        if not self.tracker.client_comm_size and self.rank == 0:
            self._confirm_layout(group, client_rank)
        try:
            statistics = self._slice(field, client_rank, message.vect_size)
        except SharedMemoryUnavailable as error:  # the slice cannot be held: refuse, keep serving
            raise ProtocolError("no_shared_memory", str(error)) from None
        steps = self._learn_slice(
            field, client_rank, message.vect_size, statistics and statistics.received
        )
        self.touch(group, now)
        parameters = self._parameters(group, final) if config.needs_parameters else None
        if config.needs_parameters and parameters is None:
            self.waiting.hold(buffer, arrived)
            return
        if steps.has(group, timestep):
            self.progress.counts["duplicates"] += 1
            self._non_finite_told.discard(group)  # a relaunch re-sends what it had
            return
        values = message.values
        bad = count_non_finite(values.reshape(-1))
        if bad:
            if group not in self._non_finite_told:
                self._non_finite_told.add(group)
                self.non_finite(group, field)
            raise ProtocolError(
                "non_finite",
                f"simulation {message.simu_id} field {field!r} timestep {timestep}: "
                f"{bad} of {values.size} values are NaN or infinite",
            )
        self._non_finite_told.discard(group)
        if single_member:
            outcome, assembled = self.members.add(
                (field, client_rank, group, timestep), member, values[0]
            )
            if outcome == MemberAssembly.DUPLICATE:
                self.progress.counts["duplicates"] += 1
                return
            if outcome == MemberAssembly.FULL:
                raise ProtocolError(
                    "member_buffer_full",
                    f"no room for member {member} of group {group} "
                    f"(--member-buffer-mb {config.member_buffer_mb:g})",
                )
            self._accepted(message)
            if assembled is None:
                return
            self._hold(statistics, timestep, assembled, group, parameters)
        else:
            self._hold(statistics, timestep, values, group, parameters)
            self._accepted(message)
        self.tracker.add(steps, group, timestep)

    def _queued(self, buffer: memoryview) -> None:
        """A frame queued behind a waiting one: with correlations or chaos, its simulation's JOB is
        asked for now (its wait starts now, not when the frames ahead are done). A malformed
        frame is refused here (ProtocolError)."""
        if self.config.needs_parameters:
            message = DataMessage.decode(buffer, self.validator.accepted_vector_counts)
            if message.simu_id < self.config.sampling_size:
                self._want_parameters(message.simu_id)

    def _want_parameters(self, simulation: int) -> None:
        """This rank lacks the JOB of `simulation`: start its wait and ask for it (once)."""
        if simulation not in self.parameters_wanted:
            self.parameters_wanted[simulation] = self.vote_rounds
            self.wants_job(simulation)

    def _parameters(self, simulation: int, final: bool) -> tuple[float, ...] | None:
        """The simulation's JOB parameters; None while its frames may still wait for them
        (ProtocolError once `PARAMETER_VOTES` votes passed since this rank first lacked them,
        at the study's end, or when they are not finite)."""
        parameters = self.tracker.job_parameters.get(simulation)
        if parameters is None:
            self._want_parameters(simulation)
            if (
                self.vote_rounds - self.parameters_wanted[simulation] < PARAMETER_VOTES
                and not final
            ):
                return None
            raise ProtocolError(
                "no_parameters",
                f"data of simulation {simulation}: no JOB gave its parameters within "
                f"{PARAMETER_VOTES} end votes",
            )
        width = self.config.job_width
        if len(parameters) != width:
            raise ProtocolError(
                "no_parameters",
                f"the JOB of {'group' if self.config.sobol else 'simulation'} {simulation} "
                f"carries {len(parameters)} values, the statistics need {width}"
                + (" (the group's draws A and B)" if self.config.sobol else ""),
            )
        draws = np.reshape(parameters, (-1, self.config.parameters))
        if not np.all(np.isfinite(parameters)) or (
            self.config.chaos and not all(inside_support(row, self.config.laws) for row in draws)
        ):
            raise ProtocolError(
                "no_parameters", f"the JOB of simulation {simulation} has {parameters}"
            )
        return parameters

    def _hold(
        self,
        statistics: SliceStatistics | None,
        timestep: int,
        values: np.ndarray,
        sample: int,
        parameters: tuple[float, ...] | None = None,
    ) -> None:
        """Hand a sample (or a whole Sobol group) to the batch of the built-in statistics."""
        if statistics is not None:
            self.batch.add(statistics, timestep, values, sample, parameters)

    def fold(self) -> None:
        """Fold the batch into the statistics, timed."""
        counts = self.progress.counts
        started = time.perf_counter_ns()
        counts["kernel_passes"] += self.batch.fold()
        counts["kernel_ns"] += time.perf_counter_ns() - started

    def _accepted(self, message: DataMessage) -> None:
        """Count an accepted message and hand it to the user stages and listeners."""
        self.progress.counts["accepted"] += 1
        self.processing.accept(message)

    def touch(self, simulation: int, now: float) -> None:
        """A sign of life from a simulation (handshake or data)."""
        first = not self.tracker.started[simulation]
        self.tracker.touch(simulation, now)
        if first:
            self.first_seen(simulation)

    # --- slices -----------------------------------------------------------------------------------

    def _slice(self, field: str, client_rank: int, cells: int) -> SliceStatistics | None:
        """The statistics of (field, client_rank), made on its first data (None: the server
        computes no built-in statistics)."""
        if not self.config.statistics:
            return None
        statistics = self.slices.get((field, client_rank))
        if statistics is None:
            statistics = SliceStatistics(
                self.config, self.rank, field, client_rank, cells, self.threads
            )
            self.slices[(field, client_rank)] = statistics
            self.progress.counts["state_bytes"] += slice_bytes(self.config, cells, field)
            self.log.info(
                "field %s: client rank %d sends %d cells here (%.1f MiB of state)",
                field,
                client_rank,
                cells,
                slice_bytes(self.config, cells, field) / 2**20,
            )
        return statistics

    def _learn_slice(
        self, field: str, client_rank: int, cells: int, received: np.ndarray | None
    ) -> SliceSteps:
        """The one place a slice's size is fixed: for the checks of the next messages and for
        the tracker's layout."""
        self.validator.remember(field, client_rank, cells)
        return self.tracker.learn_slice(field, client_rank, cells, received)

    def _set_client_comm_size(self, size: int) -> None:
        """The one place the study's client communicator size is fixed (0: not known)."""
        self.tracker.client_comm_size = size
        self.validator.client_comm_size = size or None

    # --- the study's client layout ----------------------------------------------------------------

    def announce(self, request: ConnectionRequest, now: float) -> int:
        """Rank 0: record a handshake; returns its simulation (or Sobol group).

        Raises ProtocolError for a simulation outside the study or a layout other than the
        study's.
        """
        simulation = request.simu_id // self.config.group_size
        if simulation >= self.config.sampling_size:
            raise ProtocolError(
                "simu_id_out_of_range",
                f"connection from simulation {request.simu_id}, study has "
                f"{self.config.sampling_size * self.config.group_size}",
            )
        self.restored_layout.check_handshake(request)
        if self.tracker.client_comm_size not in (0, request.client_comm_size):
            # One decomposition for the whole study, fixed by the first data (a handshake alone
            # fixes nothing: a stray one must not lock real simulations out); another would
            # change the completion rule under the simulations already counted.
            raise ProtocolError(
                "client_comm_size_changed",
                f"simulation {request.simu_id} has {request.client_comm_size} ranks, the "
                f"study's data came from {self.tracker.client_comm_size}: all must share one "
                "layout",
            )
        self.tracker.announced[simulation] = True
        self.announced_sizes[simulation] = request.client_comm_size
        self.touch(simulation, now)
        return simulation

    def _confirm_layout(self, simulation: int, client_rank: int) -> None:
        """Rank 0, first data of an announced simulation: the client communicator size it
        announced becomes the study's (its data beyond that size is refused)."""
        size = self.announced_sizes.get(simulation)
        if size is None:  # announced before a restart: its next handshake will tell
            return
        if client_rank >= size:
            raise ProtocolError(
                "client_rank_out_of_range",
                f"client rank {client_rank} of simulation {simulation}, which announced {size}",
            )
        self._learn_client_ranks(size)
        self.log.info("the simulations have %d rank(s) each (from simulation %d)", size, simulation)

    def _learn_client_ranks(self, size: int) -> None:
        """The study's client communicator size is known: data of client ranks beyond it is
        refused from now on, and slices of such ranks already made (data of an announced
        simulation, but not of the study's layout) are discarded, counted as refused."""
        self.fold()  # it may hold samples of a slice about to go
        self._set_client_comm_size(size)
        for field, client_rank in self.tracker.forget_slices_from(size):
            statistics = self.slices.pop((field, client_rank), None)
            self.validator.vect_sizes.pop((field, client_rank), None)
            if statistics is not None:
                self.progress.counts["state_bytes"] -= slice_bytes(
                    self.config, statistics.cells, field
                )
                statistics.release()
            self.progress.reject(
                "client_rank_out_of_range",
                f"field {field!r}: the data of client rank {client_rank} is discarded, the "
                f"simulations have {size} rank(s)",
                time.monotonic(),
            )

    def vote_counted(self, vote: Vote, now: float) -> None:
        """An end vote completed. Ranks other than 0 learn from it the simulations rank 0
        announced and the study's communicator size; then every rank tries again the frames
        that waited (for an announcement, or with correlations or chaos for parameters)."""
        self.vote_rounds += 1
        if self.rank != 0:
            self.tracker.announced |= vote.announced
            if vote.client_comm_size and not self.tracker.client_comm_size:
                self._learn_client_ranks(vote.client_comm_size)
        for buffer, arrived in self.waiting.take():
            if self.waiting.pending:  # an earlier frame waits again: keep the arrival order
                self.waiting.hold(buffer, arrived)
                continue
            try:
                self.handle(buffer, now, arrived)
            except ProtocolError as error:
                self.progress.reject(error.reason, str(error), now)
        self.fold()

    def refuse_waiting(self, now: float) -> None:
        """The study ends: each frame still waiting gets its final answer, as if it had waited
        its full time (refused: never announced, or no parameters; else folded)."""
        for buffer, arrived in self.waiting.take():
            try:
                self.handle(buffer, now, arrived, final=True)
            except ProtocolError as error:
                self.progress.reject(error.reason, str(error), now)
        self.fold()

    def drop(self, simulation: int, why: str) -> None:
        """Give a simulation up (logged once): its data is refused from now on."""
        if self.tracker.dropped[simulation]:
            return
        self.tracker.drop(simulation)
        self.members.discard_group(simulation)
        self.log.warning("simulation %d %s", simulation, why)

    # --- checkpoints ------------------------------------------------------------------------------

    def restore(self, restored: RestoredRank, now: float) -> None:
        """Take back what the old ranks' checkpoints give this rank (before any data)."""
        restore_tracker(self.tracker, restored, now)
        self._set_client_comm_size(restored.client_comm_size)
        self.restored_layout.learn(restored)
        by_slice: dict[tuple[str, int], list[RestoredSlice]] = {}
        for item in restored.slices:
            by_slice.setdefault((item.field, item.client_rank), []).append(item)
        for (field, client_rank), items in by_slice.items():
            if len(items) > 1 and self.config.statistics:
                self._restore_segments(field, client_rank, items)
                continue
            item = items[0]
            if len(items) > 1:  # no state to keep apart: the timesteps every piece had
                bits = np.bitwise_and.reduce([piece.bits for piece in items])
                item = RestoredSlice(field, client_rank, sum(p.cells for p in items), {}, bits)
            stage_arrays = {n: a for n, a in item.arrays.items() if n.startswith(STAGE_PREFIX)}
            self.processing.restore_state(item.field, item.client_rank, stage_arrays)
            statistics = self._slice(item.field, item.client_rank, item.cells)
            if statistics is not None:
                for name, array in item.arrays.items():
                    if name not in stage_arrays:
                        statistics.block.arrays[name][...] = array
            steps = self._learn_slice(
                item.field, item.client_rank, item.cells, statistics and statistics.received
            )
            restore_steps(steps, self.tracker, item.bits)
        for key, values, received in restored.members:
            self.members.restore(key, values, received)
        for name, value in restored.counts.items():
            self.progress.counts[name] += value

    def _restore_segments(self, field: str, client_rank: int, items: list[RestoredSlice]) -> None:
        """A slice whose old ranks had received different timesteps: one segment each."""
        segments = []
        for index, item in enumerate(items):
            statistics = SliceStatistics(
                self.config, self.rank, field, client_rank, item.cells, self.threads, index
            )
            for name, array in item.arrays.items():
                statistics.block.arrays[name][...] = array
            steps = SliceSteps(self.config.sampling_size, self.config.timesteps, item.cells)
            steps.bits[:] = item.bits
            segments.append(Segment(item.offset, statistics, steps))
        segmented = SegmentedSlice(field, client_rank, segments)
        self.slices[(field, client_rank)] = segmented
        cells = segmented.cells
        self.progress.counts["state_bytes"] += slice_bytes(self.config, cells, field)
        self.log.warning(
            "field %s client rank %d: the old ranks had received different timesteps of its "
            "%d cells here: kept as %d segments until the re-sent data brings them together",
            field,
            client_rank,
            cells,
            len(segments),
        )
        steps = self._learn_slice(field, client_rank, cells, segmented.received)
        restore_steps(steps, self.tracker, segmented.agreed_bits())

    def release(self) -> None:
        """Remove every shared-memory block of the state (idempotent)."""
        self.tracker.release()  # its received counts are views of the slice blocks
        for statistics in self.slices.values():
            statistics.release()
        self.slices.clear()
