"""What a polynomial chaos is worth: simulations needed for a given Sobol accuracy on the
Ishigami function, PCE against Martinez pick-freeze groups, side by side.

For each budget of N simulations and each of R replicates (fresh random designs):
- PCE: `PolynomialChaos` of the largest total degree whose P = C(3 + d, 3) coefficients are at
  most N / 2 (at most degree 12), fitted on N uniform draws;
- Martinez: `SobolMartinez` on N // 5 pick-freeze groups (p + 2 = 5 simulations each: Y_A, Y_B,
  Y_C1..Y_C3).
Error: the largest absolute error over the three first-order and three total indices against
their closed forms (S = 0.3139, 0.4424, 0; ST = 0.5576, 0.4424, 0.2437), root mean square over
the replicates. Results go to ``chaos_worth.json`` and the figure ``chaos_worth.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bench.figures import error_figure
from bench.live_server import write_json
from bench.timing import machine_info
from melissa_nb.kernels import PolynomialChaos, SobolMartinez

A, B = 7.0, 0.1
BUDGETS = (100, 200, 400, 800, 1600, 3200)
QUICK_BUDGETS = (100, 400)
REPLICATES = 20
LAWS = [("uniform", -math.pi, math.pi)] * 3


def ishigami(x: np.ndarray) -> np.ndarray:
    return np.sin(x[:, 0]) + A * np.sin(x[:, 1]) ** 2 + B * x[:, 2] ** 4 * np.sin(x[:, 0])


def closed_forms() -> tuple[np.ndarray, np.ndarray]:
    variance = A**2 / 8 + B * math.pi**4 / 5 + B**2 * math.pi**8 / 18 + 0.5
    v1, v2 = 0.5 * (1 + B * math.pi**4 / 5) ** 2, A**2 / 8
    v13 = B**2 * math.pi**8 * (1 / 18 - 1 / 50)
    return np.array([v1, v2, 0.0]) / variance, np.array([v1 + v13, v2, v13]) / variance


def degree_for(budget: int) -> int:
    degree = 1
    while degree < 12 and math.comb(3 + degree + 1, 3) <= budget // 2:
        degree += 1
    return degree


def pce_error(budget: int, rng: np.random.Generator, first: np.ndarray, total: np.ndarray):
    x = rng.uniform(-math.pi, math.pi, size=(budget, 3))
    chaos = PolynomialChaos(1, LAWS, degree_for(budget))
    chaos.update_batch(ishigami(x)[:, None].copy(), x)
    results = chaos.results(["first", "total"])
    return max(
        np.abs(results["first"][:, 0] - first).max(), np.abs(results["total"][:, 0] - total).max()
    )


def martinez_error(budget: int, rng: np.random.Generator, first: np.ndarray, total: np.ndarray):
    groups = budget // 5
    sample_a = rng.uniform(-math.pi, math.pi, size=(groups, 3))
    sample_b = rng.uniform(-math.pi, math.pi, size=(groups, 3))
    rows = [ishigami(sample_a), ishigami(sample_b)]
    for k in range(3):
        mixed = sample_a.copy()
        mixed[:, k] = sample_b[:, k]
        rows.append(ishigami(mixed))
    outputs = np.stack(rows, axis=1)[:, :, None].copy()  # (groups, 5, 1 cell)
    sobol = SobolMartinez(1, 3)
    sobol.update_batch(outputs)
    return max(np.abs(sobol.first[:, 0] - first).max(), np.abs(sobol.total[:, 0] - total).max())


def draw(records: list[dict[str, float]], path: Path) -> None:
    budgets = [record["simulations"] for record in records]
    curves = [
        (label, "o-", budgets, [record[key] for record in records])
        for key, label in (
            ("pce_rms_error", "polynomial chaos"),
            ("martinez_rms_error", "Martinez"),
        )
    ]
    error_figure(
        curves,
        "worst error of the 6 Ishigami indices (RMS)",
        "Sobol indices of Ishigami: error against simulations",
        path,
    )


def main(*, quick: bool = False, output_dir: Path) -> Path:
    """Every budget, both methods, R replicates; write chaos_worth.json and the figure."""
    first, total = closed_forms()
    rng = np.random.default_rng(2026)
    replicates = 3 if quick else REPLICATES
    records = []
    for budget in QUICK_BUDGETS if quick else BUDGETS:
        pce = [pce_error(budget, rng, first, total) for _ in range(replicates)]
        martinez = [martinez_error(budget, rng, first, total) for _ in range(replicates)]
        record = {
            "simulations": budget,
            "pce_degree": degree_for(budget),
            "pce_rms_error": float(np.sqrt(np.mean(np.square(pce)))),
            "martinez_groups": budget // 5,
            "martinez_rms_error": float(np.sqrt(np.mean(np.square(martinez)))),
        }
        records.append(record)
        print(
            f"{budget} simulations: PCE degree {record['pce_degree']} error "
            f"{record['pce_rms_error']:.4f}, Martinez ({budget // 5} groups) error "
            f"{record['martinez_rms_error']:.4f}"
        )
    output_dir.mkdir(parents=True, exist_ok=True)
    draw(records, output_dir / "chaos_worth.png")
    results = {
        "benchmark": "chaos_worth",
        "method": __doc__,
        "machine": machine_info(),
        "quick": quick,
        "replicates": replicates,
        "records": records,
    }
    return write_json(results, output_dir, "chaos_worth")
