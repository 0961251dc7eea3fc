"""A result file's polynomial chaos as a surrogate: the field at parameters never run, every
timestep, from the stored coefficients (`chaos_coefficients`, `chaos_laws`, `chaos_degree`), and
the `melissa-nb predict` command that writes it to netCDF or draws it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.api.chaos import Law, inside_support, parse_law
from melissa_nb.kernels.chaos import LAWS, chaos_basis, chaos_multi_indices, standardise
from melissa_nb.netcdf import GRID_DIMENSIONS, NetCDFStore, Variable
from melissa_nb.results.fields import FieldResults, load_field, result_files


@dataclass(frozen=True)
class Surrogate:
    """The polynomial chaos of one field: coefficients (timesteps, P, cells) in the basis of
    `laws` and `degree` (melissa_nb.kernels.chaos)."""

    field: FieldResults
    laws: tuple[Law, ...]
    degree: int
    coefficients: np.ndarray

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return self.field.parameter_names

    @property
    def fitted_steps(self) -> list[int]:
        """The timesteps whose chaos was fitted (elsewhere its coefficients are NaN: left out by
        `chaos.timesteps`, or too few samples)."""
        return np.flatnonzero(np.isfinite(self.coefficients).all(axis=(1, 2))).tolist()

    def timestep(self, timestep: int) -> int:
        """`timestep` checked to be fitted; -1 (or any negative) counts from the last fitted."""
        fitted = self.fitted_steps
        if timestep < 0 and -len(fitted) <= timestep:
            return fitted[timestep]
        if timestep not in fitted:
            raise ConfigurationError(
                f"--timestep {timestep}: the chaos of {self.field.name} was fitted at timesteps "
                f"{fitted or 'none'}"
            )
        return timestep

    def predict(self, parameters: Mapping[str, float]) -> np.ndarray:
        """(timesteps, cells): the field at `parameters` (every parameter by name, once)."""
        return np.einsum("p,tpc->tc", self.basis(parameters), self.coefficients)

    def basis(self, parameters: Mapping[str, float]) -> np.ndarray:
        """(P,): the basis polynomials at `parameters`; the field at timestep t is
        basis @ coefficients[t]."""
        names = self.parameter_names
        missing = [name for name in names if name not in parameters]
        unknown = [name for name in parameters if name not in names]
        if missing or unknown:
            raise ConfigurationError(
                f"give every parameter of {self.field.path.name} once ({', '.join(names)}): "
                + "; ".join(
                    part
                    for part in (
                        f"missing {', '.join(missing)}" if missing else "",
                        f"unknown {', '.join(unknown)}" if unknown else "",
                    )
                    if part
                )
            )
        values = [float(parameters[name]) for name in names]
        if not inside_support(values, self.laws):
            raise ConfigurationError(f"parameters {values} are outside their laws {self.laws}")
        codes = np.array([LAWS[law] for law, _, _ in self.laws], dtype=np.int64)
        inputs = standardise(
            np.array([values]),
            codes,
            np.array([a for _, a, _ in self.laws]),
            np.array([b for _, _, b in self.laws]),
        )
        return chaos_basis(inputs, codes, chaos_multi_indices(len(names), self.degree))[0]


def load_surrogate(path: str | Path) -> Surrogate:
    """The surrogate of one result file (ConfigurationError when it holds no chaos)."""
    field = load_field(path)
    text = field.attributes.get("chaos_laws")
    if "chaos_coefficients" not in field.variables or not isinstance(text, str):
        raise ConfigurationError(
            f"{field.path} holds no polynomial chaos (run the study with "
            "[study] chaos = { degree = d })"
        )
    laws = tuple(parse_law(item) for item in text.split(":"))
    degree = int(field.attributes["chaos_degree"])
    coefficients = field.variables["chaos_coefficients"]
    with NetCDFStore(field.path) as store:
        stored = store.read("chaos_multi_index")
    if not np.array_equal(stored, chaos_multi_indices(len(laws), degree)):
        raise ConfigurationError(f"{field.path}: chaos_multi_index is not this version's order")
    return Surrogate(field, laws, degree, coefficients)


def _target_file(target: str, field: str | None) -> Path:
    """The result file `target` names, or the chaos field of the results directory."""
    path = Path(target)
    if path.is_file():
        return path
    files = [item for item in result_files(path) if field is None or item.stem == field]
    if field is not None and not files:
        raise ConfigurationError(f"no {field}.nc in {target}")
    with_chaos = [item for item in files if _has_chaos(item)]
    if len(with_chaos) != 1:
        names = ", ".join(item.stem for item in with_chaos) or "none"
        raise ConfigurationError(
            f"{target}: fields with a polynomial chaos: {names}; name one file (or --field)"
        )
    return with_chaos[0]


def _has_chaos(path: Path) -> bool:
    try:
        with NetCDFStore(path) as store:
            return "chaos_laws" in store.attributes()
    except OSError:
        return False


def parse_settings(settings: Sequence[str]) -> dict[str, float]:
    """`--set NAME=VALUE` options as a mapping (ConfigurationError naming a bad one)."""
    values: dict[str, float] = {}
    for setting in settings:
        name, sign, value = setting.partition("=")
        try:
            if not sign or name.strip() in values:
                raise ValueError
            values[name.strip()] = float(value)
        except ValueError:
            raise ConfigurationError(
                f"--set {setting!r}: expected NAME=NUMBER, once per name"
            ) from None
    return values


def write_prediction(
    path: Path, surrogate: Surrogate, parameters: dict[str, float], field: np.ndarray
) -> None:
    """The predicted field (time, cells or row, column) with its parameters as attributes."""
    grid = surrogate.field.grid_shape
    cells = GRID_DIMENSIONS if grid and len(grid) == 2 else ("cell",)
    sizes = dict(zip(cells, grid, strict=True)) if len(cells) == 2 else {"cell": field.shape[1]}
    units = surrogate.field.units.get("chaos_mean")
    attributes = {"source_results": str(surrogate.field.path), "Conventions": "CF-1.8"}
    variable = Variable(
        "prediction",
        ("time", *cells),
        "f8",
        {"long_name": f"{surrogate.field.name} from its polynomial chaos"}
        | ({"units": units} if units else {}),
    )
    with NetCDFStore(path, "w") as store:
        store.define(
            {"time": field.shape[0], **sizes},
            [variable],
            attributes | {f"parameter_{name}": value for name, value in parameters.items()},
        )
        shaped = field.reshape(field.shape[0], *sizes.values())
        store.write("prediction", (slice(None),) * shaped.ndim, shaped)


def predict_command(
    target: str,
    settings: Sequence[str],
    field: str | None,
    output: str | None,
    plot: str | None,
    timestep: int,
) -> int:
    """`melissa-nb predict`: print, write (--output) or draw (--plot) the surrogate's field."""
    console = Console(soft_wrap=True)
    try:
        surrogate = load_surrogate(_target_file(target, field))
        parameters = parse_settings(settings)
        predicted = surrogate.predict(parameters)
        step = surrogate.timestep(timestep)
        where = ", ".join(f"{name}={value:g}" for name, value in parameters.items())
        console.print(
            f"{surrogate.field.name} at {where}, timestep {step}: min {predicted[step].min():.6g}, "
            f"mean {predicted[step].mean():.6g}, max {predicted[step].max():.6g}",
            markup=False,
        )
        if output:
            write_prediction(Path(output), surrogate, parameters, predicted)
            console.print(f"written {output}", markup=False)
        if plot:
            from melissa_nb.results.plots import prediction_figure

            prediction_figure(
                surrogate.field, predicted[step], f"{where}, timestep {step}"
            ).savefig(plot, dpi=100)
            console.print(f"drawn {plot}", markup=False)
    except ConfigurationError as error:
        Console(stderr=True, soft_wrap=True).print(f"[red]error[/]: {escape(str(error))}")
        return 2
    return 0
