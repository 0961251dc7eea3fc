"""REP sockets: read one whole request, every part of it, so that the one reply is allowed.

A REP socket must receive every part of a request before it may reply: `recv()` returns only
the first part of a multi-part request, and the `send()` that follows fails with "Operation
cannot be accomplished in current state". Every request melissa_nb answers is one part; a
request of several parts is read whole and refused (`multipart_request`), and the caller still
replies, so the socket goes on serving.
"""

from __future__ import annotations

import zmq

from melissa_nb.errors import ProtocolError


def receive_request(socket: zmq.Socket) -> bytes | None:
    """The one part of the next request on `socket`; None if none is waiting.

    Raises ProtocolError("multipart_request") after reading every part of a request made of
    several; the caller replies to it as to any refused request.
    """
    try:
        parts = socket.recv_multipart(zmq.NOBLOCK)
    except zmq.Again:
        return None
    if len(parts) != 1:
        raise ProtocolError(
            "multipart_request",
            f"a request of {len(parts)} parts ({sum(map(len, parts))} bytes): one part expected",
        )
    return parts[0]
