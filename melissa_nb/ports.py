"""Free TCP ports for servers started a moment later (the runner, tests and benchmarks)."""

from __future__ import annotations

import random
import socket

from melissa_nb.errors import MelissaError


def free_port(host: str = "127.0.0.1", low: int = 20000, high: int = 32768) -> int:
    """A TCP port free right now on `host`, for a server to bind a few seconds later.

    Drawn below Linux's ephemeral range (32768 and up by default): a port the kernel hands out
    for port 0 soon becomes the source port of some outgoing connection, which then makes the
    server's bind fail (seen with several test suites running at once).
    """
    draw = random.Random()
    for _ in range(200):
        port = draw.randrange(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise MelissaError(f"no free TCP port in [{low}, {high}) on {host}")
