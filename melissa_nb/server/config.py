"""ServerConfig: the one definition of a server's settings (command line -> frozen dataclass).

Every option of Melissa 0.6's server is here under a descriptive name, plus melissa_nb's own
(output directory, addresses, port-table width, limits). Validation happens once, at
construction, and every error names the command-line option that carries the bad value.
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path

from melissa_nb.errors import ConfigurationError
from melissa_nb.protocol import FIELD_NAME_WIDTH, data_frame_size

OPERATIONS = (
    "mean",
    "variance",
    "skewness",
    "kurtosis",
    "min",
    "max",
    "threshold",
    "quantile",
    "sobol",
)
MOMENT_ORDER = {"mean": 1, "variance": 2, "skewness": 3, "kurtosis": 4}
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def parse_colon_list(text: str | None, option: str, kind: type = str) -> tuple:
    """Split Melissa's colon-separated option value ("mean:variance") into a typed tuple."""
    if text is None or text.strip() == "":
        return ()
    items = [item.strip() for item in text.split(":")]
    if any(item == "" for item in items):
        raise ConfigurationError(f"{option}: empty item in colon list {text!r}")
    try:
        return tuple(kind(item) for item in items)
    except ValueError as error:
        raise ConfigurationError(f"{option}: cannot read {text!r} as {kind.__name__}s") from error


def derived_study_id(output_dir: Path, connection_port: int) -> str:
    """A short id every rank derives identically from the command line (used in shm names)."""
    key = f"{Path(output_dir).resolve()}|{connection_port}".encode()
    return hashlib.sha1(key).hexdigest()[:10]


def data_port_for(base_port: int, local_index: int, reserved: tuple[int, ...]) -> int:
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


