"""The server's ports and pipeline addresses, checked together: each port in range, the three
launcher ports distinct, none taken twice; a forward link complete (address, acknowledgement,
key). Each error names its option."""

from __future__ import annotations

from melissa_nb.server.operation_checks import need


def check_ports(
    ports: dict[str, int], with_launcher: bool, data_port: int, control_port: int
) -> None:
    """ConfigurationError unless the ports can all be bound: `ports` maps the launcher ports
    and --connection-port (by option) to their values; 0 lets ZeroMQ choose the data and control
    ports."""
    for option, port in ports.items():
        need(1 <= port <= 65535, f"{option} must be in 1..65535, got {port}")
    connection_port = ports["--connection-port"]
    launcher_ports = tuple(port for option, port in ports.items() if option.startswith("--txt"))
    need(
        len(set(launcher_ports)) == 3,
        f"--txt_push_port, --txt_pull_port, --txt_req_port must differ, got {launcher_ports}",
    )
    need(
        not with_launcher or connection_port not in launcher_ports,
        f"--connection-port {connection_port} is also a launcher port "
        f"(--txt_push_port/--txt_pull_port/--txt_req_port {launcher_ports})",
    )
    need(
        0 <= data_port <= 65535,
        f"--data_port must be in 0..65535 (0 = chosen by ZeroMQ), got {data_port}",
    )
    need(
        data_port == 0 or data_port != connection_port,
        f"--data_port {data_port} equals --connection-port",
    )
    need(
        0 <= control_port <= 65535,
        f"--control-port must be in 0..65535 (0 = chosen by ZeroMQ), got {control_port}",
    )


def check_forwarding(
    forward_to: str | None, forward_ack: str | None, has_key: bool, timeout: float
) -> None:
    """ConfigurationError unless a pipeline link (--forward-to) has its acknowledgement address,
    its consumer's key and a positive timeout."""
    need(
        forward_to is None or has_key,
        "--forward-to needs --forward-key: the consumer's key file (pipeline links are "
        "authenticated)",
    )
    need(
        (forward_to is None) == (forward_ack is None),
        f"--forward-to and --forward-ack go together (got {forward_to!r} and {forward_ack!r})",
    )
    for option, address in (("--forward-to", forward_to), ("--forward-ack", forward_ack)):
        need(
            address is None or address.startswith(("tcp://", "ipc://", "inproc://")),
            f"{option}: {address!r} is not a tcp://, ipc:// or inproc:// address",
        )
    need(timeout > 0, f"--forward-timeout must be > 0, got {timeout}")
