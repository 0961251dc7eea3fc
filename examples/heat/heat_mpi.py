"""The heat equation of heat.py as an MPI program: the grid's rows split over the ranks of
MPI_COMM_WORLD, each rank streaming its own rows (Melissa's N-to-M redistribution: the client
sends each server rank the part of its slice that server rank holds).

Each implicit step is heat.py's V ((V A V) / D) V with A = T + source. The products from the
left need whole columns, so each rank gathers the full matrix (Allgatherv) before them: two
gathers per step; everything else is on the rank's own rows. Same numbers as heat.py.

Usage: mpiexec -n R python heat_mpi.py [--size N] [--steps T] [--dt DT] T0 T1 T2 T3 T4
(under Slurm: srun --mpi=pmi2 -n R ...; a study runs it so with `[simulation] ranks = R`).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from heat import FIELD, implicit_denominator, parse, sine_basis, wall_source  # noqa: E402


def row_blocks(size: int, ranks: int) -> list[tuple[int, int]]:
    """[first, last) rows of each rank: contiguous, sizes differing by at most one."""
    bounds = [size * rank // ranks for rank in range(ranks + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def heat_rows(comm, initial: float, walls, size: int = 100, steps: int = 100, dt: float = 1e-3):
    """Yield this rank's rows of the temperature field after each step."""
    first, last = row_blocks(size, comm.size)[comm.rank]
    counts = [(end - begin) * size for begin, end in row_blocks(size, comm.size)]
    vectors, values = sine_basis(size)
    rows = vectors[first:last]
    denominator = implicit_denominator(values, dt)[first:last]
    source = wall_source(walls, size, dt)[first:last]
    whole = np.empty((size, size))
    field = np.full((last - first, size), float(initial))

    def gathered(part: np.ndarray) -> np.ndarray:
        comm.Allgatherv(np.ascontiguousarray(part), [whole, counts])
        return whole

    for _ in range(steps):
        inner = (rows @ gathered(field + source)) @ vectors / denominator
        field = (rows @ gathered(inner)) @ vectors
        yield field


def main(argv: list[str]) -> None:
    """Run one simulation on every rank of MPI_COMM_WORLD, each rank sending its rows."""
    from mpi4py import MPI

    from melissa_nb.client import melissa_finalize, melissa_init, melissa_send

    options, (initial, *walls) = parse(argv)
    size, comm = int(options["size"]), MPI.COMM_WORLD
    first, last = row_blocks(size, comm.size)[comm.rank]
    melissa_init(FIELD, (last - first) * size, comm)
    for rows in heat_rows(comm, initial, tuple(walls), size, int(options["steps"]), options["dt"]):
        melissa_send(FIELD, rows.ravel())
    melissa_finalize()


if __name__ == "__main__":
    main(sys.argv[1:])