@dataclass(frozen=True)
class ServerConfig:
    """All settings of one server (identical on every rank). Build with `ServerConfig(...)`."""

    sampling_size: int
    timesteps: int
    field_names: tuple[str, ...]
    parameters: int = 0
    operations: tuple[str, ...] = ("mean", "variance")
    thresholds: tuple[float, ...] = ()
    quantiles: tuple[float, ...] = ()
    launcher_name: str | None = None
    check_interval: float = 300.0
    timeout: float = 300.0
    verbosity: int = 1
    restart_dir: Path | None = None
    txt_push_port: int = 5555
    txt_pull_port: int = 5556
    txt_req_port: int = 5554
    data_port: int = 2004
    connection_port: int = 2003
    output_dir: Path = Path("results")
    bind: str | None = None
    advertise: str | None = None
    port_table_width: int = 256
    study_id: str | None = None
    confidence: float = 0.95
    launcher_timeout: float = 250.0
    max_cells: int = 1 << 24
    member_buffer_mb: float = 256.0
    batch_mb: float = 64.0  # received frames held to fold together (see server/batches.py)
    heartbeat: float = 20.0  # ALIVE/TIMEOUT period towards the launcher (Melissa 0.6's value)
    checkpoint_dir: Path | None = None
    target_width: float | None = None
    statistics: bool = True  # False: no built-in kernels, state or result files (embedded use)
    control_port: int = 0  # rank 0's control REP port; 0 = chosen by ZeroMQ (see server.json)
    control_bind: str = "127.0.0.1"  # the control endpoint answers on loopback unless told
    forward_to: str | None = None  # a consumer's PULL address: accepted data is pushed there
    forward_ack: str | None = None  # the consumer's REP address acknowledging end of stream
    forward_data: bool = True  # False: only what user code forwards (results) is pushed
    forward_timeout: float = 60.0  # bound on one blocked send and on the final acknowledgement

    def __post_init__(self) -> None:
        self._validate()
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        for name in ("restart_dir", "checkpoint_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.study_id is None:
            object.__setattr__(
                self, "study_id", derived_study_id(self.output_dir, self.connection_port)
            )

    def _validate(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigurationError(message)

        need(self.timesteps >= 1, f"-t/--timesteps must be >= 1, got {self.timesteps}")
        need(
            self.sampling_size >= 1,
            f"-s/--samplingsize must be >= 1, got {self.sampling_size}",
        )
        need(self.parameters >= 0, f"-p/--parameters must be >= 0, got {self.parameters}")
        need(len(self.operations) > 0, "-o/--operations: no operation requested")
        for operation in self.operations:
            need(
                operation in OPERATIONS,
                f"-o/--operations: unknown operation {operation!r} (known: {':'.join(OPERATIONS)})",
            )
        need(
            len(set(self.operations)) == len(self.operations),
            f"-o/--operations: repeated operation in {':'.join(self.operations)}",
        )
        if "sobol" in self.operations:
            need(
                self.parameters >= 1,
                f"-o/--operations sobol needs -p/--parameters >= 1 (got {self.parameters})",
            )
        if "threshold" in self.operations:
            need(len(self.thresholds) > 0, "-o/--operations threshold needs -e/--thresholds")
        if "quantile" in self.operations:
            need(len(self.quantiles) > 0, "-o/--operations quantile needs -q/--quantiles")
        need(
            len(set(self.thresholds)) == len(self.thresholds),
            f"-e/--thresholds: repeated value in {self.thresholds}",
        )
        for value in self.thresholds:
            need(value == value, "-e/--thresholds: nan is not a threshold")
        need(
            len(set(self.quantiles)) == len(self.quantiles),
            f"-q/--quantiles: repeated value in {self.quantiles}",
        )
        for order in self.quantiles:
            need(0.0 < order < 1.0, f"-q/--quantiles: order {order} not in (0, 1)")
        need(len(self.field_names) > 0, "-f/--fieldnames: at least one field name is required")
        need(
            len(set(self.field_names)) == len(self.field_names),
            f"-f/--fieldnames: repeated name in {':'.join(self.field_names)}",
        )
        for name in self.field_names:
            encoded = name.encode()
            need(
                0 < len(encoded) < FIELD_NAME_WIDTH and b"\0" not in encoded,
                f"-f/--fieldnames: field name {name!r} must be 1..{FIELD_NAME_WIDTH - 1} bytes",
            )
            need(
                name.replace("_", "").replace("-", "").replace(".", "").isalnum(),
                f"-f/--fieldnames: field name {name!r} may hold only letters, digits, _ - .",
            )
        need(self.check_interval > 0, f"-c/--checkintervals must be > 0, got {self.check_interval}")
        need(self.timeout > 0, f"-w/--timeout must be > 0, got {self.timeout}")
        need(
            self.launcher_timeout > 0,
            f"--launcher-timeout must be > 0, got {self.launcher_timeout}",
        )
        ports = {
            "--txt_push_port": self.txt_push_port,
            "--txt_pull_port": self.txt_pull_port,
            "--txt_req_port": self.txt_req_port,
            "--connection-port": self.connection_port,
        }
        for option, port in ports.items():
            need(1 <= port <= 65535, f"{option} must be in 1..65535, got {port}")
        launcher_ports = (self.txt_push_port, self.txt_pull_port, self.txt_req_port)
        need(
            len(set(launcher_ports)) == 3,
            f"--txt_push_port, --txt_pull_port, --txt_req_port must differ, got {launcher_ports}",
        )
        need(
            self.launcher_name is None or self.connection_port not in launcher_ports,
            f"--connection-port {self.connection_port} is also a launcher port "
            f"(--txt_push_port/--txt_pull_port/--txt_req_port {launcher_ports})",
        )
        need(
            0 <= self.data_port <= 65535,
            f"--data_port must be in 0..65535 (0 = chosen by ZeroMQ), got {self.data_port}",
        )
        need(
            self.data_port == 0 or self.data_port != self.connection_port,
            f"--data_port {self.data_port} equals --connection-port",
        )
        need(
            self.port_table_width >= 16,
            f"--port-table-width must be >= 16, got {self.port_table_width}",
        )
        need(
            0.0 < self.confidence < 1.0,
            f"--confidence must be in (0, 1), got {self.confidence}",
        )
        need(self.max_cells >= 1, f"--max-cells must be >= 1, got {self.max_cells}")
        need(
            self.member_buffer_mb > 0,
            f"--member-buffer-mb must be > 0, got {self.member_buffer_mb}",
        )
        need(self.batch_mb >= 0, f"--batch-mb must be >= 0, got {self.batch_mb}")
        need(self.heartbeat > 0, f"--heartbeat must be > 0, got {self.heartbeat}")
        if self.target_width is not None:
            need("sobol" in self.operations, "--target-width needs sobol in -o/--operations")
            need(
                0.0 < self.target_width,
                f"--target-width must be > 0, got {self.target_width}",
            )
        need(
            0 <= self.control_port <= 65535,
            f"--control-port must be in 0..65535 (0 = chosen by ZeroMQ), got {self.control_port}",
        )
        need(
            (self.forward_to is None) == (self.forward_ack is None),
            "--forward-to and --forward-ack go together "
            f"(got {self.forward_to!r} and {self.forward_ack!r})",
        )
        for option, address in (
            ("--forward-to", self.forward_to),
            ("--forward-ack", self.forward_ack),
        ):
            need(
                address is None or address.startswith(("tcp://", "ipc://", "inproc://")),
                f"{option}: {address!r} is not a tcp://, ipc:// or inproc:// address",
            )
        need(
            self.forward_timeout > 0,
            f"--forward-timeout must be > 0, got {self.forward_timeout}",
        )
        if self.study_id is not None:
            need(
                0 < len(self.study_id) <= 32
                and self.study_id.replace("_", "").replace("-", "").isalnum(),
                f"--study-id {self.study_id!r}: 1..32 letters, digits, _ or -",
            )
        if self.launcher_name is not None:
            need(self.launcher_name.strip() != "", "-n/--launchername must not be empty")
        if self.restart_dir is not None:
            need(
                Path(self.restart_dir).is_dir(),
                f"-r/--restart {self.restart_dir}: no such directory",
            )

    @property
    def sobol(self) -> bool:
        """True when Sobol indices are requested (samples then come in groups of p+2)."""
        return "sobol" in self.operations

    @property
    def group_size(self) -> int:
        """Simulations per sample: p+2 with Sobol (Y_A, Y_B, Y_C1..Y_Cp), else 1."""
        return self.parameters + 2 if self.sobol else 1

    @property
    def moment_order(self) -> int:
        """Highest central moment the general statistics need (0: none)."""
        return max((MOMENT_ORDER[op] for op in self.operations if op in MOMENT_ORDER), default=0)

    @property
    def extrema(self) -> bool:
        """True when min or max is requested (both are kept: one kernel)."""
        return "min" in self.operations or "max" in self.operations

    @property
    def general_statistics(self) -> bool:
        """True when any statistic other than Sobol indices is requested."""
        return any(op != "sobol" for op in self.operations)

    @property
    def max_message_bytes(self) -> int:
        """ZMQ_MAXMSGSIZE of the data socket: header + a whole group of `max_cells` doubles."""
        return data_frame_size(self.max_cells, self.group_size)

    @property
    def launcher_is_local(self) -> bool:
        """True when the launcher runs on this host (or there is none)."""
        if self.launcher_name is None:
            return True
        return self.launcher_name in LOCAL_HOSTS or self.launcher_name == socket.gethostname()

    @property
    def bind_address(self) -> str:
        """Interface the server binds: --bind, else loopback for a local study, else all."""
        if self.bind is not None:
            return self.bind
        return "127.0.0.1" if self.launcher_is_local else "0.0.0.0"

    @property
    def advertise_host(self) -> str:
        """Host written in the port table: --advertise, else the bind address or host name."""
        if self.advertise is not None:
            return self.advertise
        if self.bind_address in ("0.0.0.0", "*", "::"):
            return socket.gethostname()
        return self.bind_address

    @property
    def checkpoint_directory(self) -> Path:
        """Where checkpoints go: --checkpoint-dir, else `<output>/checkpoint`."""
        if self.checkpoint_dir is not None:
            return Path(self.checkpoint_dir)
        return Path(self.output_dir) / "checkpoint"

    def reserved_ports(self) -> tuple[int, ...]:
        """Ports a data socket must never take (connection, disconnection, launcher ports)."""
        return (
            2002,
            self.connection_port,
            self.txt_push_port,
            self.txt_pull_port,
            self.txt_req_port,
        )

    def data_port_for(self, local_index: int) -> int:
        """Data port of the rank at `local_index` among the server ranks on its host."""
        return data_port_for(self.data_port, local_index, self.reserved_ports())

    def shm_prefix(self) -> str:
        """Prefix of every shared-memory block name of this study."""
        return f"melissa_nb_{self.study_id}_"
