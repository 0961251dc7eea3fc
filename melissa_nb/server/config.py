"""ServerConfig: the one definition of a server's settings (command line -> frozen dataclass).

Every option of Melissa 0.6's server is here under a descriptive name, plus melissa_nb's own
(output directory, addresses, port-table width, limits). Validation happens once, at
construction, and every error names the command-line option that carries the bad value. (Over
400 lines: every setting with its flags, help and check, once.)
"""

from __future__ import annotations

import hashlib
import socket
from dataclasses import MISSING, dataclass, field, replace
from pathlib import Path
from typing import Any

from melissa_nb.kernels.api.chaos import Law
from melissa_nb.ports import interface_address, melissa_data_port
from melissa_nb.protocol import FIELD_NAME_WIDTH, data_frame_size
from melissa_nb.server.address_checks import check_forwarding, check_ports
from melissa_nb.server.operation_checks import check_operations, need, read_laws

MOMENT_ORDER = {"mean": 1, "variance": 2, "skewness": 3, "kurtosis": 4}
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def derived_study_id(output_dir: Path, connection_port: int) -> str:
    """A short id every rank derives identically from the command line (used in shm names)."""
    key = f"{Path(output_dir).resolve()}|{connection_port}".encode()
    return hashlib.sha1(key).hexdigest()[:10]


def option(*flags: str, help: str, default: Any = MISSING) -> Any:
    """A ServerConfig field that is a `melissa-nb server` option: its flags and help live here,
    once, and the command line is built from them (server/options.py)."""
    return field(default=default, metadata={"flags": flags, "help": help})


