"""`PolynomialChaos`: per cell, a least-squares polynomial chaos expansion of the output in the
inputs, fitted on the stream; from it the mean, the variance, Sobol indices of every order, an
error estimate, and the surrogate itself (`predict`). Formulas: `melissa_nb.kernels.chaos`."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.kernels.api.base import (
    FLOAT,
    Layout,
    MergeableStatistic,
    checked_array,
    checked_integer,
    count_layout,
    input_rows,
    padded_batches,
)
from melissa_nb.kernels.chaos import (
    LAWS,
    chaos_basis,
    chaos_coefficients,
    chaos_error,
    chaos_merge,
    chaos_moments,
    chaos_multi_indices,
    chaos_rank_problem,
    chaos_sobol,
    chaos_subsets,
    chaos_update,
    standardise,
)
from melissa_nb.kernels.jit import BATCH

CHAOS_STATE = ("gram", "shift", "projection", "square_sum")
CHAOS_RESULTS = ("coefficients", "mean", "variance", "first", "total", "interactions", "error")
Law = tuple[str, float, float]  # ("uniform", low, high), ("normal", mean, std), ("loguniform", ..)
MAX_TERMS = 10_000  # P beyond this: a Gram matrix of 800 MB and a solve nobody waits for


def checked_laws(laws: Sequence[Law]) -> tuple[Law, ...]:
    """The inputs' laws, each (name, a, b) with a < b (low < high) or b > 0 (std)."""
    if isinstance(laws, (str, bytes)) or not isinstance(laws, Sequence) or not laws:
        raise ConfigurationError(f"laws must be a non-empty sequence of (name, a, b), got {laws!r}")
    checked = []
    for law in laws:
        if not isinstance(law, Sequence) or len(law) != 3 or law[0] not in LAWS:
            raise ConfigurationError(
                f"each law must be (name, a, b) with name among {list(LAWS)}, got {law!r}"
            )
        name, a, b = law
        if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in (a, b)):
            raise ConfigurationError(f"law {law!r} needs two finite numbers")
        if (name == "normal" and not b > 0) or (name != "normal" and not a < b):
            raise ConfigurationError(
                f"law {law!r}: needs std > 0" if name == "normal" else f"law {law!r}: low < high"
            )
        if name == "loguniform" and not a > 0:
            raise ConfigurationError(f"law {law!r}: loguniform needs 0 < low")
        checked.append((str(name), float(a), float(b)))
    return tuple(checked)


def parse_law(item: str) -> Law:
    """A law written `name,a,b` (`uniform,100,200`, `normal,0,1`): the server's --chaos-laws
    items and the result files' `chaos_laws` attribute."""
    words = item.split(",")
    try:
        if len(words) != 3:
            raise ValueError
        return checked_laws([(words[0].strip(), float(words[1]), float(words[2]))])[0]
    except ValueError:
        raise ConfigurationError(
            f"{item!r} is not name,a,b (uniform,LOW,HIGH | normal,MEAN,STD | loguniform,LOW,HIGH)"
        ) from None


def inside_support(parameters: Sequence[float], laws: Sequence[Law]) -> bool:
    """True when every parameter is finite and inside its law's support (loguniform: > 0)."""
    return all(
        math.isfinite(value) and (name != "loguniform" or value > 0)
        for value, (name, _, _) in zip(parameters, laws, strict=True)
    )


