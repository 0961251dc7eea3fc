"""Estimated Sobol indices of the Ishigami study next to their exact values.

Usage: python compare.py [RESULTS_DIR]   (default: results, the study's output_dir)

Each cell of the field is one (a, b) variant of the function (see ishigami.py). The intervals
are the server's Fisher-z intervals; their width shrinks like 1 / sqrt(sample_size), so running
the study again with a larger `sample_size` shows the estimates converging to the exact values.
"""

from __future__ import annotations

import sys
from pathlib import Path

import netCDF4
import numpy as np
from ishigami import COEFFICIENTS, exact_indices

PARAMETERS = ("x1", "x2", "x3")


def main(directory: Path) -> None:
    """Print one line per cell, order and parameter."""
    with netCDF4.Dataset(directory / "ishigami.nc") as dataset:
        dataset.set_auto_mask(False)
        values = {
            name: np.asarray(dataset[name][0])
            for name in dataset.variables
            if name.startswith("sobol_")
        }
        groups = int(dataset["sample_count"][0]) // 2
    print(f"{groups} groups; estimate [interval] exact")
    for cell, (a, b) in enumerate(COEFFICIENTS):
        exact = dict(zip(("first", "total"), exact_indices(a, b), strict=True))
        print(f"cell {cell}: a = {a:g}, b = {b:g}")
        for order in ("first", "total"):
            cells = []
            for k, name in enumerate(PARAMETERS):
                low = values[f"sobol_{order}_ci_low"][k, cell]
                high = values[f"sobol_{order}_ci_high"][k, cell]
                cells.append(
                    f"{name} {values[f'sobol_{order}'][k, cell]:6.3f} "
                    f"[{low:6.3f}, {high:6.3f}] {exact[order][k]:.3f}"
                )
            print(f"  {order:5}  " + "   ".join(cells))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results")
