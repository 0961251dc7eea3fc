"""The loop of one server rank: poll the sockets, hand data to `Ingest`, talk to the launcher,
do the periodic work, take part in the end vote, and finish, until the study ends.

Start (`startup`): MPI world, Numba threads, kernel warm-up, the claim on the study, sockets bound,
data addresses gathered, rank 0 writes `<output>/server.json`. Loop (`ServerRank.step`): poll
every socket with a timeout; drain data frames into `Ingest`, answer connection requests (rank
0), handle launcher messages; regularly publish progress, send heartbeats, time out silent
simulations and take part in the non-blocking end vote. End (`_finish`): every rank writes its
slices of every field in turn, then rank 0 sends STOP. SIGTERM and SIGINT end the loop early: a
checkpoint is written, blocks are removed, no results are written.
"""

from __future__ import annotations

import logging
import socket as socketlib
import time
from typing import Any

import numba
import numpy as np
import zmq

from melissa_nb.errors import ConfigurationError, ProtocolError
from melissa_nb.protocol import (
    NON_FINITE,
    SIMU_FINISHED,
    SIMU_RUNNING,
    Alive,
    ConfidenceInterval,
    ConnectionReply,
    ConnectionRequest,
    Drop,
    Job,
    Server,
    SimuStatus,
    Stop,
    TextRequest,
    Timeout,
)
from melissa_nb.server.checkpoint.snapshot import snapshot_rank
from melissa_nb.server.checkpoint.writer import Checkpointer
from melissa_nb.server.claim import RankClaim
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.launcher.link import LauncherLink
from melissa_nb.server.launcher.requests import receive_request
from melissa_nb.server.live.progress import Progress
from melissa_nb.server.pipeline.forward import Forwarder, connect_forwarder
from melissa_nb.server.pipeline.stages import Processing
from melissa_nb.server.ranks import EndVote, World
from melissa_nb.server.receive.ingest import Ingest
from melissa_nb.server.receive.tracking import STATE_FINISHED, STATE_RUNNING, Vote, summary_width
from melissa_nb.server.results.convergence import Convergence, interval_messages, local_widths
from melissa_nb.server.results.final import end_attributes, write_results
from melissa_nb.server.results.status import progress_report
from melissa_nb.server.signals import EarlySignals
from melissa_nb.server.startup import (
    RankSockets,
    bind_rank,
    claim_study,
    restore_collectively,
    start_rank,
    warm_kernels,
    write_server_file,
)

POLL_MS = 100  # every wait of the loop is at most this long: signals and votes stay responsive
DRAIN = 256  # data frames handled per poll before the other sockets get a turn
VOTE_SECONDS = 0.2
PUBLISH_SECONDS = 0.5
EXIT_ABORTED = 1
EXIT_BAD_OPTIONS = 2


