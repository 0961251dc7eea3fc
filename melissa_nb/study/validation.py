"""`melissa-nb validate STUDY --points N`: the study's polynomial chaos against simulations run
at new points. The study's own command runs at N points drawn afresh (the study's sampling with
another seed); an embedded server (the real one, no statistics) hands each field vector over as
it streams, and the surrogate's prediction at that simulation's parameters is compared with it
at every fitted timestep: nothing is written to disk but a summary.

Per field: 1 - Q2 = sum (y - y_hat)^2 / sum (y - mean y)^2 over simulations, fitted timesteps and
cells (0: exact; 1: no better than the mean), the RMS and the largest error (where), and the
fit's own estimate beside them (chaos_error, weighted by each cell's chaos_variance)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress

from melissa_nb.embedded import MelissaServer, ServerStatus, SimulationData
from melissa_nb.errors import ConfigurationError, MelissaError, StudyError
from melissa_nb.ports import free_port
from melissa_nb.results.surrogate import Surrogate, load_surrogate
from melissa_nb.server.config import ServerConfig
from melissa_nb.study.config import StudyConfig, load_study
from melissa_nb.study.jobs import LocalJob, LocalJobs
from melissa_nb.study.sampling import to_parameters, unit_sample
from melissa_nb.study.simulation_task import simulation_task

SEED_OFFSET = 1_000_003  # the validation points' seed: the study's plus this, unless --seed


@dataclass
class FieldCheck:
    """The sums of one field's comparison, per fitted timestep and cell."""

    surrogate: Surrogate
    steps: list[int]
    squared_error: np.ndarray  # sum (y - y_hat)^2
    deviation: np.ndarray  # sum (y - c0): c0, the chaos mean, keeps the sums small
    squared_deviation: np.ndarray  # sum (y - c0)^2
    added: np.ndarray  # simulations compared per fitted timestep
    worst: tuple[float, int, int, int] = (0.0, -1, -1, -1)  # |error|, simulation, step, cell
    per_simulation: dict[int, float] = field(default_factory=dict)  # its sum of squared errors

    @classmethod
    def of(cls, surrogate: Surrogate) -> FieldCheck:
        steps = surrogate.fitted_steps
        shape = (len(steps), surrogate.coefficients.shape[2])
        zeros = (np.zeros(shape) for _ in range(3))
        return cls(surrogate, steps, *zeros, np.zeros(len(steps)))

    def add(self, simulation: int, step: int, values: np.ndarray, predicted: np.ndarray) -> None:
        """One simulation's field at one fitted timestep against the prediction."""
        row = self.steps.index(step)
        error = values - predicted
        shifted = values - self.surrogate.coefficients[step, 0]
        self.squared_error[row] += error**2
        self.deviation[row] += shifted
        self.squared_deviation[row] += shifted**2
        self.added[row] += 1
        self.per_simulation[simulation] = self.per_simulation.get(simulation, 0.0) + float(
            error @ error
        )
        cell = int(np.argmax(np.abs(error)))
        if abs(error[cell]) > self.worst[0]:
            self.worst = (float(abs(error[cell])), simulation, step, cell)

    def summary(self) -> dict[str, float | int | list[int]]:
        """1 - Q2, RMS, the largest error and where, the fit's own estimate."""
        added = self.added[:, None]
        spread = self.squared_deviation - self.deviation**2 / np.maximum(added, 1)
        results = self.surrogate.field.variables
        variance = results["chaos_variance"][self.steps]
        estimate = np.nansum(results["chaos_error"][self.steps] * variance) / np.nansum(variance)
        return {
            "one_minus_q2": float(self.squared_error.sum() / spread.sum()),
            "rms_error": float(np.sqrt(self.squared_error.sum() / (added.sum() * spread.shape[1]))),
            "max_error": self.worst[0],
            "max_error_at": list(self.worst[1:]),
            "chaos_error_estimate": float(estimate),
            "compared": int(self.added.min()),
        }


class Validation:
    """The validation simulations, their fields as they arrive, and the comparison."""

    def __init__(self, config: StudyConfig, points: np.ndarray, checks: dict[str, FieldCheck]):
        self.config = config
        self.points = points
        self.checks = checks
        self.bases: dict[tuple[int, str], np.ndarray] = {}  # (simulation, field) -> (P,)
        self.pieces: dict[tuple[int, str, int], dict[int, np.ndarray]] = {}
        self.failed: dict[int, str] = {}

    def prediction(self, simulation: int, name: str, timestep: int) -> np.ndarray:
        """(cells,): the surrogate of `name` at the simulation's point and `timestep` (its
        basis kept, P numbers, not its field)."""
        surrogate = self.checks[name].surrogate
        key = (simulation, name)
        if key not in self.bases:
            values = dict(zip(self.config.parameter_names, self.points[simulation], strict=True))
            self.bases[key] = surrogate.basis(values)
        return self.bases[key] @ surrogate.coefficients[timestep]

    def receive(self, data: SimulationData) -> None:
        """One client rank's vector: compared once every rank of that timestep is in (the
        result files hold the cells in client-rank order)."""
        name = data.field_name
        if name not in self.checks:
            return
        key = (data.simulation_id, name, data.timestep)
        pieces = self.pieces.setdefault(key, {})
        pieces[data.client_rank] = np.array(data.data)
        cells = self.checks[name].surrogate.coefficients.shape[2]
        if sum(piece.size for piece in pieces.values()) == cells:
            values = np.concatenate([pieces[rank] for rank in sorted(pieces)])
            del self.pieces[key]
            if data.timestep in self.checks[name].steps:
                predicted = self.prediction(data.simulation_id, name, data.timestep)
                self.checks[name].add(data.simulation_id, data.timestep, values, predicted)


