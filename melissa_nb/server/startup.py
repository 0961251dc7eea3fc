"""Start-up of a server rank: process settings, kernel warm-up, the claim on the study, sockets
bound and every rank's data address gathered, and `<output>/server.json` for `status`.

Every step that can fail on one rank (study already running, port in use, directory not
writable) is collective: the failing rank still takes part in the gather, so every rank learns
of the failure and stops cleanly instead of waiting forever for the failed one.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket as socketlib
import time
from typing import Any

import numba
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from melissa_nb.auth import (
    KEY_FILE,
    Gatekeeper,
    LinkKey,
    create_key_file,
    load_or_create_key,
    serve_with,
)
from melissa_nb.errors import ConfigurationError, SharedMemoryUnavailable
from melissa_nb.kernels import Correlation, FieldStatistics, PolynomialChaos, SobolMartinez
from melissa_nb.kernels.finite import count_non_finite
from melissa_nb.server.checkpoint.restart import load_restart, restart_directory
from melissa_nb.server.claim import RankClaim, check_writable, lock_path, reclaim, stale_claims
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.launcher.control import (
    SECRET_FILE,
    Action,
    ControlEndpoint,
    Reject,
    write_secret,
)
from melissa_nb.server.live.progress import Progress
from melissa_nb.server.ranks import World
from melissa_nb.server.receive.ingest import Ingest
from melissa_nb.server.receive.slices import general_settings
from melissa_nb.server.results.output import statistic_names

DATA_LINGER_MS = 0
CONNECTION_MAX_MESSAGE = 64  # a connection request is 8 bytes
CURVE_MAX_COMMAND = 1024  # ZeroMQ applies the limit to CURVE's handshake commands too (~300)
CONNECTION_LINGER_MS = 1000
SERVER_FILE = "server.json"
MONITORED = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED  # data socket events counted
HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
"""With --auth: a peer without CURVE (ZeroMQ refuses it before the gatekeeper is asked)."""


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
        general.results(
            [name for name in statistic_names(config) if name in general.result_names()]
        )
    frame_like = sample[0].copy()
    frame_like.flags.writeable = False  # received frames are read-only views: their version
    count_non_finite(frame_like)
    if config.sobol:
        sobol = SobolMartinez(cells, config.parameters, config.confidence)
        sobol.update(sample)
        sobol.first_ci, sobol.total_ci  # noqa: B018 - compiles the finalizer
    if config.correlation:
        correlation = Correlation(cells, config.parameters, config.confidence)
        for row in sample[:1]:
            correlation.update(row.copy(), np.ones(config.parameters))
        correlation.results()
    if config.chaos:
        chaos = PolynomialChaos(cells, config.laws, config.chaos_degree)
        chaos.update(
            sample[0],
            np.array([a if law == "normal" else (a + b) / 2 for law, a, b in config.laws]),
        )


def claim_study(config: ServerConfig, world: World, log: logging.Logger) -> RankClaim:
    """Every rank locks its claim on the study (refused if a live server holds one), then
    removes the blocks that killed servers of the study left on its host.

    Collective: the removals end before any rank creates a block.
    """
    rank = world.rank
    claim, problem, stale = None, None, []
    try:
        claim = RankClaim.take(lock_path(config.output_dir, rank), f"{config.shm_prefix()}r{rank}_")
        if rank == 0:
            stale = stale_claims(config.output_dir, world.size)
        check_writable(config.checkpoint_directory, "--checkpoint-dir")
    except ConfigurationError as error:
        problem = f"rank {rank}: {error}"
    problems = [problem for problem in world.allgather(problem) if problem]
    if problems:
        for stale_claim in stale:
            stale_claim.release(remove=False)
        if claim is not None:
            claim.release(remove=True)
        raise ConfigurationError("; ".join(problems))
    assert claim is not None
    left = [item.previous for item in (claim, *stale) if item.previous]
    removed = sorted(
        {name for previous in sum(world.allgather(left), []) for name in reclaim(previous)}
    )
    for stale_claim in stale:
        stale_claim.release(remove=True)
    world.allgather(None)  # nobody creates a block before every removal is done
    if removed:
        log.warning(
            "a killed server of this study left %d shared-memory block(s) here: removed (%s)",
            len(removed),
            ", ".join(removed),
        )
    return claim


def _bind(socket: zmq.Socket, endpoint: str, option: str) -> None:
    """Bind, turning a failure (port in use, unknown address) into a message naming it."""
    try:
        socket.bind(endpoint)
    except zmq.ZMQError as error:
        socket.close()
        raise ConfigurationError(f"{option}: cannot bind {endpoint}: {error}") from None


def study_key(config: ServerConfig, world: World) -> LinkKey | None:
    """With --auth, rank 0 writes a new key file `<output>/study.key` (a restart keeps the one
    there: running simulations hold it) and every rank gets its key pair (collective;
    ConfigurationError on every rank if it cannot be written or read)."""
    if not config.auth:
        return None
    key, problem = None, None
    if world.rank == 0:
        try:
            config.output_dir.mkdir(parents=True, exist_ok=True)
            path = config.output_dir / KEY_FILE
            restart = config.restart_dir is not None
            key = load_or_create_key(path) if restart else create_key_file(path)
        except (OSError, ConfigurationError) as error:
            problem = f"--auth: cannot write the key file in --output-dir: {error}"
    key, problem = world.allgather((key, problem))[0]
    if problem:
        raise ConfigurationError(problem)
    return key


class RankSockets:
    """The sockets a rank serves: data (PULL, every rank) and its ZeroMQ monitor; connection
    requests (REP) and the control endpoint on rank 0; with --auth the gatekeeper that admits
    only CURVE clients holding the study's key. `close` is safe after a partial bind."""

    def __init__(self, context: zmq.Context) -> None:
        self.context = context
        self.gatekeeper: Gatekeeper | None = None
        self.key: LinkKey | None = None
        self.data: zmq.Socket | None = None
        self.data_monitor: zmq.Socket | None = None
        self.data_address = ""
        self.connection: zmq.Socket | None = None
        self.connection_monitor: zmq.Socket | None = None  # --auth: refused handshakes
        self.control: ControlEndpoint | None = None

    def bind(
        self,
        config: ServerConfig,
        world: World,
        control_actions: dict[str, Action],
        reject: Reject,
        log: logging.Logger,
        key: LinkKey | None,
    ) -> None:
        """Bind this rank's sockets (ConfigurationError naming the option on failure); with a
        `key` (--auth) the data and connection sockets are CURVE servers behind a gatekeeper."""
        if key is not None:
            self.key = key
            self.gatekeeper = Gatekeeper(
                self.context,
                key,
                lambda address: reject(
                    "unauthenticated",
                    f"a data or connection link from {address} without the study's key",
                    time.monotonic(),
                ),
            )
        self.data = self._bind_data(config, world.local_index)
        if world.rank == 0:
            self.connection = self._bind_connection(config)
            self.control = self._bind_control(config, control_actions, reject, log)

    def _bind_data(self, config: ServerConfig, local_index: int) -> zmq.Socket:
        data = self.context.socket(zmq.PULL)
        data.setsockopt(zmq.RCVHWM, 32)
        data.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
        data.setsockopt(zmq.LINGER, DATA_LINGER_MS)
        if self.key is not None:
            serve_with(data, self.key)
        port = config.data_port_for(local_index)
        _bind(data, f"tcp://{config.bind_address}:{port if port else '*'}", "--data_port/--bind")
        bound_port = int(data.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        self.data_address = f"tcp://{config.advertise_host}:{bound_port}"
        # Connections come and go through ZeroMQ unseen; its monitor tells of each, so status
        # can show them, and a connection ZeroMQ closes (a message above --max-cells) is counted.
        events = MONITORED | (HANDSHAKE_FAILED if self.key is not None else 0)
        self.data_monitor = data.get_monitor_socket(events)
        return data

    def _bind_connection(self, config: ServerConfig) -> zmq.Socket:
        connection = self.context.socket(zmq.REP)
        limit = CONNECTION_MAX_MESSAGE if self.key is None else CURVE_MAX_COMMAND
        connection.setsockopt(zmq.MAXMSGSIZE, limit)
        connection.setsockopt(zmq.LINGER, CONNECTION_LINGER_MS)
        if self.key is not None:
            serve_with(connection, self.key)
        endpoint = f"tcp://{config.bind_address}:{config.connection_port}"
        _bind(connection, endpoint, "--connection-port/--bind")
        if self.key is not None:
            self.connection_monitor = connection.get_monitor_socket(HANDSHAKE_FAILED)
        return connection

    def _bind_control(
        self,
        config: ServerConfig,
        actions: dict[str, Action],
        reject: Reject,
        log: logging.Logger,
    ) -> ControlEndpoint:
        try:
            config.output_dir.mkdir(parents=True, exist_ok=True)
            secret = write_secret(config.output_dir)
        except OSError as error:
            raise ConfigurationError(
                f"--output-dir: cannot write the control secret there: {error}"
            ) from None
        try:
            return ControlEndpoint(
                self.context, config.control_bind, config.control_port, actions, log, reject, secret
            )
        except zmq.ZMQError as error:
            raise ConfigurationError(
                f"--control-port/--control-bind: cannot bind "
                f"{config.control_bind}:{config.control_port}: {error}"
            ) from None

    @property
    def inputs(self) -> list[zmq.Socket]:
        """Every bound socket the loop polls."""
        sockets = [self.data, self.data_monitor, self.connection, self.connection_monitor]
        if self.gatekeeper is not None:
            sockets.append(self.gatekeeper.socket)
        if self.control is not None:
            sockets.append(self.control.socket)
        return [socket for socket in sockets if socket is not None]

    def close(self) -> None:
        """Close every socket (idempotent)."""
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.data_monitor is not None:
            assert self.data is not None
            self.data.disable_monitor()
            self.data_monitor.close()
            self.data_monitor = None
        if self.connection_monitor is not None:
            assert self.connection is not None
            self.connection.disable_monitor()
            self.connection_monitor.close()
            self.connection_monitor = None
        for socket in (self.data, self.connection):
            if socket is not None:
                socket.close()
        self.data = self.connection = None
        if self.gatekeeper is not None:
            self.gatekeeper.close()
            self.gatekeeper = None

    def read_monitors(self, events: dict[Any, int], progress: Progress, now: float) -> None:
        """Count what the monitors saw: data peers connected now, disconnections so far, and
        with --auth the peers without CURVE that ZeroMQ refused before the gatekeeper."""
        counts = progress.counts
        refused = ("unauthenticated", "a link without CURVE (--auth) refused")
        if self.data_monitor in events:
            while self.data_monitor.poll(0):
                event = recv_monitor_message(self.data_monitor)["event"]
                if event == zmq.EVENT_ACCEPTED:
                    counts["connections"] += 1
                elif event == zmq.EVENT_DISCONNECTED:
                    counts["connections"] -= 1
                    counts["disconnections"] += 1
                elif event & HANDSHAKE_FAILED:
                    progress.reject(*refused, now)
        if self.connection_monitor is not None and self.connection_monitor in events:
            while self.connection_monitor.poll(0):  # only refused handshakes are monitored
                recv_monitor_message(self.connection_monitor)
                progress.reject(*refused, now)


def write_server_file(
    config: ServerConfig, world: World, addresses: list[str], control_address: str | None
) -> None:
    """Rank 0 writes `<output>/server.json`: what `melissa-nb status` needs to find us."""
    hosts = world.allgather(socketlib.gethostname())
    pids = world.allgather(os.getpid())
    if world.rank != 0:
        return
    config.output_dir.mkdir(parents=True, exist_ok=True)
    description: dict[str, Any] = {
        "study_id": config.study_id,
        "ranks": world.size,
        "hosts": hosts,
        "pids": pids,
        "connection_address": f"tcp://{config.advertise_host}:{config.connection_port}",
        "data_addresses": addresses,
        "control_address": control_address,
        "control_secret_file": str(config.output_dir / SECRET_FILE),
        "key_file": str(config.output_dir / KEY_FILE) if config.auth else None,
        "shm_prefix": config.shm_prefix(),
        "progress_blocks": [f"{config.shm_prefix()}r{rank}_progress" for rank in range(world.size)],
        "fields": list(config.field_names),
        "timesteps": config.timesteps,
        "sampling_size": config.sampling_size,
        "group_size": config.group_size,  # > 1: the server counts Sobol groups, not simulations
        "operations": list(config.operations),
        "started_at": time.time(),
    }
    temporary = config.output_dir / (SERVER_FILE + ".tmp")
    temporary.write_text(json.dumps(description, indent=2))
    os.replace(temporary, config.output_dir / SERVER_FILE)


def bind_rank(
    config: ServerConfig,
    world: World,
    sockets: RankSockets,
    actions: dict[str, Action],
    log: logging.Logger,
) -> tuple[Progress, list[str]]:
    """Create the rank's progress block and bind its sockets; every rank's data address.

    Collective: a rank that fails still takes part in the gather, and every rank raises.
    """
    key = study_key(config, world)  # first: every rank reaches it
    problem, progress = None, None
    try:
        try:
            progress = Progress(config.study_id, world.rank, log)
        except SharedMemoryUnavailable as error:
            raise ConfigurationError(str(error)) from None
        progress.counts["open_files_limit"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        sockets.bind(config, world, actions, progress.reject, log, key)
    except ConfigurationError as error:
        problem = f"rank {world.rank}: {error}"
    outcomes = world.allgather((problem, sockets.data_address))
    problems = [problem for problem, _ in outcomes if problem]
    if problems:
        if progress is not None:
            progress.release()
        raise ConfigurationError("; ".join(problems))
    assert progress is not None
    return progress, [address for _, address in outcomes]


def restore_collectively(
    ingest: Ingest, world: World, config: ServerConfig, log: logging.Logger, now: float
) -> None:
    """Every rank loads `-r DIR` into its fresh state; a refusal on any rank stops every rank
    with its message."""
    problem = None
    try:
        directory = restart_directory(config)
        restored = load_restart(directory, config, world.rank, world.size, log)
        ingest.restore(restored, now)
        log.warning(
            "restarted from %s (written by %d rank(s)): %d slices, %d simulations finished or "
            "dropped here",
            directory,
            restored.old_ranks,
            len(restored.slices),
            int(np.count_nonzero(ingest.tracker.finished() | ingest.tracker.dropped)),
        )
    except (ConfigurationError, SharedMemoryUnavailable) as error:
        problem = f"rank {world.rank}: {error}"
    problems = [item for item in world.allgather(problem) if item]
    if problems:
        raise ConfigurationError("; ".join(problems))
