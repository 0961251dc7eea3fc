"""TCP ports: free ones for servers started a moment later (the runner, tests and benchmarks),
Melissa 0.6's rule for the data ports of the ranks of one host, and the address of a network
interface (what a server on a cluster node advertises)."""

from __future__ import annotations

import fcntl
import random
import socket
import struct

from melissa_nb.errors import ConfigurationError, MelissaError

SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


def interface_address(name: str) -> str | None:
    """The IPv4 address of this host's network interface `name` (eth0, ib0, ...); None when
    no interface has that name; ConfigurationError when it has no IPv4 address."""
    if name not in {interface for _, interface in socket.if_nameindex()}:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        request = struct.pack("256s", name.encode()[:15])
        try:
            answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
        except OSError as error:
            raise ConfigurationError(f"interface {name} has no IPv4 address: {error}") from None
    return socket.inet_ntoa(answer[20:24])


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


def melissa_data_port(base_port: int, local_index: int, reserved: tuple[int, ...]) -> int:
    """Data port of the rank at position `local_index` among the server ranks of one host.

    Melissa 0.6's rule: rank 0 of a host gets the base port (2004), the next ones the following
    ports, skipping the reserved ones (2002, 2003 and the three launcher ports). Port 0 means
    "let ZeroMQ choose" for every rank.
    """
    if base_port == 0:
        return 0
    port = base_port
    remaining = local_index
    while port in reserved or remaining > 0:
        if port not in reserved:
            remaining -= 1
        port += 1
    return port
