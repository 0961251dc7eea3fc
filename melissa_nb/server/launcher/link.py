"""The server's sockets to the launcher: SUB (launcher PUB), PUSH (launcher PULL), REQ (REP).

Nothing here blocks the receive loop: sends use NOBLOCK (a message that cannot be queued is
counted, never waited for, and logged at most once per `LOG_INTERVAL` with the count since);
requests are queued and sent one at a time on a REQ socket in relaxed/correlated mode, whose
reply is read when the loop's poller says it is there. A request unanswered for
`REQUEST_TIMEOUT` seconds is abandoned (relaxed REQ may send the next).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import zmq

from melissa_nb.errors import ProtocolError
from melissa_nb.protocol import (
    Drop,
    Hello,
    Job,
    LauncherMessage,
    Options,
    TextRequest,
    decode_launcher_message,
)
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.live.progress import LogThrottle

REQUEST_TIMEOUT = 100.0  # seconds, as Melissa 0.6's REQ receive timeout
LINGER_MS = 1000
LAUNCHER_MAX_MESSAGE = 1 << 20  # launcher messages are short texts and a few parameters
JOB_ID_MAX = 256  # characters of a JOB's or DROP's job id (a scheduler's ids are far shorter)


class LauncherLink:
    """Connected sockets to one launcher and the bookkeeping of its messages."""

    def __init__(
        self, context: zmq.Context, config: ServerConfig, now: float, log: logging.Logger
    ) -> None:
        host = config.launcher_name
        self.config = config
        self.log = log
        self.subscriber = context.socket(zmq.SUB)
        self.subscriber.setsockopt(zmq.SUBSCRIBE, b"")
        self.subscriber.setsockopt(zmq.MAXMSGSIZE, LAUNCHER_MAX_MESSAGE)
        self.subscriber.setsockopt(zmq.LINGER, 0)
        self.subscriber.connect(f"tcp://{host}:{config.txt_pull_port}")
        self.pusher = context.socket(zmq.PUSH)
        self.pusher.setsockopt(zmq.LINGER, LINGER_MS)
        self.pusher.connect(f"tcp://{host}:{config.txt_push_port}")
        self.requester = context.socket(zmq.REQ)
        self.requester.setsockopt(zmq.REQ_RELAXED, 1)
        self.requester.setsockopt(zmq.REQ_CORRELATE, 1)
        self.requester.setsockopt(zmq.MAXMSGSIZE, LAUNCHER_MAX_MESSAGE)
        self.requester.setsockopt(zmq.LINGER, 0)
        self.requester.connect(f"tcp://{host}:{config.txt_req_port}")
        self.last_hello = now
        self.unsent = 0
        self._unsent_log = LogThrottle()
        self.options: str | None = None
        self._requests: deque[TextRequest] = deque()
        self._pending: tuple[TextRequest, float] | None = None

    @property
    def sockets(self) -> tuple[zmq.Socket, zmq.Socket]:
        """The sockets the receive loop polls for input."""
        return self.subscriber, self.requester

    def send(self, message: LauncherMessage) -> None:
        """Queue a message to the launcher without waiting."""
        try:
            self.pusher.send(message.encode(), zmq.NOBLOCK)
        except zmq.Again:
            self.unsent += 1
            unlogged = self._unsent_log.count("queue_full", time.monotonic())
            if unlogged:
                self.log.warning(
                    "launcher queue full: %d message(s) not sent (total %d; latest: %s)",
                    unlogged,
                    self.unsent,
                    type(message).__name__,
                )

    def request(self, request: TextRequest) -> None:
        """Queue a text request (`options`, `simu_info <id>`); replies arrive via `receive`."""
        self._requests.append(request)

    def service(self, now: float) -> None:
        """Send the next queued request when none is outstanding; abandon a stale one."""
        if self._pending is not None and now - self._pending[1] > REQUEST_TIMEOUT:
            self.log.warning(
                "launcher did not answer %r in %g s", self._pending[0], REQUEST_TIMEOUT
            )
            self._pending = None
        if self._pending is None and self._requests:
            request = self._requests.popleft()
            try:
                self.requester.send(request.encode(), zmq.NOBLOCK)
            except zmq.Again:
                self._requests.appendleft(request)
                return
            self._pending = (request, now)

    def receive(
        self, socket: zmq.Socket, now: float, reject: Callable[[ProtocolError], None]
    ) -> list[LauncherMessage]:
        """Decode every message waiting on `socket`; malformed ones go to `reject`."""
        messages: list[LauncherMessage] = []
        while self._pending is not None or socket is not self.requester:
            try:
                frame = socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            if socket is self.requester:
                self._pending = None  # a REQ socket holds one reply: receiving again is an error
            try:
                message = decode_launcher_message(
                    frame, self.config.job_widths if self.config.parameters else None
                )
            except ProtocolError as error:
                reject(error)
                continue
            if isinstance(message, Hello):
                self.last_hello = now
            elif isinstance(message, Options):
                self.options = message.options
            elif not isinstance(message, (Job, Drop)):
                reject(
                    ProtocolError(
                        "unexpected_launcher_message",
                        f"{type(message).__name__} is not a message a launcher sends",
                    )
                )
                continue
            else:
                problem = self._out_of_bounds(message)
                if problem is not None:
                    reject(problem)
                    continue
            messages.append(message)
        return messages

    def _out_of_bounds(self, message: Job | Drop) -> ProtocolError | None:
        """A JOB or DROP of a simulation the study lacks, or with an oversized job id: kept,
        they would grow the server's tables without bound."""
        kind = "JOB" if isinstance(message, Job) else "DROP"
        if message.simu_id >= self.config.sampling_size:
            return ProtocolError(
                "simu_id_out_of_range" if kind == "JOB" else "drop_out_of_range",
                f"{kind} for simulation {message.simu_id}, the study has "
                f"{self.config.sampling_size}",
            )
        if len(message.job_id) > JOB_ID_MAX:
            return ProtocolError(
                "bad_string",
                f"job id of simulation {message.simu_id} is {len(message.job_id)} "
                f"characters, more than {JOB_ID_MAX}",
            )
        return None

    def gone(self, now: float) -> bool:
        """True when the launcher sent no HELLO for longer than --launcher-timeout."""
        return now - self.last_hello > self.config.launcher_timeout

    def close(self) -> None:
        """Close the sockets (finite linger)."""
        for socket in (self.subscriber, self.pusher, self.requester):
            socket.close()
