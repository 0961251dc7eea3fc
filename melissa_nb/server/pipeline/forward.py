"""Pipelines, the two ends: a server rank's `Forwarder` (PUSH, then END and a bounded wait for
the consumer's acknowledgement) and the downstream `Consumer` (PULL and the acknowledgement REP).
The wire format is `melissa_nb.forward_protocol` (docs/embedding.md is the reference).

Both links are CURVE (melissa_nb.auth): the consumer creates a key file (mode 0600) and admits
only peers holding its key pair; the server reads the same file (--forward-key). Anyone else's
connection is refused before a message passes, and counted (`Consumer.unauthenticated`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zmq

from melissa_nb.auth import (
    PIPELINE_KEY_FILE,
    Gatekeeper,
    LinkKey,
    connect_with,
    load_or_create_key,
    read_key_file,
    serve_with,
)
from melissa_nb.errors import ProtocolError
from melissa_nb.forward_protocol import DATA, END, Forwarded
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.pipeline.stages import Processing
from melissa_nb.server.ranks import World

SEND_HWM = 64  # messages queued towards the consumer before a send blocks (backpressure)
LINGER_MS = 1000
POLL_MS = 100
DRAIN = 256  # messages a consumer takes per poll before it looks at acknowledgement requests


class Forwarder:
    """A server rank's side: PUSH to the consumer, END and a bounded wait for its ACK."""

    def __init__(
        self,
        context: zmq.Context,
        data_address: str,
        ack_address: str,
        rank: int,
        ranks: int,
        timeout: float,
        counts: dict[str, int],
        log: logging.Logger,
        key: LinkKey,
    ) -> None:
        self.rank, self.ranks, self.timeout = rank, ranks, timeout
        self.key = key
        self.counts, self.log = counts, log
        self.ack_address = ack_address
        self.context = context
        self.pusher = context.socket(zmq.PUSH)
        self.pusher.setsockopt(zmq.SNDHWM, SEND_HWM)
        self.pusher.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
        self.pusher.setsockopt(zmq.LINGER, LINGER_MS)
        connect_with(self.pusher, key)
        self.pusher.connect(data_address)
        self.sent = 0
        self.broken = False
        self.ended = False

    def send(
        self,
        kind: int,
        name: str,
        values: np.ndarray,
        simulation_id: int = -1,
        client_rank: int = -1,
        timestep: int = -1,
        copy: bool = False,
    ) -> bool:
        """Push one message; False when the pipe is broken or ended.

        Without `copy`, `values` must stay unchanged until sent (received frames do).
        """
        if self.broken or self.ended:
            return False
        values = np.ascontiguousarray(values, dtype=np.float64)
        values = values.reshape(1, -1) if values.ndim == 1 else values
        header = Forwarded(
            kind,
            self.rank,
            self.ranks,
            simulation_id,
            client_rank,
            timestep,
            self.sent,
            name,
            values,
        ).header()
        try:
            self.pusher.send_multipart([header, values], copy=copy)
        except zmq.Again:
            self.broken = True
            self.log.error(
                "consumer took nothing for %g s: forwarding stopped after %d messages",
                self.timeout,
                self.sent,
            )
            return False
        self.sent += 1
        self.counts["forwarded"] = self.sent
        return True

    def end(self) -> bool:
        """Send END, then wait (bounded) for the consumer to acknowledge everything; True if so."""
        if self.ended:
            return False
        self.ended = True
        end = Forwarded(END, self.rank, self.ranks, -1, -1, -1, self.sent, "", None).header()
        request = self.context.socket(zmq.REQ)
        request.setsockopt(zmq.LINGER, 0)
        connect_with(request, self.key)
        try:
            self.pusher.send(end)
            request.connect(self.ack_address)
            request.send(end)
            if not request.poll(int(self.timeout * 1000)):
                self.log.warning(
                    "consumer did not acknowledge the end of %d forwarded messages in %g s",
                    self.sent,
                    self.timeout,
                )
                return False
            reply = Forwarded.decode([request.recv()])
        except (zmq.ZMQError, ProtocolError) as error:
            self.log.warning("end of stream not acknowledged: %s", error)
            return False
        finally:
            request.close()
        if reply.kind != END or reply.sequence != self.sent:
            self.log.warning(
                "consumer acknowledged %d of %d forwarded messages", reply.sequence, self.sent
            )
            return False
        self.log.info("consumer acknowledged all %d forwarded messages", self.sent)
        return True

    def close(self) -> None:
        """Close the PUSH socket (finite linger)."""
        self.pusher.close()


