"""The Ishigami function as a melissa_nb "simulation": one timestep of a small field.

    Y = sin(x1) + a sin(x2)^2 + b x3^4 sin(x1),   x1, x2, x3 ~ U(-pi, pi)

Each cell of the field "ishigami" evaluates it with its own (a, b) from COEFFICIENTS, so one
study estimates the Sobol indices of several variants, each with a closed form
(`exact_indices`). Cell 0 is the classic a = 7, b = 0.1: S = [0.3139, 0.4424, 0],
ST = [0.5576, 0.4424, 0.2437].

Usage: python ishigami.py x1 x2 x3
"""

from __future__ import annotations

import math
import sys

import numpy as np

FIELD = "ishigami"
COEFFICIENTS = ((7.0, 0.1), (7.0, 0.05), (5.0, 0.1), (7.0, 0.0))


def ishigami(x1: float, x2: float, x3: float) -> np.ndarray:
    """The field: Y for every (a, b) of COEFFICIENTS."""
    a, b = np.array(COEFFICIENTS).T
    return np.sin(x1) + a * np.sin(x2) ** 2 + b * x3**4 * np.sin(x1)


def exact_indices(a: float, b: float) -> tuple[list[float], list[float]]:
    """Closed-form first-order and total indices (S, ST) of the Ishigami function."""
    pi4, pi8 = math.pi**4, math.pi**8
    v1 = 0.5 * (1 + b * pi4 / 5) ** 2
    v2 = a**2 / 8
    v13 = b**2 * pi8 * (1 / 18 - 1 / 50)
    total = v1 + v2 + v13
    return [v1 / total, v2 / total, 0.0], [(v1 + v13) / total, v2 / total, v13 / total]


def main(argv: list[str]) -> None:
    """Evaluate at the three inputs given and send the field (one timestep)."""
    from melissa_nb.client import melissa_finalize, melissa_init, melissa_send

    x1, x2, x3 = (float(word) for word in argv)
    melissa_init(FIELD, len(COEFFICIENTS))
    melissa_send(FIELD, ishigami(x1, x2, x3))
    melissa_finalize()


if __name__ == "__main__":
    main(sys.argv[1:])
