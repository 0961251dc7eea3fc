"""The embeddable server: melissa4py's `MelissaServer` API on top of the real server loop.

    from melissa_nb import MelissaServer, SimulationData

    with MelissaServer(sampling_size=10, timesteps=5, field_names=("heat1",)) as server:
        while True:
            status = server.run(timeout=100)           # milliseconds, as melissa4py
            if isinstance(status, SimulationData):
                use(status.data, status.parameters, status.timestep)
            elif status is ServerStatus.FINISHED:
                break

The server is the same `ServerRank` that `melissa-nb server` runs (protocol, launcher, fault
tolerance, built-in statistics, end vote, results), driven in the calling thread one step at a
time: `run()` turns the loop until a message is accepted or the timeout passes. Every rank of an
MPI job runs the same script (`mpiexec -n M python script.py`) and sees the messages its rank
receives. docs/embedding.md is the reference.
"""

from __future__ import annotations

import enum
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.forward_protocol import RESULT
from melissa_nb.protocol import DataMessage, sobol_member
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.loop import POLL_MS, ServerRank
from melissa_nb.server.options import parse_arguments
from melissa_nb.server.pipeline.stages import Stage, read_only_view
from melissa_nb.server.startup import start_rank, warm_kernels

MELISSA4PY_NAMES = {
    "nb_time_steps": "timesteps",
    "nb_parameters": "parameters",
    "fields": "field_names",
    "sample_size": "sampling_size",
    "text_pull_port": "txt_pull_port",
    "text_push_port": "txt_push_port",
    "text_request_port": "txt_req_port",
    "launcher_node_name": "launcher_name",
    "data_puller_port": "data_port",
    "verbose_level": "verbosity",
}
"""melissa4py's keyword names -> ServerConfig's."""

INBOX_FRAMES = 32
"""Frames one step of the loop takes at most: the inbox never holds more (ZeroMQ's queue per
sender, RCVHWM, is 32 too). Measured with 100-cell messages and a sender thread in the same
process: run() hands over 9,500 messages/s taking 1 frame per step, 23,500/s taking 32."""

JOB_WAIT = 5.0
"""Seconds a message waits for its simulation's JOB (parameters) before it is handed over with
`parameters=None` (with a launcher only: without one there are no parameters)."""


class ServerStatus(enum.Enum):
    """What `MelissaServer.run` returns when it has no data to hand over."""

    TIMEOUT = "timeout"  # nothing was accepted within the timeout
    FINISHED = "finished"  # the study ended and its results are written; stop() to close


@dataclass(frozen=True)
class SimulationData:
    """One accepted message, with melissa4py's attribute names.

    `data` is a read-only view of the received frame (no copy): `(data_size,)` for one vector,
    `(p + 2, data_size)` for a whole Sobol group. `parameters` are the values of the launcher's
    JOB for this sample (a Sobol group's JOB for its members), None without one.
    """

    timestep: int
    simulation_id: int
    client_rank: int
    data_size: int
    field_name: str
    data: np.ndarray
    parameters: np.ndarray | None


def config_from_settings(
    positional: tuple[Any, ...], settings: Mapping[str, Any], world_size: int
) -> ServerConfig:
    """A ServerConfig from melissa4py's arguments (`nb_time_steps, nb_proc_server,
    nb_parameters` and its keyword names) and/or ServerConfig's own keyword names."""
    if len(positional) > 3:
        raise ConfigurationError(
            f"MelissaServer takes at most 3 positional arguments "
            f"(nb_time_steps, nb_proc_server, nb_parameters), got {len(positional)}"
        )
    named = dict(
        zip(("nb_time_steps", "nb_proc_server", "nb_parameters"), positional, strict=False)
    )
    for name, value in settings.items():
        if name in named:
            raise ConfigurationError(f"MelissaServer: {name} given twice")
        named[name] = value
    ranks = named.pop("nb_proc_server", None)
    if ranks is not None and ranks != world_size:
        raise ConfigurationError(
            f"nb_proc_server={ranks} but the MPI world has {world_size} rank(s): "
            f"start the script with mpiexec -n {ranks}"
        )
    fields = set(ServerConfig.__dataclass_fields__)
    values: dict[str, Any] = {}
    for name, value in named.items():
        target = MELISSA4PY_NAMES.get(name, name)
        if target not in fields:
            raise ConfigurationError(f"MelissaServer: unknown setting {name!r}")
        if target in values:
            raise ConfigurationError(f"MelissaServer: {name!r} repeats {target!r}")
        values[target] = tuple(value) if isinstance(value, list) else value
    try:
        return ServerConfig(**values)
    except TypeError as error:  # a required setting is missing
        raise ConfigurationError(f"MelissaServer: {error}") from None


