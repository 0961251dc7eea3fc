"""A 2-D heat equation solver that streams its temperature field to a melissa_nb server.

    dT/dt = laplacian(T) on the unit square, an n x n grid of interior cells;
    T = T0 everywhere at t = 0; fixed wall temperatures T1 (top), T2 (bottom), T3 (left),
    T4 (right) (Dirichlet); implicit Euler in time.

The five parameters are those of Melissa's heat example. Each implicit step is solved exactly in
the eigenbasis of the 1-D Dirichlet Laplacian (a discrete sine transform written as a symmetric
orthogonal matrix), so a step costs four n x n matrix products and the scheme is unconditionally
stable. Only numpy and the client are imported: a study starts this script once per simulation,
so its start-up time matters more than anything else.

Usage: python heat.py [--size N] [--steps T] [--dt DT] T0 T1 T2 T3 T4
"""

from __future__ import annotations

import os
import sys

# Many simulations share a few cores: one BLAS thread each (must be set before numpy loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

FIELD = "temperature"


def sine_basis(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal eigenvectors (symmetric matrix) and eigenvalues of the 1-D Dirichlet Laplacian.

    The Laplacian is tridiag(1, -2, 1) / h^2 with h = 1 / (size + 1).
    """
    index = np.arange(1, size + 1)
    vectors = np.sqrt(2.0 / (size + 1)) * np.sin(np.pi * np.outer(index, index) / (size + 1))
    spacing = 1.0 / (size + 1)
    values = -4.0 / spacing**2 * np.sin(np.pi * index / (2 * (size + 1))) ** 2
    return vectors, values


def implicit_denominator(values: np.ndarray, dt: float) -> np.ndarray:
    """1 - dt (lambda_i + lambda_j): implicit Euler in the 2-D eigenbasis."""
    return 1.0 - dt * (values[:, None] + values[None, :])


def wall_source(walls: tuple[float, float, float, float], size: int, dt: float) -> np.ndarray:
    """The walls enter the Laplacian of the cells next to them as a constant source."""
    top, bottom, left, right = walls
    source = np.zeros((size, size))
    source[0, :] += top
    source[-1, :] += bottom
    source[:, 0] += left
    source[:, -1] += right
    return source * dt * (size + 1) ** 2


def heat(
    initial: float,
    walls: tuple[float, float, float, float],
    size: int = 100,
    steps: int = 100,
    dt: float = 1e-3,
):
    """Yield the temperature field (size x size, row 0 next to the top wall) after each step."""
    vectors, values = sine_basis(size)
    denominator = implicit_denominator(values, dt)
    source = wall_source(walls, size, dt)
    field = np.full((size, size), float(initial))
    for _ in range(steps):
        field = vectors @ ((vectors @ (field + source) @ vectors) / denominator) @ vectors
        yield field


def parse(argv: list[str]) -> tuple[dict[str, float], list[float]]:
    """Options (--size, --steps, --dt) and the five temperatures from the command line."""
    options = {"size": 100.0, "steps": 100.0, "dt": 1e-3}
    positional = []
    words = iter(argv)
    for word in words:
        if word.startswith("--") and word[2:] in options:
            options[word[2:]] = float(next(words))
        else:
            positional.append(float(word))
    if len(positional) != 5:
        raise SystemExit(__doc__.split("\n\n")[-1] + f"\ngot {argv}")
    return options, positional


def main(argv: list[str]) -> None:
    """Run one simulation and stream every timestep of the field."""
    from melissa_nb.client import melissa_finalize, melissa_init, melissa_send

    options, (initial, *walls) = parse(argv)
    size = int(options["size"])
    melissa_init(FIELD, size * size)
    for field in heat(initial, tuple(walls), size, int(options["steps"]), options["dt"]):
        melissa_send(FIELD, field.ravel())
    melissa_finalize()


if __name__ == "__main__":
    main(sys.argv[1:])
