"""The polynomial chaos update against a BLAS matrix product of the same shape and the triad.

p = 5 inputs, degree 3: P = 56 coefficients per cell; one batch of 16 samples (`BATCH`) at 1e5
and 1e6 cells, timed interleaved (`bench.timing.time_interleaved`, best of the repeats):
- ``chaos_update``: `PolynomialChaos`'s kernel, projection (P, cells) += basis^T (Y - shift)
  and the squares: reads the 16 samples and the shift, reads and writes the projection and the
  square sums: 8 x (16 + 1 + 2 P + 2) bytes per cell;
- ``blas_matmul``: numpy's `matmul(basis.T, Y, out=)` (OpenBLAS dgemm), the same flops into a
  fresh (P, cells) array, not accumulated: it reads Y and writes P rows, 8 x (16 + P) bytes;
- ``blas_matmul_accumulate``: the same product then `projection += product`, what the update
  would cost written with numpy.
The goal (issue 23): the update at >= 50% of the plain product's throughput (same flops, so
the ratio of times). Rates in GB/s from the byte counts, against the triad of the same run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.live_server import write_json
from bench.timing import machine_info, time_interleaved
from bench.triad import triad_gbps
from melissa_nb.kernels.chaos import chaos_update
from melissa_nb.kernels.jit import BATCH

TERMS = 56  # p = 5, degree 3
CELLS = (100_000, 1_000_000)
QUICK_CELLS = (4_000,)


def bytes_per_cell(name: str) -> int:
    return {
        "chaos_update": 8 * (BATCH + 1 + 2 * TERMS + 2),
        "blas_matmul": 8 * (BATCH + TERMS),
        "blas_matmul_accumulate": 8 * (BATCH + TERMS + 3 * TERMS),
    }[name]


def measure(cells: int, quick: bool) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((BATCH, TERMS))
    outputs = rng.standard_normal((BATCH, cells))
    rows = tuple(outputs[i] for i in range(BATCH))
    outputs.flags.writeable = False
    shift, square_sum = np.zeros(cells), np.zeros(cells)
    projection, product = np.zeros((TERMS, cells)), np.empty((TERMS, cells))
    transposed = basis.T

    def accumulate() -> None:
        np.matmul(transposed, outputs, out=product)
        projection.__iadd__(product)

    calls = {
        "chaos_update": lambda: chaos_update(basis, rows, BATCH, shift, projection, square_sum),
        "blas_matmul": lambda: np.matmul(transposed, outputs, out=product),
        "blas_matmul_accumulate": accumulate,
    }
    timings = time_interleaved(calls, budget_s=0.2 if quick else 3.0)
    return {
        name: {
            "best_s": timing.best_s,
            "ns_per_cell": timing.best_s / cells * 1e9,
            "gbps": bytes_per_cell(name) * cells / timing.best_s / 1e9,
        }
        for name, timing in timings.items()
    }


def main(*, quick: bool = False, output_dir: Path) -> Path:
    """Measure at every size; write chaos.json."""
    records = []
    for cells in QUICK_CELLS if quick else CELLS:
        triad = triad_gbps(10_000 if quick else 20_000_000)
        results = measure(cells, quick)
        matmul = results["blas_matmul"]["best_s"]
        for name, result in results.items():
            record = {
                "call": name,
                "cells": cells,
                "bytes_per_cell": bytes_per_cell(name),
                **result,
                "triad_gbps": triad,
                "fraction_of_triad": result["gbps"] / triad,
                "throughput_over_blas_matmul": matmul / result["best_s"],
            }
            records.append(record)
            print(
                f"{name} at {cells} cells: {record['ns_per_cell']:.2f} ns/cell, "
                f"{record['gbps']:.1f} GB/s ({record['fraction_of_triad']:.0%} of triad "
                f"{triad:.1f} GB/s), {record['throughput_over_blas_matmul']:.2f} x the matmul"
            )
    results = {
        "benchmark": "chaos",
        "method": __doc__,
        "machine": machine_info(),
        "quick": quick,
        "terms": TERMS,
        "batch": BATCH,
        "records": records,
    }
    return write_json(results, output_dir, "chaos")