class MelissaServer:
    """An embedded server rank. Build it from a `ServerConfig`, or from settings:

    - ServerConfig's names: `MelissaServer(sampling_size=10, timesteps=5, field_names=("u",))`;
    - melissa4py's: `MelissaServer(timesteps, nb_proc_server, nb_parameters, fields=["u"],
      text_pull_port=..., launcher_node_name=..., sample_size=10)` (melissa4py had no sample
      size; melissa_nb needs it to know when the study ends).

    `statistics=False` switches the built-in statistics off (no state, no result files).
    """

    def __init__(
        self, *positional: Any, config: ServerConfig | None = None, **settings: Any
    ) -> None:
        verbosity = settings.get("verbosity", settings.get("verbose_level", 1))
        world, log = start_rank(config.verbosity if config is not None else int(verbosity))
        if config is None:
            config = config_from_settings(positional, settings, world.size)
        elif positional or settings:
            raise ConfigurationError("MelissaServer: give either config or settings, not both")
        self.config = config
        self.log = log
        self._inbox: deque[SimulationData] = deque()
        self._waiting: deque[tuple[float, DataMessage, int]] = deque()  # no JOB yet
        self._exit_code: int | None = None
        warm_kernels(config)
        self._rank = ServerRank(config, world, log, signals=[])
        self._rank.drain = INBOX_FRAMES
        self._processing = self._rank.processing
        assert self._processing is not None
        self._processing.listen(self._receive)
        # The end of stream goes to a consumer once the user has had every message (and
        # could forward its results), not when the loop ends with messages in the inbox.
        self._processing.hold = True
        self._rank.begin()

    @classmethod
    def from_arguments(
        cls, arguments: Sequence[str] | None = None, **settings: Any
    ) -> MelissaServer:
        """A server from `melissa-nb server`'s options (default: this script's arguments).

        A user script started as `mpiexec -n 2 python my_server.py -s 10 -t 5 -f u -n host
        ...` takes exactly the command line a launcher gives `melissa-nb server`; `settings`
        (ServerConfig names, e.g. `statistics=False`) override it.
        """
        argv = sys.argv[1:] if arguments is None else list(arguments)
        config = parse_arguments(argv)
        return cls(config=replace(config, **settings) if settings else config)

    # --- melissa4py's API ------------------------------------------------------------------------

    def run(self, timeout: float = 100) -> SimulationData | ServerStatus:
        """The next accepted message, waiting up to `timeout` milliseconds.

        Returns ServerStatus.TIMEOUT when nothing arrived in time, ServerStatus.FINISHED once
        the study has ended (every message accepted before was handed over first).
        """
        deadline = time.monotonic() + timeout / 1000
        stepped = False
        while True:
            now = time.monotonic()
            message = self._next(now)
            if message is not None:
                return message
            if self._exit_code is not None:
                self._processing.release_finish()
                return ServerStatus.FINISHED
            if timeout < 0:  # melissa4py: a negative timeout waits for ever
                wait = POLL_MS
            elif stepped and now >= deadline:
                return ServerStatus.TIMEOUT
            else:
                wait = min(POLL_MS, max(0, math.ceil((deadline - now) * 1000)))
            if self._waiting:  # messages waiting for their JOB: look again soon
                wait = min(wait, 10)
            stepped = True
            self._exit_code = self._rank.step(wait)

    def stop(self, timeout: float = 10.0) -> int:
        """End the study and close the server; returns the exit code `melissa-nb server` would.

        If every simulation is complete on this rank, waits (up to `timeout` seconds) for the
        end vote to confirm the study complete; otherwise, or after the timeout, ends it now
        with what arrived (results written, `study_complete = 0`), like a stop request.
        Messages accepted meanwhile still reach the stages and the statistics, not `run()`.
        """
        try:
            deadline = time.monotonic() + timeout
            while self._exit_code is None:
                if time.monotonic() >= deadline or not self._rank.ingest.tracker.all_done():
                    self._rank.request_stop()
                self._exit_code = self._rank.step(POLL_MS)
            self._processing.release_finish()
            return self._exit_code
        finally:
            self.close()

    # --- melissa_nb's additions ------------------------------------------------------------------

    def add_stage(
        self,
        function: Callable[..., object],
        *,
        name: str | None = None,
        state: Mapping[str, Any] | None = None,
        fields: tuple[str, ...] | list[str] | None = None,
    ) -> Stage:
        """Register a processing stage (server/pipeline/stages.py, docs/embedding.md)."""
        return self._processing.add_stage(function, name=name, state=state, fields=fields)

    def stage_state(self, stage: Stage | str) -> dict[tuple[str, int], dict[str, np.ndarray]]:
        """A stage's state arrays on this rank, per (field, client rank) slice seen so far."""
        name = stage if isinstance(stage, str) else stage.name
        return {
            (block.metadata["field"], block.metadata["client_rank"]): block.arrays
            for block in self._processing.state_blocks()
            if block.metadata["stage"] == name
        }

    def forward(
        self,
        name: str,
        values: np.ndarray,
        simulation_id: int = -1,
        client_rank: int = -1,
        timestep: int = -1,
    ) -> bool:
        """Push a result to the consumer (`forward_to`); False when there is none or it broke.

        `values` is copied: it may change as soon as this returns.
        """
        forwarder = self._rank.forwarder
        if forwarder is None:
            return False
        return forwarder.send(RESULT, name, values, simulation_id, client_rank, timestep, copy=True)

    @property
    def rank(self) -> int:
        """This process's rank among the server ranks."""
        return self._rank.rank

    @property
    def data_address(self) -> str:
        """This rank's data socket, as the port table advertises it to simulations."""
        return self._rank.data_address

    @property
    def connection_address(self) -> str:
        """Where simulations send their connection request (rank 0's REP socket, port 2003 by
        default); the server takes data only from simulations whose request it answered."""
        return f"tcp://{self.config.advertise_host}:{self.config.connection_port}"

    @property
    def control_address(self) -> str | None:
        """Rank 0's control endpoint (`status`, `checkpoint`, `stop`), None on other ranks."""
        control = self._rank.sockets.control
        return None if control is None else control.address

    @property
    def counts(self) -> dict[str, int]:
        """This rank's counters (messages, accepted, duplicates, rejected, bytes, ...)."""
        assert self._rank.progress is not None
        return dict(self._rank.progress.counts)

    def close(self) -> None:
        """Close sockets and remove shared memory, without results if the study is not over."""
        self._inbox.clear()
        self._waiting.clear()
        self._rank.close()

    def __enter__(self) -> MelissaServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None and self._exit_code is None:
            self.stop()
        else:
            self.close()

    # --- the inbox -------------------------------------------------------------------------------

    def _sample(self, message: DataMessage) -> int:
        """The id the launcher's JOB names: the simulation, or its Sobol group."""
        if self.config.sobol and message.nb_vectors == 1:
            return sobol_member(message.simu_id, self.config.parameters)[0]
        return message.simu_id

    def _receive(self, message: DataMessage) -> None:
        sample = self._sample(message)
        if (
            self.config.launcher_name is not None
            and sample not in self._rank.ingest.tracker.job_parameters
        ):
            self._waiting.append((time.monotonic(), message, sample))
        else:
            self._inbox.append(self._data(message, sample))

    def _data(self, message: DataMessage, sample: int) -> SimulationData:
        parameters = self._rank.ingest.tracker.job_parameters.get(sample)
        return SimulationData(
            timestep=message.time_stamp,
            simulation_id=message.simu_id,
            client_rank=message.client_rank,
            data_size=message.vect_size,
            field_name=message.field_name,
            data=read_only_view(message),
            parameters=None if parameters is None else np.array(parameters),
        )

    def _next(self, now: float) -> SimulationData | None:
        """The next message to hand over: those whose JOB arrived (or waited long enough)."""
        for _ in range(len(self._waiting)):
            since, message, sample = self._waiting.popleft()
            if sample in self._rank.ingest.tracker.job_parameters or now - since >= JOB_WAIT:
                if sample not in self._rank.ingest.tracker.job_parameters:
                    self.log.warning(
                        "no JOB for sample %d after %g s: its data has no parameters",
                        sample,
                        JOB_WAIT,
                    )
                self._inbox.append(self._data(message, sample))
            else:
                self._waiting.append((since, message, sample))
        return self._inbox.popleft() if self._inbox else None