class ServerRank:
    """One rank of the server: its sockets, its state (`ingest`) and the loop that feeds them."""

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
        self.sockets = RankSockets(self.context)
        self.progress: Progress | None = None
        self.ingest: Ingest | None = None
        self.launcher: LauncherLink | None = None
        self.forwarder: Forwarder | None = None
        self.processing: Processing | None = None
        self.drain = DRAIN  # an embedded server takes fewer: its inbox holds what it takes
        self.claim: RankClaim | None = None
        self.checkpoints = Checkpointer(config, self.rank, log, now)
        try:
            self._start(now)
        except BaseException:
            self.close()
            raise

    def _start(self, now: float) -> None:
        config, world, log = self.config, self.world, self.log
        self.claim = claim_study(config, world, log)
        actions = {
            "status": lambda: progress_report(config.output_dir),
            "stop": self.request_stop,
            "checkpoint": self.request_checkpoint,
        }
        self.progress, self.addresses = bind_rank(config, world, self.sockets, actions, log)
        self.processing = Processing(config, self.rank, self.progress.counts, log)
        self.ingest = Ingest(
            config,
            self.rank,
            self.threads,
            self.progress,
            self.processing,
            log,
            self._first_seen,
            self._sent_non_finite,
            self._ask_job,
        )
        self.requested_info: set[int] = set()
        if config.forward_to is not None:
            self.forwarder = connect_forwarder(
                self.context, config, world, self.progress.counts, self.processing, log
            )
        self.launcher = (
            LauncherLink(self.context, config, now, log) if config.launcher_name else None
        )
        self.poller = zmq.Poller()
        for socket in self.sockets.inputs + list(self.launcher.sockets if self.launcher else ()):
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
            restore_collectively(self.ingest, world, config, log, now)
        control = self.sockets.control
        write_server_file(config, world, self.addresses, control and control.address)

    @property
    def data_address(self) -> str:
        """Where this rank's data socket is reached (advertised host, bound port)."""
        return self.sockets.data_address

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

    # --- the loop ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until the study ends (0), the launcher is gone (1) or a signal arrives."""
        self.begin()
        while not self.signals:
            code = self.step(POLL_MS)
            if code is not None:
                return code
        written = self.checkpoints.write_now(snapshot_rank(self.ingest, self.world.size))
        self.log.warning(
            "stopped by signal %d: %s, no results",
            self.signals[0],
            f"checkpoint written to {written}" if written else "NO checkpoint could be written",
        )
        return 128 + self.signals[0]

    def begin(self) -> None:
        """Announce this rank to the launcher and say it is ready (once, before `step`)."""
        if self.launcher is not None:
            # Melissa's SERVER names the node; --advertise (an interface's address) overrides it.
            node = self.config.advertise_host if self.config.advertise else socketlib.gethostname()
            self.launcher.send(Server(self.rank, node))
            if self.rank == 0:
                self.launcher.request(TextRequest("options"))
        control = self.sockets.control
        self.log.info(
            "ready: data %s%s",
            self.data_address,
            f", connections on port {self.config.connection_port}, control {control.address}"
            if control is not None
            else "",
        )

    def step(self, timeout_ms: int) -> int | None:
        """One turn of the loop: wait up to `timeout_ms` for input and handle it, then the
        periodic work and the end vote. Returns the exit code once the study ended."""
        events = dict(self.poller.poll(timeout_ms))
        now = time.monotonic()
        sockets = self.sockets
        if sockets.gatekeeper is not None and sockets.gatekeeper.socket in events:
            sockets.gatekeeper.answer()  # before data: a waiting handshake holds a client back
        if sockets.data in events:
            self.ingest.drain(sockets.data, self.drain, now)
        sockets.read_monitors(events, self.progress, now)
        if sockets.connection is not None and sockets.connection in events:
            self._answer_connection(now)
        if sockets.control is not None and sockets.control.socket in events:
            sockets.control.answer()
        if self.launcher is not None:
            for socket in self.launcher.sockets:
                if socket in events:
                    self._handle_launcher(socket, now)
            self.launcher.service(now)
        self._periodic(now)
        rows = self.vote.poll(self._vote_row, now)
        if rows is None:
            return None
        vote = Vote.count(
            rows[:, : self.summary_width], len(self.config.field_names), self.config.sampling_size
        )
        self.ingest.vote_counted(vote, now)
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

    def _answer_connection(self, now: float) -> None:
        """Rank 0: reply to one connection request with the port table (REP: always reply)."""
        connection = self.sockets.connection
        try:
            request_frame = receive_request(connection)
            if request_frame is None:
                return
            self.ingest.announce(ConnectionRequest.decode(request_frame), now)
        except ProtocolError as error:
            connection.send(b"")
            self.progress.reject(error.reason, str(error), now)
            return
        reply = ConnectionReply(
            self.config.sobol,
            0,
            self.config.parameters,
            self.config.verbosity,
            tuple(self.addresses),
            self.config.port_table_width,
        )
        connection.send(reply.encode())

    # --- the launcher -----------------------------------------------------------------------------

    def _first_seen(self, simulation: int) -> None:
        """A simulation's first sign of life here: status RUNNING (rank 0), simu_info if its
        JOB is not known."""
        if self.launcher is None:
            return
        if self.rank == 0:
            self.launcher.send(SimuStatus(simulation, SIMU_RUNNING))
        self._ask_job(simulation)

    def _ask_job(self, simulation: int) -> None:
        """simu_info for a simulation whose JOB this rank lacks (once)."""
        known = simulation in self.ingest.tracker.job_ids
        if self.launcher is not None and not known and simulation not in self.requested_info:
            self.requested_info.add(simulation)
            self.launcher.request(TextRequest("simu_info", simulation))

    def _handle_launcher(self, socket: zmq.Socket, now: float) -> None:
        assert self.launcher is not None

        def reject(error: ProtocolError) -> None:
            self.progress.reject(error.reason, str(error), now)

        for message in self.launcher.receive(socket, now, reject):
            if isinstance(message, Job):
                self.ingest.tracker.job_parameters[message.simu_id] = message.parameters
                self.ingest.tracker.job_ids[message.simu_id] = message.job_id
            elif isinstance(message, Drop):
                self.ingest.drop(message.simu_id, "dropped by the launcher")

    def _vote_row(self) -> np.ndarray:
        row = self.ingest.tracker.summary(self.aborted)
        convergence = self.convergence.row(self.ingest.slices, time.monotonic())
        return np.concatenate([row, convergence, [self.checkpoint_requests]])

    def _converged(self) -> None:
        """Every Sobol interval is narrower than --target-width: rank 0 tells the launcher."""
        self.log.warning("every Sobol interval is narrower than %g", self.config.target_width)
        if self.launcher is not None and self.rank == 0:
            for message in self.convergence.messages():
                self.launcher.send(message)

    def _report_finished(self, done_everywhere: np.ndarray) -> None:
        """Rank 0 tells the launcher about simulations now finished on every rank."""
        finished = self.ingest.tracker.newly_finished(done_everywhere)
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

    def _sent_non_finite(self, simulation: int, field: str) -> None:
        """A simulation sent non-finite data: it failed. Without a launcher nobody can run it
        again, so it is dropped. Else this rank tells the launcher with a TIMEOUT, which
        Melissa's launcher and melissa_nb's runner answer with a relaunch or a DROP, and
        CONFIDENCE_INTERVAL ("non_finite", field, id), which tells melissa_nb's runner why
        (Melissa's launcher ignores statistics it does not know). Once per attempt: a diverging
        simulation sends NaN at every later timestep, and only a message accepted or re-sent
        since (a relaunch) makes the next one news (`Ingest` calls this once per attempt)."""
        if self.launcher is None:
            self.ingest.drop(simulation, "sent non-finite data: dropped")
            return
        self.launcher.send(Timeout(simulation))
        self.launcher.send(ConfidenceInterval(NON_FINITE, field, float(simulation)))

    def _periodic(self, now: float) -> None:
        """Timeouts, heartbeats, status messages and progress, each at its own pace."""
        if self.launcher is None:
            for simulation in self.ingest.tracker.silent(now, self.config.timeout):
                self.ingest.drop(simulation, self._silence(simulation))
        elif self.launcher.gone(now) and not self.aborted:
            self.log.error(
                "no HELLO from the launcher for %g s: ending the study",
                self.config.launcher_timeout,
            )
            self.aborted = True
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.config.heartbeat
            if self.launcher is not None and self.rank == 0:
                silent = self.ingest.tracker.silent(now, self.config.timeout)
                for simulation in silent:
                    self.launcher.send(Timeout(simulation))
                if not silent:
                    self.launcher.send(Alive())
                if self.config.sobol:
                    widths = local_widths(
                        self.ingest.slices, self.config.field_names, self.config.timesteps
                    )
                    for message in interval_messages(self.config.field_names, widths):
                        self.launcher.send(message)
        if self.checkpoints.due(now):
            self.checkpoints.start(snapshot_rank(self.ingest, self.world.size), now)
        if now >= self._next_publish:
            self._next_publish = now + PUBLISH_SECONDS
            codes = self.ingest.tracker.status()
            self.progress.publish(
                running=int(np.count_nonzero(codes == STATE_RUNNING)),
                finished=int(np.count_nonzero(codes == STATE_FINISHED)),
                dropped=int(np.count_nonzero(self.ingest.tracker.dropped)),
                slices=len(self.ingest.slices),
                member_buffer_bytes=self.ingest.members.used_bytes,
            )

    # --- the end ----------------------------------------------------------------------------------

    def _finish(self, aborted: bool, results: bool = True) -> int:
        """Write every field in turn (all ranks; not if `results` is False: nothing to write),
        then rank 0 tells the launcher STOP.

        An aborted study (launcher gone) is checkpointed first, so it can be restarted.
        """
        now = time.monotonic()
        self._periodic(now)
        self.ingest.refuse_waiting(now)
        self.checkpoints.wait()  # no netCDF call may overlap the checkpoint writer's
        contradiction = self.ingest.restored_layout.contradiction
        foreign = [detail for detail in self.world.allgather(contradiction) if detail]
        if foreign:
            aborted = True  # the state holds another study's data: never a complete result
            self.log.error(
                "the checkpoint this server restarted from does not fit the study's data (%s): "
                "results are written as incomplete (study_complete = 0)",
                foreign[0],
            )
        elif aborted:
            self.checkpoints.write_now(snapshot_rank(self.ingest, self.world.size))
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
        dropped = int(np.count_nonzero(self.ingest.tracker.dropped))
        extra = end_attributes(self.world, counts, self.progress.rejections, dropped, aborted)
        if results and self.config.statistics:
            directory = write_results(
                self.world, self.config, self.ingest.slices.values(), extra, self.log
            )
            if directory is None:
                aborted = True
                written = self.checkpoints.write_now(snapshot_rank(self.ingest, self.world.size))
                self.log.error(
                    "the results could not be written anywhere; %s",
                    f"the checkpoint {written} holds everything: restart with -r to write them"
                    if written
                    else "NO checkpoint could be written either",
                )
        self.world.barrier()
        if self.launcher is not None and self.rank == 0:
            self.launcher.send(Stop())
        assert self.processing is not None
        self.processing.finish(aborted)
        return EXIT_ABORTED if aborted else 0

    def close(self) -> None:
        """Close every socket and remove every shared-memory block of this rank (idempotent)."""
        self.checkpoints.close()
        if self.ingest is not None:
            self.ingest.release()
        if self.processing is not None:
            self.processing.release()
        if self.forwarder is not None:
            self.forwarder.close()
            self.forwarder = None
        if self.progress is not None:
            self.progress.release()
            self.progress = None
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None
        self.sockets.close()
        self.context.term()
        if self.claim is not None:  # last: the blocks are gone, nothing is left to reclaim
            self.claim.release(remove=True)
            self.claim = None


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