def connect_forwarder(
    context: zmq.Context,
    config: ServerConfig,
    world: World,
    counts: dict[str, int],
    processing: Processing,
    log: logging.Logger,
) -> Forwarder:
    """A rank's Forwarder to `--forward-to`, fed every accepted message (with --forward-data)
    and ended with the study."""
    assert config.forward_to is not None
    forwarder = Forwarder(
        context,
        config.forward_to,
        str(config.forward_ack),
        world.rank,
        world.size,
        config.forward_timeout,
        counts,
        log,
        read_key_file(config.forward_key),
    )
    if config.forward_data:
        processing.listen(
            lambda message: forwarder.send(
                DATA,
                message.field_name,
                message.values,
                message.simu_id,
                message.client_rank,
                message.time_stamp,
            )
        )
    processing.on_finish(lambda aborted: forwarder.end())
    return forwarder


class Consumer:
    """The downstream side: binds PULL (data) and REP (acknowledgements), yields messages.

    `key_file`: the link's key pair, created there (mode 0600) unless the file exists; give the
    same file to the server (`--forward-key`). `for message in consumer.messages(timeout)`
    yields DATA and RESULT messages until every rank's END arrived with all its messages
    (acknowledged as they complete), or until `timeout` seconds pass without any message
    (TimeoutError). Each message's `values` is a read-only view of the received frame: copy
    what you keep.
    """

    def __init__(
        self,
        data_address: str = "tcp://127.0.0.1:*",
        ack_address: str = "tcp://127.0.0.1:*",
        key_file: str | os.PathLike[str] = PIPELINE_KEY_FILE,
    ) -> None:
        self.key_file = Path(key_file)
        key = load_or_create_key(self.key_file)
        self.unauthenticated = 0  # connections refused: not holding the key
        self.context = zmq.Context()
        self.gatekeeper = Gatekeeper(self.context, key, self._refused)
        self.puller = self.context.socket(zmq.PULL)
        self.replier = self.context.socket(zmq.REP)
        for socket in (self.puller, self.replier):
            socket.setsockopt(zmq.LINGER, LINGER_MS)
            serve_with(socket, key)
        self.puller.bind(data_address)
        self.replier.bind(ack_address)
        self.data_address = self.puller.getsockopt_string(zmq.LAST_ENDPOINT)
        self.ack_address = self.replier.getsockopt_string(zmq.LAST_ENDPOINT)
        self.received: dict[int, int] = {}  # rank -> DATA/RESULT messages received
        self.ends: dict[int, int] = {}  # rank -> messages its END announced
        self.ranks: int | None = None
        self.rejected = 0
        self._asking: Forwarded | None = None  # an ACK request not answered yet
        self._acknowledged: set[int] = set()

    @property
    def finished(self) -> bool:
        """True when every rank ended and everything it announced arrived."""
        return (
            self.ranks is not None
            and len(self.ends) == self.ranks
            and all(self.received.get(rank, 0) == n for rank, n in self.ends.items())
        )

    def messages(self, timeout: float = 60.0) -> Iterator[Forwarded]:
        """Yield every DATA and RESULT message until the stream is finished (see the class)."""
        poller = zmq.Poller()
        poller.register(self.gatekeeper.socket, zmq.POLLIN)
        poller.register(self.puller, zmq.POLLIN)
        poller.register(self.replier, zmq.POLLIN)
        last = time.monotonic()
        while not (self.finished and self._asking is None and self._all_acknowledged()):
            if time.monotonic() - last > timeout:
                raise TimeoutError(f"no message for {timeout:g} s (received {self.received})")
            events = dict(poller.poll(POLL_MS))
            if self.gatekeeper.socket in events:
                self.gatekeeper.answer()
            if self.puller in events:
                last = time.monotonic()
                for _ in range(DRAIN):
                    try:
                        frames = self.puller.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    message = self._count(frames)
                    if message is not None:
                        yield message
            if self._asking is None and self.replier in events:
                last = time.monotonic()
                try:
                    self._asking = Forwarded.decode([self.replier.recv()])
                except ProtocolError:
                    self.rejected += 1
                    self.replier.send(b"")
            self._answer()

    def _count(self, frames: list[zmq.Frame]) -> Forwarded | None:
        """Decode and count one message; the DATA or RESULT message, None for END or garbage."""
        try:
            message = Forwarded.decode(frames)
        except ProtocolError:
            self.rejected += 1
            return None
        self.ranks = message.ranks
        if message.kind == END:
            self.ends[message.rank] = message.sequence
            return None
        self.received[message.rank] = self.received.get(message.rank, 0) + 1
        return message

    def _answer(self) -> None:
        """Reply to a pending ACK request once that rank's whole stream arrived."""
        asking = self._asking
        if asking is None:
            return
        received = self.received.get(asking.rank, 0)
        if asking.rank in self.ends and received >= self.ends[asking.rank]:
            self.replier.send(
                Forwarded(END, asking.rank, asking.ranks, -1, -1, -1, received, "", None).header()
            )
            self._acknowledged.add(asking.rank)
            self._asking = None

    def _refused(self, address: str) -> None:
        self.unauthenticated += 1

    def _all_acknowledged(self) -> bool:
        return len(self._acknowledged) == (self.ranks or 0)

    def close(self) -> None:
        """Close both sockets and the context (finite linger)."""
        self.context.destroy(linger=LINGER_MS)
