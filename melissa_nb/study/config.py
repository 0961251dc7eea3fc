"""The study file (TOML): what to sample, what to run, what to compute, where to write it.

`load_study(path)` reads and validates a study file into a frozen `StudyConfig`. Every key is
checked: a missing, mistyped, out-of-range or unknown key raises `ConfigurationError` naming the
key (`[section] key`) and saying what is expected. docs/study.md documents the format.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import string
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melissa_nb.errors import ConfigurationError
from melissa_nb.server.operation_checks import OPERATIONS
from melissa_nb.study.chaos_config import ChaosConfig, chaos_refusal, read_chaos
from melissa_nb.study.scheduler_config import SchedulerConfig, read_scheduler
from melissa_nb.study.toml_table import REQUIRED, TomlTable

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib is 3.11+; tomli is the same parser
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "uniform": ("low", "high"),
    "loguniform": ("low", "high"),
    "normal": ("mean", "std"),
}
SAMPLINGS = ("monte_carlo", "latin_hypercube", "sobol")
# The server's operations a study lists in `statistics` (sobol and chaos have keys of their own;
# correlation is for Monte Carlo studies, sobol = false).
GENERAL_STATISTICS = tuple(op for op in OPERATIONS if op not in ("sobol", "chaos"))
PYTHON_WORDS = ("python", "python3")
SPREAD = 40.0  # standard deviations a normal draw may reach: its samples must stay finite
SIMULATION_BYTES = 2048  # what the runner keeps per simulation of the design (measured ~1 KiB)
_FIELD_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,127}")


@dataclass(frozen=True)
class Parameter:
    """One uncertain input: its name (a placeholder in the command) and its distribution."""

    name: str
    distribution: str
    arguments: tuple[float, float]

    def describe(self) -> str:
        """`uniform(low=100, high=200)`: the distribution as written in the study file."""
        names = DISTRIBUTIONS[self.distribution]
        pairs = zip(names, self.arguments, strict=True)
        values = ", ".join(f"{key}={value:g}" for key, value in pairs)
        return f"{self.distribution}({values})"


@dataclass(frozen=True)
class StudyConfig:
    """A validated study: every setting of the runner, the server and the simulations."""

    path: Path
    name: str
    output_dir: Path
    parameters: tuple[Parameter, ...]
    sample_size: int
    sampling: str
    seed: int
    sobol: bool
    fields: tuple[str, ...]
    statistics: tuple[str, ...]
    thresholds: tuple[float, ...]
    quantiles: tuple[float, ...]
    timesteps: int
    grid_shape: tuple[int, ...] | None
    study_timeout: float
    command: tuple[str, ...]
    working_dir: Path
    at_once: int
    simulation_timeout: float
    retries: int
    server_ranks: int
    server_threads: int
    checkpoint_interval: float
    confidence: float
    verbosity: int
    server_restarts: int = 2
    heartbeat: float = 20.0
    target_width: float | None = None
    server_script: Path | None = None
    auth: bool = False  # [server] auth: CURVE on the data links (server --auth)
    scheduler: SchedulerConfig = SchedulerConfig()
    units: tuple[tuple[str, str], ...] = ()  # (field, its units) given in [study] units
    simulation_ranks: int = 1  # [simulation] ranks: MPI processes of one simulation
    server_nodes: int | None = None  # [server] nodes: the server job spread over this many
    advertise: str | None = None  # [server] advertise: interface (or host) simulations reach
    chaos: ChaosConfig | None = None  # [study] chaos = { degree = d, ... }

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Parameter names in study-file order (the order of JOB values and Sobol C_k)."""
        return tuple(parameter.name for parameter in self.parameters)

    @property
    def group_size(self) -> int:
        """Simulations per sample: p + 2 pick-freeze members with Sobol, else 1."""
        return len(self.parameters) + 2 if self.sobol else 1

    @property
    def operations(self) -> tuple[str, ...]:
        """The server's `-o` list: the general statistics, plus `sobol` and `chaos` when on."""
        return (
            self.statistics
            + (("sobol",) if self.sobol else ())
            + (("chaos",) if self.chaos else ())
        )

    @property
    def chaos_laws(self) -> tuple[str, ...]:
        """The server's `--chaos-laws`: each parameter's law, `name,a,b`."""
        return tuple(
            f"{parameter.distribution},{parameter.arguments[0]!r},{parameter.arguments[1]!r}"
            for parameter in self.parameters
        )

    def command_for(self, values: dict[str, float]) -> list[str]:
        """The simulation's argv with every `{name}` placeholder replaced by its value.

        Values are written with `repr`, which round-trips a float exactly, so a simulation
        re-run from parameters.csv sees the very same inputs.
        """
        texts = {name: repr(float(value)) for name, value in values.items()}
        return [word.format(**texts) for word in self.command]