def validation_points(config: StudyConfig, count: int, seed: int | None) -> np.ndarray:
    """`count` new points of the study's parameters (its sampling, another seed)."""
    method = (
        "monte_carlo" if config.sampling == "sobol" and count & (count - 1) else config.sampling
    )
    chosen = config.seed + SEED_OFFSET if seed is None else seed
    unit = unit_sample(method, count, len(config.parameters), chosen)
    return to_parameters(unit, config.parameters)


def run_validation(
    study: str | Path, count: int, seed: int | None = None, show: bool = True
) -> dict[str, object]:
    """Run the validation and return its summary (also written to
    `<output>/validation/validation.json`)."""
    config = load_study(study)
    if config.chaos is None:
        raise ConfigurationError(f"{study}: no [study] chaos to validate")
    if count < 2:
        raise ConfigurationError(f"--points {count}: at least 2 (1 - Q2 needs their spread)")
    files = {name: config.output_dir / f"{name}.nc" for name in config.chaos.fields}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise ConfigurationError(
            f"no results to validate: {', '.join(missing)} missing (run the study first: "
            f"melissa-nb run {study})"
        )
    checks = {name: FieldCheck.of(load_surrogate(path)) for name, path in files.items()}
    points = validation_points(config, count, seed)
    validation = Validation(config, points, checks)
    directory = config.output_dir / "validation"
    (directory / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    server_config = ServerConfig(
        sampling_size=count,
        timesteps=config.timesteps,
        field_names=config.fields,
        statistics=False,
        output_dir=directory,
        connection_port=port,
        timeout=config.simulation_timeout,
        verbosity=0,
    )
    with MelissaServer(config=server_config) as server:
        drive(validation, server, ("127.0.0.1", port), directory / "logs", show)
        server.stop()
    summary: dict[str, object] = {
        "points": points.tolist(),
        "parameters": list(config.parameter_names),
        "failed": {str(k): v for k, v in validation.failed.items()},
        "fields": {name: check.summary() for name, check in checks.items()},
    }
    (directory / "validation.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def drive(
    validation: Validation,
    server: MelissaServer,
    address: tuple[str, int],
    log_dir: Path,
    show: bool,
) -> None:
    """Run the simulations `at_once` at a time, each within the simulation timeout, the whole
    within the study timeout, and hand every vector over as it comes."""
    config, count = validation.config, len(validation.points)
    jobs = LocalJobs()
    queue = list(range(count))
    running: dict[int, tuple[LocalJob, float]] = {}
    deadline = time.monotonic() + config.study_timeout
    ended = 0
    try:
        with Progress(disable=not show, transient=True) as progress:
            bar = progress.add_task("validation simulations", total=count)
            while queue or running:
                if time.monotonic() > deadline:
                    raise StudyError(f"validation: past the study timeout {config.study_timeout} s")
                while queue and len(running) < config.at_once:
                    simulation = queue.pop(0)
                    task = simulation_task(
                        config, jobs, simulation, validation.points[simulation], address, log_dir
                    )
                    running[simulation] = (
                        jobs.submit("validation", [task], config.working_dir),
                        time.monotonic(),
                    )
                status = server.run(timeout=100)
                while isinstance(status, SimulationData):
                    validation.receive(status)
                    status = server.run(timeout=0)
                for simulation, (job, started) in list(running.items()):
                    code = job.poll()
                    if code is None and time.monotonic() - started > config.simulation_timeout:
                        job.stop()
                        code = -1
                    if code is not None:
                        del running[simulation]
                        ended += 1
                        progress.update(bar, completed=ended)
                        if code != 0:
                            validation.failed[simulation] = f"exit code {code}"
            drain(validation, server)
    finally:
        for job, _ in running.values():
            job.stop()
        jobs.close()


def drain(validation: Validation, server: MelissaServer, seconds: float = 10.0) -> None:
    """The vectors still queued once every simulation ended: until the server has every
    timestep, or every simulation that ran well was compared (bounded wait)."""
    expected = len(validation.points) - len(validation.failed)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = server.run(timeout=100)
        if isinstance(status, SimulationData):
            validation.receive(status)
        elif status is ServerStatus.FINISHED or all(
            check.added.min(initial=expected) >= expected for check in validation.checks.values()
        ):
            return


def print_summary(summary: dict[str, object], console: Console) -> None:
    """One line per field."""
    fields = summary["fields"]
    assert isinstance(fields, dict)
    for name, result in fields.items():
        worst = result["max_error_at"]
        console.print(
            f"{name}: 1 - Q2 = {result['one_minus_q2']:.3g} over {result['compared']} new "
            f"simulations (the fit's own estimate: {result['chaos_error_estimate']:.3g}); RMS "
            f"error {result['rms_error']:.3g}, largest {result['max_error']:.3g} (simulation "
            f"{worst[0]}, timestep {worst[1]}, cell {worst[2]})",
            markup=False,
        )
    failed = summary["failed"]
    if failed:
        console.print(f"simulations that failed (left out): {failed}", markup=False)


def validate_command(study: str, points: int, seed: int | None) -> int:
    """`melissa-nb validate`: run, print, exit 0 (2 on a bad study or option, 1 on a failure)."""
    console = Console(soft_wrap=True)
    errors = Console(stderr=True, soft_wrap=True)
    try:
        summary = run_validation(study, points, seed)
    except ConfigurationError as error:
        errors.print(f"error: {error}", markup=False)
        return 2
    except (MelissaError, OSError) as error:  # a simulation or the server failed, a bad file
        errors.print(f"error: {error}", markup=False)
        return 1
    print_summary(summary, console)
    return 0