class PolynomialChaos(MergeableStatistic):
    """A total-degree ``degree`` polynomial chaos of each cell's output in inputs of ``laws``
    (one (name, a, b) per input: ``("uniform", low, high)``, ``("normal", mean, std)``,
    ``("loguniform", low, high)``), fitted by least squares over every sample folded in.

    Feed each simulation's output (cells,) with its inputs (p,) in their own units. The fit
    needs at least P = C(p + d, d) samples that determine every coefficient; before that the
    results raise a ConfigurationError saying how many are missing.
    """

    def __init__(
        self,
        cells: int,
        laws: Sequence[Law],
        degree: int,
        *,
        arrays: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        settings = {"laws": checked_laws(laws), "degree": checked_integer("degree", degree, 1)}
        terms = math.comb(len(settings["laws"]) + settings["degree"], settings["degree"])
        if terms > MAX_TERMS:
            raise ConfigurationError(
                f"degree {degree} in {len(laws)} inputs has {terms:,} terms, more than "
                f"{MAX_TERMS:,}: lower the degree"
            )
        super().__init__(cells, settings, arrays)
        self.laws: tuple[Law, ...] = settings["laws"]
        self.degree: int = settings["degree"]
        self.parameters = len(self.laws)
        self.multi_indices = chaos_multi_indices(self.parameters, self.degree)
        self._codes = np.array([LAWS[name] for name, _, _ in self.laws], dtype=np.int64)
        self._first = np.array([a for _, a, _ in self.laws])
        self._second = np.array([b for _, _, b in self.laws])

    @staticmethod
    def layout(cells: int, laws: tuple[Law, ...] = (), degree: int = 1) -> Layout:
        """``gram`` (P, P), ``shift`` (cells,), ``projection`` (P, cells), ``square_sum``
        (cells,), ``count``; P = C(p + degree, degree)."""
        terms = math.comb(len(laws) + degree, degree)
        return {
            "gram": ((terms, terms), FLOAT),
            "shift": ((cells,), FLOAT),
            "projection": ((terms, cells), FLOAT),
            "square_sum": ((cells,), FLOAT),
            **count_layout(),
        }

    @property
    def terms(self) -> int:
        """P, the number of coefficients per cell."""
        return self.multi_indices.shape[0]

    def basis(self, parameters: np.ndarray) -> np.ndarray:
        """(k, P): every basis polynomial at each row of ``parameters`` (k, p), in their units."""
        table = checked_array("parameters", parameters, (parameters.shape[0], self.parameters))
        inputs = standardise(table, self._codes, self._first, self._second)
        if not np.all(np.isfinite(inputs)):
            raise ValueError("parameters must be finite and inside their laws' support")
        return chaos_basis(inputs, self._codes, self.multi_indices)

    def update(self, x: np.ndarray, parameters: np.ndarray | None = None) -> None:  # type: ignore[override]
        """Fold one output ``x`` (cells,) of a simulation run with ``parameters`` (p,)."""
        if parameters is None:
            raise TypeError("PolynomialChaos.update needs the simulation's parameters")
        inputs = checked_array("parameters", parameters, (self.parameters,))
        self.update_batch([x], inputs[None, :])

    def update_batch(  # type: ignore[override]
        self, samples: np.ndarray | Sequence[np.ndarray], parameters: np.ndarray
    ) -> None:
        """Fold k outputs (an array (k, cells) or k arrays (cells,)), sample i run with
        ``parameters[i]`` (an array (k, p)): one pass over the state per BATCH samples."""
        rows = input_rows("samples", samples, (self.cells,))
        table = checked_array("parameters", parameters, (len(rows), self.parameters))
        basis = self.basis(table)
        state = self.arrays
        if self.count == 0:  # caller arrays may hold anything before their first sample
            for name in CHAOS_STATE:
                state[name][...] = 0.0
            state["shift"][:] = rows[0]
        for first, chunk, batch in padded_batches(rows):
            padded = np.zeros((BATCH, self.terms))
            padded[:chunk] = basis[first : first + chunk]
            chaos_update(
                padded, batch, chunk, state["shift"], state["projection"], state["square_sum"]
            )
        for values in basis:  # sample by sample: a batch sums exactly as single updates do
            state["gram"] += np.outer(values, values)
        self._advance(len(rows))

    def _merge_state(self, count: int, other: dict[str, np.ndarray], other_count: int) -> None:
        state = self.arrays
        if count == 0:
            for name in CHAOS_STATE:
                state[name][...] = 0.0
        chaos_merge(
            count,
            state["shift"],
            state["projection"],
            state["square_sum"],
            other_count,
            other["shift"],
            other["projection"],
            other["square_sum"],
            other["gram"][:, 0].copy(),
        )
        state["gram"] += other["gram"]

    def rank_problem(self) -> str | None:
        """Why the coefficients cannot be fitted yet (too few or too alike samples), or None."""
        return chaos_rank_problem(self.arrays["gram"], self.count)

    @property
    def coefficients(self) -> np.ndarray:
        """(P, cells): the coefficient of each multi-index (``multi_indices`` rows) per cell."""
        problem = self.rank_problem()
        if problem is not None:
            raise ConfigurationError(f"{self!r}: no fit: {problem}")
        state = self.arrays
        return chaos_coefficients(state["gram"], state["projection"], state["shift"])

    def interaction_sets(self, order: int = 2) -> list[tuple[int, ...]]:
        """The sets of exactly ``order`` inputs whose interaction index ``interactions`` gives
        (in this order)."""
        return chaos_subsets(self.parameters, self.degree, order)

    def result_names(self) -> tuple[str, ...]:
        return CHAOS_RESULTS

    def _all_results(self, names: Sequence[str]) -> Mapping[str, np.ndarray]:
        coefficients = self.coefficients
        state = self.arrays
        mean, variance = chaos_moments(coefficients)
        first, total, interactions = chaos_sobol(
            coefficients, self.multi_indices, self.interaction_sets()
        )
        error = chaos_error(
            state["gram"],
            state["projection"],
            state["square_sum"],
            coefficients,
            state["shift"],
            self.count,
        )
        return {
            "coefficients": coefficients,
            "mean": mean,
            "variance": variance,
            "first": first,
            "total": total,
            "interactions": interactions,
            "error": error,
        }

    def sobol(self, inputs: Sequence[int]) -> np.ndarray:
        """(cells,): the index S_u of the set u = ``inputs`` (any order up to the degree)."""
        subset = tuple(sorted(set(inputs)))
        if not subset or not all(0 <= j < self.parameters for j in subset):
            raise ConfigurationError(f"inputs must be indices in 0..{self.parameters - 1}")
        return chaos_sobol(self.coefficients, self.multi_indices, [subset])[2][0]

    def predict(self, parameters: np.ndarray) -> np.ndarray:
        """(k, cells): the surrogate at each row of ``parameters`` (k, p)."""
        return self.basis(parameters) @ self.coefficients

    @property
    def mean(self) -> np.ndarray:
        return self.results(["mean"])["mean"]

    @property
    def variance(self) -> np.ndarray:
        return self.results(["variance"])["variance"]

    @property
    def first(self) -> np.ndarray:
        return self.results(["first"])["first"]

    @property
    def total(self) -> np.ndarray:
        return self.results(["total"])["total"]

    @property
    def interactions(self) -> np.ndarray:
        return self.results(["interactions"])["interactions"]

    @property
    def error(self) -> np.ndarray:
        return self.results(["error"])["error"]