def _read_parameters(table: TomlTable) -> tuple[Parameter, ...]:
    raw = table.get("parameters", REQUIRED)
    if not isinstance(raw, dict) or not raw:
        raise table.fail("parameters", "a table of at least one parameter", raw)
    parameters = []
    for name, spec in raw.items():
        if not name.isidentifier():
            raise ConfigurationError(
                f"[parameters] {name!r}: a parameter name must be an "
                "identifier (letters, digits, underscores)"
            )
        entry = TomlTable(spec, f"parameters.{name}")
        distribution = entry.text("distribution", REQUIRED, tuple(DISTRIBUTIONS))
        first, second = (entry.number(key, REQUIRED) for key in DISTRIBUTIONS[distribution])
        entry.finish()
        if distribution == "normal" and second <= 0:
            raise entry.fail("std", "a number > 0", second)
        if distribution in ("uniform", "loguniform") and second <= first:
            raise entry.fail("high", f"a number > low ({first:g})", second)
        if distribution == "loguniform" and first <= 0:
            raise entry.fail("low", "a number > 0 (log-uniform)", first)
        if distribution == "uniform":
            reaches = (second - first,)
        else:  # a log-uniform draw stays within its (finite) bounds
            reaches = (first + SPREAD * second, first - SPREAD * second)
        if distribution != "loguniform" and not all(map(math.isfinite, reaches)):
            raise ConfigurationError(
                f"[parameters.{name}] {distribution}{(first, second)}: its samples would not "
                "all be finite numbers (the range overflows a double)"
            )
        parameters.append(Parameter(name, distribution, (first, second)))
    return tuple(parameters)


def _read_command(table: TomlTable, names: tuple[str, ...]) -> tuple[str, ...]:
    command = table.text("command", REQUIRED)
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise table.fail("command", f"a shell-like command line ({error})", command) from None
    for word in words:
        try:
            fields = [
                (name, spec, conversion)
                for _, name, spec, conversion in string.Formatter().parse(word)
                if name is not None
            ]
        except ValueError as error:
            raise table.fail("command", f"valid {{name}} placeholders ({error})", command) from None
        if any(not name or spec or conversion for name, spec, conversion in fields):
            raise table.fail(
                "command", "plain {name} placeholders (no {}, no format or conversion)", command
            )
        for placeholder, _, _ in fields:
            if placeholder not in names:
                raise table.fail(
                    "command",
                    f"placeholders among the parameters {list(names)}; "
                    f"unknown placeholder {{{placeholder}}}",
                    command,
                )
    # "python" means the interpreter running the study, not whatever is first on PATH.
    if words and words[0] in PYTHON_WORDS:
        words[0] = sys.executable
    return tuple(words)


def _check_program(table: TomlTable, words: tuple[str, ...], working_dir: Path) -> None:
    """The simulation's program runs, before anything starts: an executable on PATH or in the
    working directory, and for `python script.py` the script too (else every simulation fails
    and the study only shows "failed" counts)."""
    if not words:
        raise table.fail("command", "a program to run", "")
    program = words[0]
    if "/" in program:
        found = (working_dir / program).is_file() and os.access(working_dir / program, os.X_OK)
    else:
        found = shutil.which(program) is not None
    if not found:
        raise table.fail("command", f"a program on PATH or executable in {working_dir}", program)
    script = words[1] if len(words) > 1 else ""
    if program == sys.executable and script.endswith(".py") and "{" not in script:
        if not (working_dir / script).is_file():
            raise table.fail("command", f"a Python script that exists in {working_dir}", script)


def _read_list(table: TomlTable, key: str, default: list[Any], kind: str) -> list[Any]:
    values = table.array(key, default)
    for value in values:
        wrong = (
            (not isinstance(value, str) or not value)
            if kind == "text"
            else (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            )
        )
        if wrong:
            raise table.fail(
                key, f"an array of {'strings' if kind == 'text' else 'numbers'}", values
            )
    if len(set(values)) != len(values):
        raise table.fail(key, "an array without duplicates", values)
    return values


