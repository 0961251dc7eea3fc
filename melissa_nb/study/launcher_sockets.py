"""The launcher's side of the Melissa protocol: three bound sockets the server connects to.

| launcher socket | server socket | carries |
|---|---|---|
| PUB  (`pull_port`) | SUB  (`--txt_pull_port`) | JOB, DROP, HELLO |
| PULL (`push_port`) | PUSH (`--txt_push_port`) | SERVER, SIMU_STATUS, TIMEOUT, ALIVE, STOP, ... |
| REP  (`req_port`)  | REQ  (`--txt_req_port`)  | `options`, `simu_info <id>`, `test_timeout` |

The launcher binds (ephemeral loopback ports, so studies never collide) and the server connects.
Requests are answered here, at once, from the job table the runner keeps; everything else the
server says is handed back to the runner. Malformed frames are counted by reason and dropped.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

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

HEARTBEAT_SECONDS = 5.0
"""HELLO period; Melissa's launcher says hello about every 10 s, the server waits ~250 s."""

LINGER_MS = 200


@dataclass(frozen=True)
class LauncherPorts:
    """The three ports the server must be told about (named from the server's side)."""

    push: int
    pull: int
    req: int


def _bind(socket: zmq.Socket, host: str) -> int:
    socket.setsockopt(zmq.LINGER, LINGER_MS)
    return socket.bind_to_random_port(f"tcp://{host}")


class Launcher:
    """Bound launcher sockets; `service()` answers requests, says HELLO and returns the rest.

    `job_of(simu_id)` gives the JOB describing a simulation, or None when the study has no such
    simulation (the request is then answered with a DROP, so the server stops waiting for it).
    """

    def __init__(
        self,
        context: zmq.Context,
        job_of: Callable[[int], Job | None],
        options: str,
        host: str = "127.0.0.1",
        heartbeat: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.job_of = job_of
        self.options = options
        self.heartbeat = heartbeat
        self.rejected: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self._publisher = context.socket(zmq.PUB)
        self._puller = context.socket(zmq.PULL)
        self._replier = context.socket(zmq.REP)
        self.ports = LauncherPorts(
            push=_bind(self._puller, host),
            pull=_bind(self._publisher, host),
            req=_bind(self._replier, host),
        )
        self._poller = zmq.Poller()
        self._poller.register(self._puller, zmq.POLLIN)
        self._poller.register(self._replier, zmq.POLLIN)
        self._last_hello = -float("inf")

    def publish(self, message: Job | Drop | Hello) -> None:
        """Send a launcher -> server message to every server rank."""
        self._publisher.send(message.encode())

    def service(self, timeout: float) -> list[LauncherMessage]:
        """Wait up to `timeout` s; answer requests, send HELLO when due, return server messages."""
        now = time.monotonic()
        if now - self._last_hello >= self.heartbeat:
            self.publish(Hello())
            self._last_hello = now
        received: list[LauncherMessage] = []
        events = dict(self._poller.poll(max(0, int(timeout * 1000))))
        if self._replier in events:
            self._answer(self._replier.recv())
        if self._puller in events:
            while True:
                try:
                    frame = self._puller.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    received.append(decode_launcher_message(frame))
                except ProtocolError as error:
                    self.rejected[error.reason] += 1
        return received

    def _answer(self, frame: bytes) -> None:
        """Every request gets exactly one reply (REP), even a malformed one (an empty frame)."""
        try:
            request = TextRequest.decode(frame)
        except ProtocolError as error:
            self.rejected[error.reason] += 1
            self._replier.send(b"")
            return
        self.requests[request.kind] += 1
        if request.kind == "options":
            reply: LauncherMessage = Options(self.options)
        elif request.simu_id is not None:  # simu_info, the one request carrying an id
            reply = self.job_of(request.simu_id) or Drop(request.simu_id, "")
        else:  # test_timeout: "is the launcher still there?" - yes
            reply = Hello()
        self._replier.send(reply.encode())

    def close(self) -> None:
        """Close the three sockets (finite linger)."""
        for socket in (self._publisher, self._puller, self._replier):
            socket.close(linger=LINGER_MS)
