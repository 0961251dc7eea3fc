"""The receive loop of one server rank: sockets -> protocol -> kernels, until the study ends.

Start: MPI world, Numba threads, kernel warm-up, sockets bound, data addresses gathered, rank 0
writes `<output>/server.json`. Loop: poll every socket with a timeout; drain data frames
(zero-copy views handed to the kernels), answer connection requests (rank 0), handle launcher
messages; regularly publish progress, send heartbeats, time out silent simulations and take part
in the non-blocking end vote. End: every rank writes its slices of every field in turn, then rank
0 sends STOP. SIGTERM and SIGINT end the loop early: blocks are removed, no results are written.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket as socketlib
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numba
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from melissa_nb.errors import ConfigurationError, ProtocolError, SharedMemoryUnavailable
from melissa_nb.kernels import FieldStatistics, SobolMartinez
from melissa_nb.kernels.finite import count_non_finite
from melissa_nb.protocol import (
    NON_FINITE,
    SIMU_FINISHED,
    SIMU_RUNNING,
    Alive,
    ConfidenceInterval,
    ConnectionReply,
    ConnectionRequest,
    DataMessage,
    DataValidator,
    Drop,
    Job,
    Server,
    SimuStatus,
    Stop,
    TextRequest,
    Timeout,
    sobol_member,
)
from melissa_nb.server.batches import FoldBatch
from melissa_nb.server.checkpoint import Checkpointer, restore_collectively, snapshot_server
from melissa_nb.server.claim import (
    RankClaim,
    check_writable,
    lock_path,
    reclaim,
    stale_claims,
)
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.control import ControlEndpoint
from melissa_nb.server.convergence import Convergence
from melissa_nb.server.forward import DATA, Forwarder
from melissa_nb.server.launcher import LauncherLink
from melissa_nb.server.members import MemberAssembly
from melissa_nb.server.output import statistic_names, write_field
from melissa_nb.server.progress import Progress
from melissa_nb.server.ranks import EndVote, World
from melissa_nb.server.requests import receive_request
from melissa_nb.server.signals import EarlySignals
from melissa_nb.server.slices import SliceStatistics, general_settings, slice_bytes
from melissa_nb.server.stages import Processing
from melissa_nb.server.status import progress_report
from melissa_nb.server.tracking import (
    STATE_FINISHED,
    STATE_RUNNING,
    Tracker,
    Vote,
    summary_width,
)
from melissa_nb.server.waiting import ANNOUNCE_VOTES, WaitingFrames

POLL_MS = 100  # every wait of the loop is at most this long: signals and votes stay responsive
DRAIN = 256  # data frames handled per poll before the other sockets get a turn
VOTE_SECONDS = 0.2
PUBLISH_SECONDS = 0.5
DATA_LINGER_MS = 0
CONNECTION_MAX_MESSAGE = 64  # a connection request is 8 bytes
CONNECTION_LINGER_MS = 1000
EXIT_ABORTED = 1
EXIT_BAD_OPTIONS = 2
SERVER_FILE = "server.json"
MONITORED = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED  # data socket events counted
JOB_ID_MAX = 256  # characters of a JOB's or DROP's job id (a scheduler's ids are far shorter)


def rank_logger(rank: int, verbosity: int) -> logging.Logger:
    """The logger of one rank: one line per event, level from the verbosity (0 warnings)."""
    log = logging.getLogger(f"melissa_nb.server.r{rank}")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s melissa-nb server r{rank} %(levelname)s %(message)s")
        )
        log.addHandler(handler)
        log.propagate = False
    log.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG))
    return log


def warm_kernels(config: ServerConfig) -> None:
    """Compile (or load from cache) every kernel this study uses before accepting data.

    The batch kernels take read-only inputs whatever the caller passes (one compiled version
    for received frames and assembled Sobol members alike): one update of each warms them.
    """
    cells = 4
    sample = np.linspace(1.0, 2.0, config.group_size * cells).reshape(config.group_size, cells)
    if config.general_statistics:
        general = FieldStatistics(cells, **general_settings(config))
        general.update(sample[0], 0)
        for name in statistic_names(config):
            if not name.startswith("sobol_"):
                getattr(general, name)
    frame_like = sample[0].copy()
    frame_like.flags.writeable = False  # received frames are read-only views: their version
    count_non_finite(frame_like)
    if config.sobol:
        sobol = SobolMartinez(cells, config.parameters, config.confidence)
        sobol.update(sample)
        sobol.first_ci, sobol.total_ci  # noqa: B018 - compiles the finalizer


class ServerRank:
    """One rank of the server: its sockets, its state and the loop that feeds them."""

    def __init__(
        self, config: ServerConfig, world: World, log: logging.Logger, signals: list[int]
    ) -> None:
        self.config = config
        self.world = world
        self.log = log
        self.rank = world.rank
        self.signals = signals  # filled by the signal handlers; the loop stops when non-empty
        self.threads = numba.get_num_threads()  # set by `serve` for this rank
        now = time.monotonic()
        self.context = zmq.Context()
        self.slices: dict[tuple[str, int], SliceStatistics] = {}
        self.progress: Progress | None = None
        self.data: zmq.Socket | None = None
        self.data_monitor: zmq.Socket | None = None
        self.connection: zmq.Socket | None = None
        self.launcher: LauncherLink | None = None
        self.control: ControlEndpoint | None = None
        self.forwarder: Forwarder | None = None
        self.processing: Processing | None = None
        self.drain = DRAIN  # an embedded server takes fewer: its inbox holds what it takes
        self.vote_rounds = 0
        self.claim: RankClaim | None = None
        self.checkpoints = Checkpointer(config, self.rank, log, now)
        try:
            self._start(now)
        except BaseException:
            self.close()
            raise

    def _start(self, now: float) -> None:
        config, world, log = self.config, self.world, self.log
        self.tracker = Tracker(config.field_names, config.timesteps, config.sampling_size)
        self.validator = DataValidator(
            config.field_names,
            config.timesteps,
            config.sampling_size,
            sobol=config.sobol,
            nb_parameters=config.parameters,
        )
        self.members = MemberAssembly(config.group_size, int(config.member_buffer_mb * 2**20))
        self.batch = FoldBatch(config.sobol, int(config.batch_mb * 2**20))
        self.waiting = WaitingFrames(int(config.batch_mb * 2**20))
        self.announced_sizes: dict[int, int] = {}  # rank 0: simulation -> its client ranks
        self.known_jobs: set[int] = set()
        self.requested_info: set[int] = set()
        self._non_finite_told: set[int] = set()  # told since their last good message
        self.job_parameters: dict[int, tuple[float, ...]] = {}  # JOB values, for user code
        self.addresses: list[str] = self._claim_resources()
        self.processing = Processing(config, self.rank, self.progress.counts, log)
        if config.forward_to is not None:
            self._connect_forwarder()
        self.launcher = (
            LauncherLink(self.context, config, now, log) if config.launcher_name else None
        )
        self.poller = zmq.Poller()
        for socket in self._input_sockets():
            self.poller.register(socket, zmq.POLLIN)
        self.summary_width = summary_width(len(config.field_names), config.sampling_size)
        self.convergence = Convergence(config, config.heartbeat)  # its widths ride on the vote
        # the last column carries control `checkpoint` requests to every rank
        self.vote = EndVote(world, self.summary_width + self.convergence.columns + 1, VOTE_SECONDS)
        self.checkpoint_requests = 0  # made on this rank (control endpoint)
        self._checkpoints_voted = 0  # the most any rank had made at the last vote
        self._next_heartbeat = now + self.config.heartbeat
        self._next_publish = now
        self.aborted = False
        if config.restart_dir is not None:
            restore_collectively(self, now)
        self.write_server_file()

    def _claim_resources(self) -> list[str]:
        """Create the progress block and bind the sockets; every rank's data address.

        Collective: a rank that fails (port in use, study id already running) still takes part
        in the gather, so every rank learns of the failure and stops cleanly instead of waiting
        forever for the failed one.
        """
        self._claim_study()
        problem = None
        try:
            try:
                self.progress = Progress(self.config.study_id, self.rank, self.log)
            except SharedMemoryUnavailable as error:
                raise ConfigurationError(str(error)) from None
            self.progress.counts["open_files_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            self.data = self._bind_data()
            self.connection = self._bind_connection() if self.rank == 0 else None
            self.control = self._bind_control() if self.rank == 0 else None
        except ConfigurationError as error:
            problem = f"rank {self.rank}: {error}"
        outcomes = self.world.allgather((problem, None if problem else self.data_address))
        problems = [problem for problem, _ in outcomes if problem]
        if problems:
            raise ConfigurationError("; ".join(problems))
        return [address for _, address in outcomes]

    def _claim_study(self) -> None:
        """Every rank locks its claim on the study (refused if a live server holds one), then
        removes the blocks that killed servers of the study left on its host.

        Collective, like `_claim_resources`: the removals end before any rank creates a block.
        """
        config, world = self.config, self.world
        problem, stale = None, []
        try:
            self.claim = RankClaim.take(
                lock_path(config.output_dir, self.rank), f"{config.shm_prefix()}r{self.rank}_"
            )
            if self.rank == 0:
                stale = stale_claims(config.output_dir, world.size)
            check_writable(config.checkpoint_directory, "--checkpoint-dir")
        except ConfigurationError as error:
            problem = f"rank {self.rank}: {error}"
        problems = [problem for problem in world.allgather(problem) if problem]
        if problems:
            for claim in stale:
                claim.release(remove=False)
            raise ConfigurationError("; ".join(problems))
        left = [claim.previous for claim in (self.claim, *stale) if claim.previous]
        removed = sorted(
            {name for previous in sum(world.allgather(left), []) for name in reclaim(previous)}
        )
        for claim in stale:
            claim.release(remove=True)
        world.allgather(None)  # nobody creates a block before every removal is done
        if removed:
            self.log.warning(
                "a killed server of this study left %d shared-memory block(s) here: removed (%s)",
                len(removed),
                ", ".join(removed),
            )

    # --- sockets ---------------------------------------------------------------------------------

    def _bind(self, socket: zmq.Socket, endpoint: str, option: str) -> None:
        """Bind, turning a failure (port in use, unknown address) into a message naming it."""
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as error:
            socket.close()
            raise ConfigurationError(f"{option}: cannot bind {endpoint}: {error}") from None

    def _bind_data(self) -> zmq.Socket:
        data = self.context.socket(zmq.PULL)
        data.setsockopt(zmq.RCVHWM, 32)
        data.setsockopt(zmq.MAXMSGSIZE, self.config.max_message_bytes)
        data.setsockopt(zmq.LINGER, DATA_LINGER_MS)
        port = self.config.data_port_for(self.world.local_index)
        host = self.config.bind_address
        self._bind(data, f"tcp://{host}:{port if port else '*'}", "--data_port/--bind")
        bound_port = int(data.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        self.data_address = f"tcp://{self.config.advertise_host}:{bound_port}"
        # Connections come and go through ZeroMQ unseen; its monitor tells of each, so status
        # can show them, and a connection ZeroMQ closes (a message above --max-cells) is counted.
        self.data_monitor = data.get_monitor_socket(MONITORED)
        return data

    def _bind_connection(self) -> zmq.Socket:
        connection = self.context.socket(zmq.REP)
        connection.setsockopt(zmq.MAXMSGSIZE, CONNECTION_MAX_MESSAGE)
        connection.setsockopt(zmq.LINGER, CONNECTION_LINGER_MS)
        endpoint = f"tcp://{self.config.bind_address}:{self.config.connection_port}"
        self._bind(connection, endpoint, "--connection-port/--bind")
        return connection

    def _bind_control(self) -> ControlEndpoint:
        actions = {
            "status": lambda: progress_report(self.config.output_dir),
            "stop": self.request_stop,
            "checkpoint": self.request_checkpoint,
        }
        try:
            return ControlEndpoint(
                self.context,
                self.config.control_bind,
                self.config.control_port,
                actions,
                self.log,
                self.progress.reject,
            )
        except zmq.ZMQError as error:
            raise ConfigurationError(
                f"--control-port/--control-bind: cannot bind "
                f"{self.config.control_bind}:{self.config.control_port}: {error}"
            ) from None

    def _connect_forwarder(self) -> None:
        assert self.processing is not None and self.config.forward_to is not None
        self.forwarder = Forwarder(
            self.context,
            self.config.forward_to,
            str(self.config.forward_ack),
            self.rank,
            self.world.size,
            self.config.forward_timeout,
            self.progress.counts,
            self.log,
        )
        forwarder = self.forwarder
        if self.config.forward_data:
            self.processing.listen(
                lambda message: forwarder.send(
                    DATA,
                    message.field_name,
                    message.values,
                    message.simu_id,
                    message.client_rank,
                    message.time_stamp,
                )
            )
        self.processing.on_finish(lambda aborted: forwarder.end())

    def request_stop(self) -> dict[str, Any]:
        """End the study at the next end vote with what arrived (control `stop`)."""
        if not self.aborted:
            self.log.warning("stop requested: ending the study with the data received so far")
        self.aborted = True
        return {"stopping": True}

    def request_checkpoint(self) -> dict[str, Any]:
        """Control `checkpoint`: every rank writes one after the next end vote (0.2 s)."""
        self.checkpoint_requests += 1
        return {"ok": True, "directory": str(self.checkpoints.directory)}

    def _input_sockets(self) -> list[zmq.Socket]:
        sockets = [self.data, self.data_monitor]
        if self.connection is not None:
            sockets.append(self.connection)
        if self.control is not None:
            sockets.append(self.control.socket)
        if self.launcher is not None:
            sockets += list(self.launcher.sockets)
        return sockets

    def write_server_file(self) -> None:
        """Rank 0 writes `<output>/server.json`: what `melissa-nb status` needs to find us."""
        hosts = self.world.allgather(socketlib.gethostname())
        pids = self.world.allgather(os.getpid())
        if self.rank != 0:
            return
        config = self.config
        config.output_dir.mkdir(parents=True, exist_ok=True)
        description = {
            "study_id": config.study_id,
            "ranks": self.world.size,
            "hosts": hosts,
            "pids": pids,
            "connection_address": f"tcp://{config.advertise_host}:{config.connection_port}",
            "data_addresses": self.addresses,
            "control_address": self.control.address if self.control is not None else None,
            "shm_prefix": config.shm_prefix(),
            "progress_blocks": [
                f"{config.shm_prefix()}r{rank}_progress" for rank in range(self.world.size)
            ],
            "fields": list(config.field_names),
            "timesteps": config.timesteps,
            "sampling_size": config.sampling_size,
            "operations": list(config.operations),
            "started_at": time.time(),
        }
        temporary = config.output_dir / (SERVER_FILE + ".tmp")
        temporary.write_text(json.dumps(description, indent=2))
        os.replace(temporary, config.output_dir / SERVER_FILE)

    # --- the loop --------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until the study ends (0), the launcher is gone (1) or a signal arrives."""
        self.begin()
        while not self.signals:
            code = self.step(POLL_MS)
            if code is not None:
                return code
        written = self.checkpoints.write_now(snapshot_server(self))
        self.log.warning(
            "stopped by signal %d: %s, no results",
            self.signals[0],
            f"checkpoint written to {written}" if written else "NO checkpoint could be written",
        )
        return 128 + self.signals[0]

    def begin(self) -> None:
        """Announce this rank to the launcher and say it is ready (once, before `step`)."""
        if self.launcher is not None:
            self.launcher.send(Server(self.rank, socketlib.gethostname()))
            if self.rank == 0:
                self.launcher.request(TextRequest("options"))
        self.log.info(
            "ready: data %s%s",
            self.data_address,
            f", connections on port {self.config.connection_port}, control {self.control.address}"
            if self.control is not None
            else "",
        )

    def step(self, timeout_ms: int) -> int | None:
        """One turn of the loop: wait up to `timeout_ms` for input and handle it, then the
        periodic work and the end vote. Returns the exit code once the study ended."""
        events = dict(self.poller.poll(timeout_ms))
        now = time.monotonic()
        if self.data in events:
            self._drain_data(now)
        if self.data_monitor in events:
            self._count_connections()
        if self.connection is not None and self.connection in events:
            self._answer_connection(now)
        if self.control is not None and self.control.socket in events:
            self.control.answer()
        if self.launcher is not None:
            for socket in self.launcher.sockets:
                if socket in events:
                    self._handle_launcher(socket, now)
            self.launcher.service(now)
        self._periodic(now)
        rows = self.vote.poll(self._vote_row, now)
        if rows is None:
            return None
        self.vote_rounds += 1
        vote = Vote.count(
            rows[:, : self.summary_width], len(self.config.field_names), self.config.sampling_size
        )
        if self.rank != 0:
            self._learn_from_vote(vote, now)
        if self.convergence.count(rows[:, self.summary_width : -1]):
            self._converged()
        if rows[:, -1].max() > self._checkpoints_voted:
            self._checkpoints_voted = int(rows[:, -1].max())
            self.checkpoints.request()
        self._report_finished(vote.done_everywhere)
        if not vote.end:
            return None
        if vote.all_dropped and not vote.layouts_agree:
            self.log.error(
                "every simulation was dropped before its data reached every rank: no results"
            )
            return self._finish(aborted=True, results=False)
        return self._finish(vote.aborted)

    def _drain_data(self, now: float) -> None:
        counts = self.progress.counts
        try:
            for burst in range(self.drain):
                try:
                    frame = self.data.recv(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    counts["last_burst"] = burst
                    return
                counts["messages"] += 1
                counts["bytes"] += len(frame)
                try:
                    self._handle_data(frame.buffer, now)
                except ProtocolError as error:
                    self.progress.reject(error.reason, str(error), now)
                if self.batch.full:
                    self._fold_batch()
                if self.waiting.full:  # no more until a vote tells which simulations exist
                    return
        finally:
            self._fold_batch()

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
        self._fold_batch()  # it may hold samples of a slice about to go
        self.tracker.client_comm_size = self.validator.client_comm_size = size
        for field, client_rank in self.tracker.forget_slices_from(size):
            statistics = self.slices.pop((field, client_rank), None)
            self.validator.vect_sizes.pop((field, client_rank), None)
            if statistics is not None:
                self.progress.counts["state_bytes"] -= slice_bytes(self.config, statistics.cells)
                statistics.release()
            self.progress.reject(
                "client_rank_out_of_range",
                f"field {field!r}: the data of client rank {client_rank} is discarded, the "
                f"simulations have {size} rank(s)",
                time.monotonic(),
            )

    def _learn_from_vote(self, vote: Vote, now: float) -> None:
        """Ranks other than 0: the simulations rank 0 announced, the study's communicator size;
        then the frames that waited for them."""
        self.tracker.announced |= vote.announced
        if vote.client_comm_size and not self.tracker.client_comm_size:
            self._learn_client_ranks(vote.client_comm_size)
        for buffer, arrived in self.waiting.take():
            if self.waiting.pending:  # an earlier frame waits again: keep the arrival order
                self.waiting.hold(buffer, arrived)
                continue
            try:
                self._handle_data(buffer, now, arrived)
            except ProtocolError as error:
                self.progress.reject(error.reason, str(error), now)
        self._fold_batch()

    def _count_connections(self) -> None:
        """Read the data socket's monitor: peers connected now, disconnections so far."""
        counts = self.progress.counts
        while self.data_monitor.poll(0):
            event = recv_monitor_message(self.data_monitor)["event"]
            if event == zmq.EVENT_ACCEPTED:
                counts["connections"] += 1
            elif event == zmq.EVENT_DISCONNECTED:
                counts["connections"] -= 1
                counts["disconnections"] += 1

    def _handle_data(self, buffer: memoryview, now: float, arrived: int | None = None) -> None:
        """Validate one data frame, hand it to the fold batch, mark its timestep.

        `arrived`: the votes completed when a frame that waited for its simulation's
        announcement came (else now: `self.vote_rounds`).
        """
        if arrived is None:
            arrived = self.vote_rounds
            if self.waiting.pending:  # behind a frame waiting for its announcement
                self.waiting.hold(buffer, arrived)
                return
        message = self.validator.decode(buffer)
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
            if self.rank != 0 and self.vote_rounds - arrived < ANNOUNCE_VOTES:
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
            statistics = (
                self._slice(field, client_rank, message.vect_size) if config.statistics else None
            )
        except SharedMemoryUnavailable as error:  # the slice cannot be held: refuse, keep serving
            raise ProtocolError("no_shared_memory", str(error)) from None
        self.validator.remember(message)
        steps = self.tracker.learn_slice(
            field, client_rank, message.vect_size, statistics and statistics.received
        )
        self._saw(group, now)
        if steps.has(group, timestep):
            self.progress.counts["duplicates"] += 1
            self._non_finite_told.discard(group)  # a relaunch re-sends what it had
            return
        values = message.values
        bad = count_non_finite(values.reshape(-1))
        if bad:
            self._failed_simulation(group, field)
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
            self._hold(statistics, timestep, assembled, group)
        else:
            self._hold(statistics, timestep, values, group)
            self._accepted(message)
        self.tracker.add(steps, group, timestep)

    def _hold(
        self, statistics: SliceStatistics | None, timestep: int, values: np.ndarray, sample: int
    ) -> None:
        """Hand a sample (or a whole Sobol group) to the batch of the built-in statistics."""
        if statistics is not None:
            self.batch.add(statistics, timestep, values, sample)

    def _fold_batch(self) -> None:
        """Fold the batch into the statistics, timed."""
        counts = self.progress.counts
        started = time.perf_counter_ns()
        counts["kernel_passes"] += self.batch.fold()
        counts["kernel_ns"] += time.perf_counter_ns() - started

    def _accepted(self, message: DataMessage) -> None:
        """Count an accepted message and hand it to the user stages and listeners."""
        self.progress.counts["accepted"] += 1
        assert self.processing is not None
        self.processing.accept(message)

    def _slice(self, field: str, client_rank: int, cells: int) -> SliceStatistics:
        statistics = self.slices.get((field, client_rank))
        if statistics is None:
            statistics = SliceStatistics(
                self.config, self.rank, field, client_rank, cells, self.threads
            )
            self.slices[(field, client_rank)] = statistics
            self.progress.counts["state_bytes"] += slice_bytes(self.config, cells)
            self.log.info(
                "field %s: client rank %d sends %d cells here (%.1f MiB of state)",
                field,
                client_rank,
                cells,
                slice_bytes(self.config, cells) / 2**20,
            )
        return statistics

    def _saw(self, simulation: int, now: float) -> None:
        """A sign of life from a simulation: status RUNNING on first sight, simu_info if new."""
        first = not self.tracker.started[simulation]
        self.tracker.touch(simulation, now)
        if not first or self.launcher is None:
            return
        if self.rank == 0:
            self.launcher.send(SimuStatus(simulation, SIMU_RUNNING))
        if simulation not in self.known_jobs and simulation not in self.requested_info:
            self.requested_info.add(simulation)
            self.launcher.request(TextRequest("simu_info", simulation))

    def _answer_connection(self, now: float) -> None:
        """Rank 0: reply to one connection request with the port table (REP: always reply)."""
        assert self.connection is not None
        try:
            request_frame = receive_request(self.connection)
            if request_frame is None:
                return
            request = ConnectionRequest.decode(request_frame)
            simulation = request.simu_id // self.config.group_size
            if simulation >= self.config.sampling_size:
                raise ProtocolError(
                    "simu_id_out_of_range",
                    f"connection from simulation {request.simu_id}, study has "
                    f"{self.config.sampling_size * self.config.group_size}",
                )
            if self.tracker.client_comm_size not in (0, request.client_comm_size):
                # One decomposition for the whole study, fixed by the first data (a handshake
                # alone fixes nothing: a stray one must not lock real simulations out); another
                # would change the completion rule under the simulations already counted.
                raise ProtocolError(
                    "client_comm_size_changed",
                    f"simulation {request.simu_id} has {request.client_comm_size} ranks, the "
                    f"study's data came from {self.tracker.client_comm_size}: all must share one "
                    "layout",
                )
        except ProtocolError as error:
            self.connection.send(b"")
            self.progress.reject(error.reason, str(error), now)
            return
        self.tracker.announced[simulation] = True
        self.announced_sizes[simulation] = request.client_comm_size
        reply = ConnectionReply(
            self.config.sobol,
            0,
            self.config.parameters,
            self.config.verbosity,
            tuple(self.addresses),
            self.config.port_table_width,
        )
        self.connection.send(reply.encode())
        self._saw(simulation, now)

    def _handle_launcher(self, socket: zmq.Socket, now: float) -> None:
        assert self.launcher is not None

        def reject(error: ProtocolError) -> None:
            self.progress.reject(error.reason, str(error), now)

        for message in self.launcher.receive(socket, now, reject):
            if not isinstance(message, (Job, Drop)):
                continue
            if message.simu_id >= self.config.sampling_size:  # kept, they would grow unbounded
                kind = "JOB" if isinstance(message, Job) else "DROP"
                reject(
                    ProtocolError(
                        "simu_id_out_of_range" if kind == "JOB" else "drop_out_of_range",
                        f"{kind} for simulation {message.simu_id}, the study has "
                        f"{self.config.sampling_size}",
                    )
                )
            elif len(message.job_id) > JOB_ID_MAX:
                reject(
                    ProtocolError(
                        "bad_string",
                        f"job id of simulation {message.simu_id} is {len(message.job_id)} "
                        f"characters, more than {JOB_ID_MAX}",
                    )
                )
            elif isinstance(message, Job):
                self.known_jobs.add(message.simu_id)
                self.job_parameters[message.simu_id] = message.parameters
                self.tracker.job_ids[message.simu_id] = message.job_id
            else:
                self._drop(message.simu_id, "dropped by the launcher")

    def _vote_row(self) -> np.ndarray:
        row = self.tracker.summary(self.aborted)
        convergence = self.convergence.row(self.slices, time.monotonic())
        return np.concatenate([row, convergence, [self.checkpoint_requests]])

    def _converged(self) -> None:
        """Every Sobol interval is narrower than --target-width: rank 0 tells the launcher."""
        self.log.warning("every Sobol interval is narrower than %g", self.config.target_width)
        if self.launcher is not None and self.rank == 0:
            for message in self.convergence.messages():
                self.launcher.send(message)

    def _report_intervals(self) -> None:
        """Rank 0: the widest Sobol interval of its cells, per field, over every timestep."""
        assert self.launcher is not None
        for field in self.config.field_names:
            widths = [
                statistics.worst_interval(t)
                for statistics in self.slices.values()
                if statistics.field == field
                for t in range(self.config.timesteps)
                if statistics.group_count(t) >= 4
            ]
            for index, stat in enumerate(("sobol_first", "sobol_total")):
                defined = [width[index] for width in widths if not np.isnan(width[index])]
                if defined:
                    self.launcher.send(ConfidenceInterval(stat, field, max(defined)))

    def _report_finished(self, done_everywhere: np.ndarray) -> None:
        """Rank 0 tells the launcher about simulations now finished on every rank."""
        finished = self.tracker.newly_finished(done_everywhere)
        if self.launcher is not None and self.rank == 0:
            for simulation in finished:
                self.launcher.send(SimuStatus(simulation, SIMU_FINISHED))

    def _silence(self, simulation: int) -> str:
        """Why a silent simulation is dropped, with what may explain it."""
        closed = self.progress.counts["disconnections"]
        return (
            f"silent for more than {self.config.timeout:g} s: dropped ({closed} data "
            f"connection(s) closed so far; ZeroMQ closes one whose message exceeds --max-cells "
            f"{self.config.max_cells} doubles per vector)"
        )

    def _failed_simulation(self, simulation: int, field: str) -> None:
        """A simulation sent non-finite data: it failed. Without a launcher nobody can run it
        again, so it is dropped. Else this rank tells the launcher with a TIMEOUT, which
        Melissa's launcher and melissa_nb's runner answer with a relaunch or a DROP, and
        CONFIDENCE_INTERVAL ("non_finite", field, id), which tells melissa_nb's runner why
        (Melissa's launcher ignores statistics it does not know). Once per attempt: a diverging
        simulation sends NaN at every later timestep, and only a message accepted or re-sent
        since (a relaunch) makes the next one news."""
        if self.launcher is None:
            self._drop(simulation, "sent non-finite data: dropped")
            return
        if simulation in self._non_finite_told:
            return
        self._non_finite_told.add(simulation)
        self.launcher.send(Timeout(simulation))
        self.launcher.send(ConfidenceInterval(NON_FINITE, field, float(simulation)))

    def _drop(self, simulation: int, why: str) -> None:
        if self.tracker.dropped[simulation]:
            return
        self.tracker.drop(simulation)
        self.members.discard_group(simulation)
        self.log.warning("simulation %d %s", simulation, why)

    def _periodic(self, now: float) -> None:
        """Timeouts, heartbeats, status messages and progress, each at its own pace."""
        if self.launcher is None:
            for simulation in self.tracker.silent(now, self.config.timeout):
                self._drop(simulation, self._silence(simulation))
        elif self.launcher.gone(now) and not self.aborted:
            self.log.error(
                "no HELLO from the launcher for %g s: ending the study",
                self.config.launcher_timeout,
            )
            self.aborted = True
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat
            if self.launcher is not None and self.rank == 0:
                silent = self.tracker.silent(now, self.config.timeout)
                for simulation in silent:
                    self.launcher.send(Timeout(simulation))
                if not silent:
                    self.launcher.send(Alive())
                if self.config.sobol:
                    self._report_intervals()
        if self.checkpoints.due(now):
            self.checkpoints.start(snapshot_server(self), now)
        if now >= self._next_publish:
            self._next_publish = now + PUBLISH_SECONDS
            codes = self.tracker.status()
            self.progress.publish(
                running=int(np.count_nonzero(codes == STATE_RUNNING)),
                finished=int(np.count_nonzero(codes == STATE_FINISHED)),
                dropped=int(np.count_nonzero(self.tracker.dropped)),
                slices=len(self.slices),
                member_buffer_bytes=self.members.used_bytes,
            )

    # --- the end ---------------------------------------------------------------------------------

    def _finish(self, aborted: bool, results: bool = True) -> int:
        """Write every field in turn (all ranks; not if `results` is False: nothing to write),
        then rank 0 tells the launcher STOP.

        An aborted study (launcher gone) is checkpointed first, so it can be restarted.
        """
        now = time.monotonic()
        self._periodic(now)
        for _, _ in self.waiting.take():  # frames of simulations never announced
            self.progress.reject("no_handshake", "data of a simulation that never connected", now)
        self.checkpoints.wait()  # no netCDF call may overlap the checkpoint writer's
        if aborted:
            self.checkpoints.write_now(snapshot_server(self))
        counts = self.progress.counts
        self.log.info(
            "study %s: %d messages, %d accepted, %d duplicates, %d rejected %s",
            "aborted" if aborted else "complete",
            counts["messages"],
            counts["accepted"],
            counts["duplicates"],
            counts["rejected"],
            dict(self.progress.rejections),
        )
        rejections: Counter[str] = Counter()
        for counter in self.world.allgather(self.progress.rejections):
            rejections.update(counter)
        extra = {
            "study_complete": int(not aborted),
            "simulations_dropped": int(np.count_nonzero(self.tracker.dropped)),
            "messages_duplicate": int(sum(self.world.allgather(counts["duplicates"]))),
            "messages_rejected": int(sum(rejections.values())),
            "rejected_reasons": ",".join(f"{key}={n}" for key, n in sorted(rejections.items())),
        }
        results = results and self.config.statistics
        directory = self._results_directory() if results else None
        if directory is None and results:
            aborted = True
            written = self.checkpoints.write_now(snapshot_server(self))
            self.log.error(
                "the results could not be written anywhere; %s",
                f"the checkpoint {written} holds everything: restart with -r to write them"
                if written
                else "NO checkpoint could be written either",
            )
        for field in self.config.field_names if directory is not None else ():
            slices = sorted(
                (item for item in self.slices.values() if item.field == field),
                key=lambda item: item.client_rank,
            )
            total = int(sum(self.world.allgather(sum(item.cells for item in slices))))
            path = write_field(self.world, self.config, field, slices, total, extra, directory)
            if self.rank == 0:
                self.log.info("wrote %s", path)
        self.world.barrier()
        if self.launcher is not None and self.rank == 0:
            self.launcher.send(Stop())
        assert self.processing is not None
        self.processing.finish(aborted)
        return EXIT_ABORTED if aborted else 0

    def _results_directory(self) -> Path | None:
        """Where the results go (collective): --output-dir if every rank can write there, else
        the first of the checkpoint directory, `./melissa_nb_results_<study>` and the same in
        the temporary directory that every rank can write (said in the log); None if none."""
        config = self.config
        fallback = f"melissa_nb_results_{config.study_id}"
        candidates = (
            config.output_dir,
            config.checkpoint_directory,
            Path.cwd() / fallback,
            Path(tempfile.gettempdir()) / fallback,
        )
        problems = []
        for directory in candidates:
            try:
                check_writable(directory, "results in")
                problem = None
            except ConfigurationError as error:
                problem = str(error)
            if not any(self.world.allgather(problem)):
                if problems and self.rank == 0:
                    self.log.error("%s: the results go to %s instead", problems[0], directory)
                return directory
            problems.append(problem or "another rank cannot write there")
        self.log.error("cannot write the results: %s", "; ".join(problems))
        return None

    def close(self) -> None:
        """Close every socket and remove every shared-memory block of this rank (idempotent)."""
        self.checkpoints.close()
        if hasattr(self, "tracker"):  # its received counts are views of the slice blocks
            self.tracker.release()
        for statistics in self.slices.values():
            statistics.release()
        self.slices.clear()
        if self.processing is not None:
            self.processing.release()
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.progress is not None:
            self.progress.release()
            self.progress = None
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None
        if self.data_monitor is not None:
            self.data.disable_monitor()
            self.data_monitor.close()
            self.data_monitor = None
        for socket in (self.data, self.connection):
            if socket is not None:
                socket.close()
        self.data = self.connection = None
        self.context.term()
        if self.claim is not None:  # last: the blocks are gone, nothing is left to reclaim
            self.claim.release(remove=True)
            self.claim = None


def start_rank(verbosity: int) -> tuple[World, logging.Logger]:
    """Prepare this process to be a server rank: OpenMP waits, MPI world, logger, threads."""
    # Idle OpenMP workers that spin steal the cores the other ranks and the simulations need:
    # on 2 busy cores a 100-cell FieldStatistics.update took 1.3 ms with spinning workers and
    # 38 us with passive ones (a loop of updates, timed with perf_counter).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    world = World()
    log = rank_logger(world.rank, verbosity)
    numba.set_num_threads(min(world.threads_per_rank(), numba.config.NUMBA_NUM_THREADS))
    raise_descriptor_limit(log)
    return world, log


def raise_descriptor_limit(log: logging.Logger) -> None:
    """Raise the soft limit of open files to the hard one: each simulation connection and each
    slice's state block holds a descriptor, and 1,024 (a common default) runs out first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.info("open files: limit %s (soft limit was %s)", hard, soft)


def serve(config: ServerConfig, early: EarlySignals) -> int:
    """Run this process's rank of the server; returns the process exit code.

    `early` has caught SIGTERM, SIGINT and SIGUSR1 since the process started (the CLI creates
    it first thing); the loop stops once its list of stopping signals is not empty.
    """
    world, log = start_rank(config.verbosity)
    warm_kernels(config)
    try:
        server = ServerRank(config, world, log, early.stops)
    except ConfigurationError as error:
        log.error("%s", error)
        return EXIT_BAD_OPTIONS
    if early.checkpoint_requested:  # SIGUSR1 during start-up: now that there is state
        server.checkpoints.request()
    try:
        return server.run()
    except Exception:
        if world.size == 1:
            raise
        # A failed rank cannot take part in the end vote: the others would wait forever.
        log.exception("unexpected error: aborting every rank")
        server.close()
        world.comm.Abort(EXIT_ABORTED)
        raise
    finally:
        server.close()