@dataclass(frozen=True)
class ServerConfig:
    """All settings of one server (identical on every rank). Build with `ServerConfig(...)`."""

    sampling_size: int = option(
        "-s", "--samplingsize", help="Simulations, or Sobol groups when sobol is on."
    )
    timesteps: int = option("-t", "--timesteps", help="Timesteps per field.")
    field_names: tuple[str, ...] = option("-f", "--fieldnames", help="Colon list of field names.")
    parameters: int = option(
        "-p", "--parameters", default=0, help="Uncertain parameters (Sobol, correlation)."
    )
    operations: tuple[str, ...] = option(
        "-o",
        "--operations",
        default=("mean", "variance"),
        help="Colon list: mean variance skewness kurtosis min max threshold quantile sobol "
        "correlation.",
    )
    chaos_degree: int = option(
        "--chaos-degree", default=2, help="Total degree of the polynomial chaos (chaos)."
    )
    chaos_laws: tuple[str, ...] = option(
        "--chaos-laws",
        default=(),
        help="Colon list of each parameter's law for chaos: uniform,LOW,HIGH | normal,MEAN,STD "
        "| loguniform,LOW,HIGH.",
    )
    chaos_fields: tuple[str, ...] = option(
        "--chaos-fields", default=(), help="Colon list of the fields fitted by chaos (default all)."
    )
    chaos_timesteps: tuple[int, ...] = option(
        "--chaos-timesteps",
        default=(),
        help="Colon list of the timesteps fitted by chaos, from 0 (default all).",
    )
    thresholds: tuple[float, ...] = option(
        "-e",
        "--thresholds",
        "--threshold",
        "--treshold",
        "--tresholds",
        default=(),
        help="Colon list of thresholds (exceedance counts x > t).",
    )
    quantiles: tuple[float, ...] = option(
        "-q",
        "--quantiles",
        "--quantile",
        default=(),
        help="Colon list of quantile orders in (0, 1).",
    )
    launcher_name: str | None = option(
        "-n",
        "--launchername",
        default=None,
        help="Launcher host; omitted = run without a launcher.",
    )
    check_interval: float = option("-c", "--checkintervals", default=300.0, help="Seconds.")
    timeout: float = option(
        "-w", "--timeout", default=300.0, help="Seconds of silence before a simulation times out."
    )
    verbosity: int = option("-v", "--verbosity", default=1, help="0 quiet .. 3 debug.")
    restart_dir: Path | None = option(
        "-r", "--restart", default=None, help="Restart from the checkpoints in this directory."
    )
    txt_push_port: int = option("--txt_push_port", default=5555, help="Launcher PULL port.")
    txt_pull_port: int = option("--txt_pull_port", default=5556, help="Launcher PUB port.")
    txt_req_port: int = option("--txt_req_port", default=5554, help="Launcher REP port.")
    data_port: int = option(
        "--data_port", default=2004, help="Data port of rank 0 (0 = chosen by ZeroMQ)."
    )
    connection_port: int = option("--connection-port", default=2003, help="Handshake REP port.")
    output_dir: Path = option("--output-dir", default=Path("results"), help="Results directory.")
    bind: str | None = option(
        "--bind", default=None, help="Bind address (default 127.0.0.1 for a local study, else all)."
    )
    advertise: str | None = option(
        "--advertise",
        default=None,
        help="Host (or network interface, for its address) simulations are told to reach.",
    )
    port_table_width: int = option(
        "--port-table-width", default=256, help="Bytes per port-table entry (MPICH clients: 128)."
    )
    study_id: str | None = option(
        "--study-id", default=None, help="Id used in shared-memory names."
    )
    study_fingerprint: str | None = option(
        "--study-fingerprint",
        default=None,
        help="The study design's fingerprint (melissa-nb run); a checkpoint keeps it and a "
        "restart of another design is refused.",
    )
    confidence: float = option("--confidence", default=0.95, help="Sobol interval level.")
    launcher_timeout: float = option(
        "--launcher-timeout",
        default=250.0,
        help="Seconds without HELLO before the launcher is gone.",
    )
    max_cells: int = option(
        "--max-cells",
        default=1 << 24,
        help="Largest vector one message may carry (sets MAXMSGSIZE).",
    )
    member_buffer_mb: float = option(
        "--member-buffer-mb", default=256.0, help="Memory for assembling single Sobol members."
    )
    batch_mb: float = option(  # see server/receive/batches.py
        "--batch-mb",
        default=64.0,
        help="Received data folded together per pass over the state (0: one message at a time).",
    )
    heartbeat: float = option(  # Melissa 0.6's period
        "--heartbeat",
        default=20.0,
        help="Seconds between ALIVE/TIMEOUT messages to the launcher.",
    )
    checkpoint_dir: Path | None = option(
        "--checkpoint-dir",
        default=None,
        help="Where checkpoints go (default <output-dir>/checkpoint).",
    )
    target_width: float | None = option(
        "--target-width",
        default=None,
        help="Tell the launcher when every Sobol interval is narrower than this.",
    )
    control_port: int = option(
        "--control-port", default=0, help="Rank 0's control port (0: a free port, see server.json)."
    )
    control_bind: str = option(
        "--control-bind", default="127.0.0.1", help="Interface the control endpoint binds."
    )
    forward_to: str | None = option(
        "--forward-to",
        default=None,
        help="A consumer's address: push every accepted message there.",
    )
    forward_ack: str | None = option(
        "--forward-ack",
        default=None,
        help="The consumer's address acknowledging the end of stream.",
    )
    forward_timeout: float = option(
        "--forward-timeout",
        default=60.0,
        help="Seconds a forward or the final acknowledgement may wait.",
    )
    parameter_names: tuple[str, ...] = option(
        "--parameter-names",
        default=(),
        help="Colon list of the parameters' names, for the results (default p1:p2:...).",
    )
    auth: bool = option(
        "--auth",
        default=False,
        help="CURVE on the data and connection sockets: only clients given the key file "
        "<output>/study.key (MELISSA_NB_KEY_FILE) get in; not Melissa 0.6 C clients.",
    )
    forward_key: Path | None = option(
        "--forward-key",
        default=None,
        help="The pipeline consumer's key file (Consumer(key_file=...)); needed with --forward-to.",
    )
    grid_shape: tuple[int, ...] = option(
        "--grid-shape",
        default=(),
        help="rows:columns of the cells (row-major): results get dimensions row, column.",
    )
    # Embedded servers only (MelissaServer), no command-line option:
    statistics: bool = True  # False: no built-in kernels, state or result files
    forward_data: bool = True  # False: only what user code forwards (results) is pushed

    def __post_init__(self) -> None:
        self._validate()
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        for name in ("restart_dir", "checkpoint_dir", "forward_key"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.study_id is None:
            object.__setattr__(
                self, "study_id", derived_study_id(self.output_dir, self.connection_port)
            )

    def _validate(self) -> None:
        need(self.timesteps >= 1, f"-t/--timesteps must be >= 1, got {self.timesteps}")
        need(
            self.sampling_size >= 1,
            f"-s/--samplingsize must be >= 1, got {self.sampling_size}",
        )
        need(self.parameters >= 0, f"-p/--parameters must be >= 0, got {self.parameters}")
        check_operations(self)
        need(
            not self.parameter_names or len(self.parameter_names) == self.parameters,
            f"--parameter-names: {len(self.parameter_names)} names for -p/--parameters "
            f"{self.parameters}",
        )
        need(
            len(set(self.parameter_names)) == len(self.parameter_names),
            f"--parameter-names: repeated name in {':'.join(self.parameter_names)}",
        )
        need(
            len(self.grid_shape) in (0, 2) and all(size >= 1 for size in self.grid_shape),
            f"--grid-shape: expected rows:columns, two sizes >= 1, got {self.grid_shape}",
        )
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
        check_ports(
            {
                "--txt_push_port": self.txt_push_port,
                "--txt_pull_port": self.txt_pull_port,
                "--txt_req_port": self.txt_req_port,
                "--connection-port": self.connection_port,
            },
            self.launcher_name is not None,
            self.data_port,
            self.control_port,
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
        check_forwarding(
            self.forward_to, self.forward_ack, self.forward_key is not None, self.forward_timeout
        )
        if self.study_id is not None:
            need(
                0 < len(self.study_id) <= 32
                and self.study_id.replace("_", "").replace("-", "").isalnum(),
                f"--study-id {self.study_id!r}: 1..32 letters, digits, _ or -",
            )
        if self.study_fingerprint is not None:
            need(
                0 < len(self.study_fingerprint) <= 128 and self.study_fingerprint.isalnum(),
                f"--study-fingerprint {self.study_fingerprint!r}: 1..128 letters or digits",
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
    def correlation(self) -> bool:
        """True when correlation maps are requested (each sample then needs its parameters)."""
        return "correlation" in self.operations

    @property
    def chaos(self) -> bool:
        """True when a polynomial chaos is fitted (each sample then needs its parameters)."""
        return "chaos" in self.operations

    @property
    def needs_parameters(self) -> bool:
        """True when each sample's statistics need its simulation's parameters (JOB)."""
        return self.correlation or self.chaos

    @property
    def job_width(self) -> int:
        """Values a JOB must carry for the statistics: p, or with Sobol the group's draws A
        and B (2p), from which every member's point follows (C_k: A with parameter k of B)."""
        return self.parameters * (2 if self.sobol else 1)

    @property
    def job_widths(self) -> tuple[int, ...]:
        """Values a JOB may carry: p; with Sobol also 2p (Melissa 0.6 launchers send a group's
        A draw only, melissa-nb run A then B), only 2p when a chaos needs every member's point."""
        if self.sobol and self.chaos:
            return (self.job_width,)
        return tuple(sorted({self.parameters, self.job_width}))

    def chaos_on(self, field: str) -> bool:
        """True when the polynomial chaos is fitted on `field`."""
        return self.chaos and (not self.chaos_fields or field in self.chaos_fields)

    def for_field(self, field: str) -> ServerConfig:
        """The settings of `field`'s statistics and results: without chaos when --chaos-fields
        leaves it out."""
        if not self.chaos or self.chaos_on(field):
            return self
        return replace(self, operations=tuple(op for op in self.operations if op != "chaos"))

    @property
    def chaos_steps(self) -> tuple[int, ...]:
        """The timesteps the chaos is fitted at, in increasing order."""
        return tuple(sorted(self.chaos_timesteps)) or tuple(range(self.timesteps))

    @property
    def laws(self) -> tuple[Law, ...]:
        """Each parameter's law, for the chaos basis."""
        return read_laws(self.chaos_laws)

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
        """True when any statistic other than Sobol indices, correlations and chaos is requested."""
        return any(op not in ("sobol", "correlation", "chaos") for op in self.operations)

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
        """Host simulations reach this rank at (port table, SERVER message): --advertise (an
        interface name stands for its IPv4 address), else the bind address or host name."""
        if self.advertise is not None:
            return interface_address(self.advertise) or self.advertise
        if self.bind_address in ("0.0.0.0", "*", "::"):
            return socket.gethostname()
        return self.bind_address

    @property
    def parameter_labels(self) -> tuple[str, ...]:
        """The parameters' names in the results: --parameter-names, else p1, p2, ..."""
        return self.parameter_names or tuple(f"p{k}" for k in range(1, self.parameters + 1))

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
        return melissa_data_port(self.data_port, local_index, self.reserved_ports())

    def shm_prefix(self) -> str:
        """Prefix of every shared-memory block name of this study."""
        return f"melissa_nb_{self.study_id}_"
