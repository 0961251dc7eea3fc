"""What a polynomial chaos is worth on the heat example (examples/heat/heat.py, 100 x 100 cells,
100 steps): the Sobol indices of every cell, PCE against Martinez, for the same budgets.

The solver is linear in its five temperatures (implicit Euler on the heat equation with fixed
walls), so T(t) = T0 a(t) + T1 b1(t) + ... + T4 b4(t) exactly, with a = the run at T0 = 1, walls
0, and b_k = the run at T0 = 0, wall k = 1. Hence:
- the reference indices are closed forms: the five laws are alike (uniform 100..200), so
  S_k = ST_k = c_k^2 / sum_j c_j^2 per cell, c = (a, b1, .., b4);
- a simulation's field is that sum (to rounding): a budget of thousands of simulations costs the
  six basis runs.
PCE: `PolynomialChaos` of the largest degree <= 3 whose C(5 + d, d) coefficients are at most N / 2
(a user who does not know the model is linear), on N uniform draws; it holds the model exactly, so
its error is rounding. Martinez: `SobolMartinez` on N // 7 pick-freeze groups. Error: the largest
absolute error over cells and the ten indices (worst) and its mean over cells (mean), at timesteps
10 and 100, root mean square over R replicates. Writes ``chaos_heat.json`` and ``chaos_heat.png``.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np

from bench.figures import error_figure
from bench.live_server import write_json
from bench.timing import machine_info
from melissa_nb.kernels import PolynomialChaos, SobolMartinez
from melissa_nb.kernels.sobol import pick_freeze

HEAT = Path(__file__).resolve().parent.parent / "examples" / "heat" / "heat.py"
SIZE, STEPS = 100, 100
TIMESTEPS = (9, 99)  # after 10 and 100 steps
LOW, HIGH = 100.0, 200.0
BUDGETS = (56, 112, 224, 448, 896, 1792, 3584)
QUICK_BUDGETS = (56, 224)
REPLICATES = 10
LAWS = [("uniform", LOW, HIGH)] * 5


def coefficient_fields() -> np.ndarray:
    """(timesteps, 5, cells): the fields a, b1..b4 of the linear solver at TIMESTEPS."""
    spec = importlib.util.spec_from_file_location("heat", HEAT)
    assert spec is not None and spec.loader is not None
    heat = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(heat)
    runs = [(1.0, (0.0, 0.0, 0.0, 0.0))] + [
        (0.0, tuple(float(k == wall) for k in range(4))) for wall in range(4)
    ]
    fields = [
        [field.ravel().copy() for field in heat.heat(t0, walls, SIZE, STEPS)] for t0, walls in runs
    ]
    return np.array([[run[step] for run in fields] for step in TIMESTEPS])


def degree_for(budget: int) -> int:
    degree = 1
    while degree < 3 and math.comb(5 + degree + 1, 5) <= budget // 2:
        degree += 1
    return degree


def errors(first: np.ndarray, total: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Worst and cell-mean absolute error of (first, total) (5, cells) against the reference."""
    error = np.maximum(np.abs(first - reference), np.abs(total - reference)).max(axis=0)
    return float(error.max()), float(error.mean())


def pce_errors(budget: int, rng: np.random.Generator, fields: np.ndarray, reference: np.ndarray):
    x = rng.uniform(LOW, HIGH, size=(budget, 5))
    chaos = PolynomialChaos(fields.shape[1], LAWS, degree_for(budget))
    chaos.update_batch(x @ fields, x)
    results = chaos.results(["first", "total"])
    return errors(results["first"], results["total"], reference)


def martinez_errors(
    budget: int, rng: np.random.Generator, fields: np.ndarray, reference: np.ndarray
):
    groups = budget // 7
    points = pick_freeze(
        rng.uniform(LOW, HIGH, size=(groups, 5)), rng.uniform(LOW, HIGH, size=(groups, 5))
    )
    sobol = SobolMartinez(fields.shape[1], 5)
    sobol.update_batch(points @ fields)  # (groups, 7, cells)
    return errors(sobol.first, sobol.total, reference)


def draw(records: list[dict[str, float]], path: Path) -> None:
    curves = []
    for step in TIMESTEPS:
        rows = [record for record in records if record["timestep"] == step]
        for key, label, style in (
            ("pce", "polynomial chaos", "o-"),
            ("martinez", "Martinez", "s--"),
        ):
            curves.append(
                (
                    f"{label}, timestep {step}",
                    style,
                    [record["simulations"] for record in rows],
                    [record[f"{key}_worst_rms"] for record in rows],
                )
            )
    error_figure(
        curves,
        "worst error over cells of the 10 indices (RMS)",
        "Sobol maps of the heat example: error against simulations",
        path,
    )


def main(*, quick: bool = False, output_dir: Path) -> Path:
    """Every budget, both methods, R replicates, two timesteps; JSON and figure."""
    coefficients = coefficient_fields()
    rng = np.random.default_rng(2026)
    replicates = 2 if quick else REPLICATES
    records = []
    for step, fields in zip(TIMESTEPS, coefficients, strict=True):
        squares = fields**2
        reference = squares / squares.sum(axis=0)
        for budget in QUICK_BUDGETS if quick else BUDGETS:
            pce = np.array([pce_errors(budget, rng, fields, reference) for _ in range(replicates)])
            martinez = np.array(
                [martinez_errors(budget, rng, fields, reference) for _ in range(replicates)]
            )
            record = {"timestep": step, "simulations": budget, "pce_degree": degree_for(budget)}
            for key, values in (("pce", pce), ("martinez", martinez)):
                rms = np.sqrt(np.mean(values**2, axis=0))
                record |= {f"{key}_worst_rms": float(rms[0]), f"{key}_mean_rms": float(rms[1])}
            records.append(record)
            print(
                f"timestep {step}, {budget} simulations: PCE degree {record['pce_degree']} "
                f"worst {record['pce_worst_rms']:.2e}, Martinez ({budget // 7} groups) worst "
                f"{record['martinez_worst_rms']:.3f} (mean over cells "
                f"{record['martinez_mean_rms']:.3f})"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    draw(records, output_dir / "chaos_heat.png")
    results = {
        "benchmark": "chaos_heat",
        "method": __doc__,
        "machine": machine_info(),
        "quick": quick,
        "replicates": replicates,
        "records": records,
    }
    return write_json(results, output_dir, "chaos_heat")
