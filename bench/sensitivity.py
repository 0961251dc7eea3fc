"""What the whole-field and Monte Carlo sensitivities cost per cell, against the triad.

Two measurements, each at 1e5 and 1e6 cells with p = 5 parameters, timed interleaved with the
Sobol update they sit beside (`bench.timing.time_interleaved`, best of the repeats):
- ``correlation_p5``: one `Correlation.update` (one simulation's output and parameters): reads
  the input, reads the shift, reads and writes the output mean, M2 and the p comoments:
  8 + 8 + 2 x 8 x (2 + p) bytes per cell;
- ``sobol_aggregate_sums_p5``: `SobolMartinez.aggregate_sums` of one timestep (what the server
  adds per slice and timestep at output for the aggregated indices): reads M2 of p + 2 rows
  and both comoments: 8 x (3p + 2) bytes per cell, once per timestep at the end, not per sample;
- ``sobol_update_p5`` for comparison (one group of p + 2 rows).
Each gets its rate in GB/s from those byte counts and its fraction of the triad measured in the
same run (`bench.triad`, numba, 3 arrays). Results go to ``sensitivity.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.live_server import write_json
from bench.timing import machine_info, time_interleaved
from bench.triad import triad_gbps
from melissa_nb.kernels import Correlation, SobolMartinez

PARAMETERS = 5
CELLS = (100_000, 1_000_000)
QUICK_CELLS = (2_000,)


def bytes_per_cell(name: str, parameters: int) -> int:
    """The bytes per cell each measured call must move (see the module docstring)."""
    return {
        "correlation_p5": 8 + 8 + 2 * 8 * (2 + parameters),
        "sobol_aggregate_sums_p5": 8 * (3 * parameters + 2),
        "sobol_update_p5": 8 * (parameters + 2)
        + 8
        + 2 * 8 * (2 * (parameters + 2) + 2 * parameters),
    }[name]


def measure(cells: int, quick: bool) -> dict[str, dict[str, float]]:
    """Best seconds per call and GB/s of each call at `cells` cells."""
    rng = np.random.default_rng(0)
    correlation = Correlation(cells, PARAMETERS)
    sobol = SobolMartinez(cells, PARAMETERS)
    outputs = [rng.standard_normal(cells) for _ in range(2)]
    groups = [rng.standard_normal((PARAMETERS + 2, cells)) for _ in range(2)]
    inputs = [rng.uniform(size=PARAMETERS) for _ in range(7)]
    for group in groups:  # a state with some groups in it
        sobol.update(group)
    calls = {
        "correlation_p5": lambda: correlation.update(
            outputs[correlation.count % 2], inputs[correlation.count % 7]
        ),
        "sobol_aggregate_sums_p5": sobol.aggregate_sums,
        "sobol_update_p5": lambda: sobol.update(groups[sobol.count % 2]),
    }
    timings = time_interleaved(calls, budget_s=0.2 if quick else 2.0)
    return {
        name: {
            "best_s": timing.best_s,
            "ns_per_cell": timing.best_s / cells * 1e9,
            "gbps": bytes_per_cell(name, PARAMETERS) * cells / timing.best_s / 1e9,
        }
        for name, timing in timings.items()
    }


def main(*, quick: bool = False, output_dir: Path) -> Path:
    """Measure every call at every size against the triad; write sensitivity.json."""
    records = []
    for cells in QUICK_CELLS if quick else CELLS:
        triad = triad_gbps(10_000 if quick else 20_000_000)
        for name, result in measure(cells, quick).items():
            record = {
                "call": name,
                "cells": cells,
                "bytes_per_cell": bytes_per_cell(name, PARAMETERS),
                **result,
                "triad_gbps": triad,
                "fraction_of_triad": result["gbps"] / triad,
            }
            records.append(record)
            print(
                f"{name} at {cells} cells: {record['ns_per_cell']:.2f} ns/cell, "
                f"{record['gbps']:.1f} GB/s ({record['fraction_of_triad']:.0%} of triad "
                f"{triad:.1f} GB/s)"
            )
    results = {
        "benchmark": "sensitivity",
        "method": __doc__,
        "machine": machine_info(),
        "quick": quick,
        "parameters": PARAMETERS,
        "records": records,
    }
    return write_json(results, output_dir, "sensitivity")