def _read_units(study: TomlTable, fields: list[str]) -> tuple[tuple[str, str], ...]:
    """`[study] units = { temperature = "K" }`: each field's units (UDUNITS text, as CF)."""
    units = study.get("units", {})
    if not isinstance(units, dict) or any(
        name not in fields or not isinstance(text, str) or not text.strip()
        for name, text in units.items()
    ):
        raise study.fail("units", f"a table of units by field name, fields among {fields}", units)
    return tuple(units.items())


def parse_study(data: dict[str, Any], path: Path) -> StudyConfig:
    """Validate the decoded TOML `data` of the study file at `path`."""
    top = TomlTable(data, "top level")
    study = top.table("study")
    simulation = top.table("simulation")
    server = TomlTable(top.get("server", {}), "server")
    scheduler = read_scheduler(TomlTable(top.get("scheduler", {}), "scheduler"))
    parameters = _read_parameters(top)
    top.finish()
    names = tuple(parameter.name for parameter in parameters)
    base = path.parent

    sobol = study.boolean("sobol", False)
    statistics = _read_list(study, "statistics", ["mean", "variance"], "text")
    for statistic in statistics:
        if statistic not in GENERAL_STATISTICS:
            raise study.fail(
                "statistics",
                f"names among {list(GENERAL_STATISTICS)} (Sobol "
                "indices are switched on by `sobol = true`)",
                statistic,
            )
    if sobol and "correlation" in statistics:
        raise study.fail(
            "statistics",
            "no 'correlation' with sobol = true (correlations are for Monte Carlo studies; "
            "pick-freeze groups give Sobol indices)",
            statistics,
        )
    thresholds = _read_list(study, "thresholds", [], "number")
    quantiles = _read_list(study, "quantiles", [], "number")
    if ("threshold" in statistics) != bool(thresholds):
        raise study.fail(
            "thresholds", "a non-empty array exactly when statistics lists 'threshold'", thresholds
        )
    if ("quantile" in statistics) != bool(quantiles):
        raise study.fail(
            "quantiles", "a non-empty array exactly when statistics lists 'quantile'", quantiles
        )
    if any(not 0 < order < 1 for order in quantiles):
        raise study.fail("quantiles", "orders strictly between 0 and 1", quantiles)
    if not statistics and not sobol:
        raise study.fail("statistics", "at least one statistic (or sobol = true)", statistics)
    fields = _read_list(study, "fields", REQUIRED, "text")
    timesteps = study.integer("timesteps", REQUIRED, minimum=1)
    if not fields or any(not _FIELD_NAME.fullmatch(field) for field in fields):
        raise study.fail(
            "fields",
            "at least one field name, each of 1..127 letters, digits, '_', '-' or '.'",
            fields,
        )
    grid = study.get("grid_shape", None)
    if grid is not None and (
        not isinstance(grid, list)
        or not 1 <= len(grid) <= 2
        or any(isinstance(size, bool) or not isinstance(size, int) or size < 1 for size in grid)
    ):
        raise study.fail("grid_shape", "an array of one or two positive integers", grid)

    config = StudyConfig(
        path=path,
        name=study.text("name", path.stem),
        output_dir=(base / study.text("output_dir", "results")).resolve(),
        parameters=parameters,
        sample_size=study.integer("sample_size", REQUIRED, minimum=1),
        sampling=study.text("sampling", "monte_carlo", SAMPLINGS),
        seed=study.integer("seed", 0),
        sobol=sobol,
        fields=tuple(fields),
        statistics=tuple(statistics),
        thresholds=tuple(float(value) for value in thresholds),
        quantiles=tuple(float(value) for value in quantiles),
        timesteps=timesteps,
        grid_shape=tuple(grid) if grid is not None else None,
        study_timeout=study.number("timeout", 3600.0, minimum=0, exclusive=True),
        command=_read_command(simulation, names),
        working_dir=(base / simulation.text("working_dir", ".")).resolve(),
        at_once=simulation.integer("at_once", 2, minimum=1),
        simulation_timeout=simulation.number("timeout", 300.0, minimum=0, exclusive=True),
        retries=simulation.integer("retries", 2, minimum=0),
        server_ranks=server.integer("ranks", 1, minimum=1),
        server_threads=server.integer("threads", 1, minimum=1),
        checkpoint_interval=server.number("checkpoint_interval", 300.0, minimum=0, exclusive=True),
        confidence=server.number("confidence", 0.95, minimum=0, exclusive=True),
        verbosity=server.integer("verbosity", 1, minimum=0),
        server_restarts=server.integer("restarts", 2, minimum=0),
        heartbeat=server.number("heartbeat", 20.0, minimum=0, exclusive=True),
        target_width=(
            study.number("target_width", minimum=0, exclusive=True)
            if study.get("target_width", None) is not None
            else None
        ),
        server_script=(
            (base / server.text("script")).resolve()
            if server.get("script", None) is not None
            else None
        ),
        auth=server.boolean("auth", False),
        scheduler=scheduler,
        units=_read_units(study, fields),
        simulation_ranks=simulation.integer("ranks", 1, minimum=1),
        server_nodes=(
            server.integer("nodes", minimum=1) if server.get("nodes", None) is not None else None
        ),
        advertise=server.text("advertise") if server.get("advertise", None) is not None else None,
        chaos=read_chaos(
            study, len(parameters), tuple(fields), timesteps, server.get("nodes", None) or 1
        ),
    )
    if config.chaos:
        refusal = chaos_refusal(
            config.chaos,
            config.sample_size * config.group_size,
            config.group_size,
            len(parameters),
            math.prod(config.grid_shape) if config.grid_shape else None,
        )
        if refusal is not None:
            key, expected = refusal
            raise study.fail(key, expected, study.get(key, None))
    if config.advertise is not None and not scheduler.cluster:
        raise server.fail(
            "advertise",
            'a study with [scheduler] kind = "slurm" (locally everything is on loopback)',
            config.advertise,
        )
    if config.server_nodes is not None:
        if not scheduler.cluster:
            raise server.fail(
                "nodes",
                'a study with [scheduler] kind = "slurm" (locally every rank runs here)',
                config.server_nodes,
            )
        if config.server_nodes > config.server_ranks:
            raise server.fail(
                "nodes", f"at most [server] ranks = {config.server_ranks}", config.server_nodes
            )
    if config.target_width is not None and not sobol:
        raise study.fail(
            "target_width",
            "no target without sobol = true (it is a Sobol interval width)",
            config.target_width,
        )
    if config.confidence >= 1:
        raise server.fail("confidence", "a level strictly between 0 and 1", config.confidence)
    if sobol and config.sample_size < 4:
        raise study.fail(
            "sample_size",
            "at least 4 groups with sobol = true (Fisher-z intervals need n >= 4)",
            config.sample_size,
        )
    if not config.working_dir.is_dir():
        raise simulation.fail("working_dir", "an existing directory", str(config.working_dir))
    _check_output_dir(study, config.output_dir)
    _check_design_size(study, config)
    if config.server_script is not None and not config.server_script.is_file():
        raise server.fail(
            "script", "an existing file (relative to the study file)", str(config.server_script)
        )
    for table in (study, simulation, server):
        table.finish()
    _check_program(simulation, config.command, config.working_dir)
    return config


def _check_output_dir(study: TomlTable, output_dir: Path) -> None:
    """The output directory is a directory, or can be made one (no file on its way)."""
    for place in (output_dir, *output_dir.parents):
        if place.exists():
            if not place.is_dir():
                raise study.fail("output_dir", f"a directory ({place} is a file)", str(output_dir))
            return


def _check_design_size(study: TomlTable, config: StudyConfig) -> None:
    """The design fits in memory before it is drawn (the runner keeps every simulation)."""
    simulations = config.sample_size * config.group_size
    needed = simulations * (SIMULATION_BYTES + 8 * len(config.parameters))
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if needed > available // 2:
        raise study.fail(
            "sample_size",
            f"a design that fits in memory: {simulations:,} simulations need about "
            f"{needed / 2**30:,.1f} GiB, half the available memory is "
            f"{available / 2**31:,.1f} GiB",
            config.sample_size,
        )


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate the study file at `path` (relative paths inside are from its folder)."""
    path = Path(path).resolve()
    if tomllib is None:
        raise ConfigurationError(
            "reading a study file needs Python >= 3.11 (tomllib) or the tomli package"
        )
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigurationError(f"study file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(f"study file {str(path)!r} is not valid TOML: {error}") from None
    return parse_study(data, path)
