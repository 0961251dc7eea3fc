"""A toy simulation for the melissa4py example: streams field `heat1` with melissa_nb.client.

    MELISSA_SIMU_ID=3 python simulation.py --timesteps 10 --cells 8 1.5 0.25

Cell 0 carries the simulation id and cell 1 the timestep, so a server can check what it got;
the other cells are a1 * cos(c t / cells) + a2 from the parameters a1, a2.
"""

import argparse

import numpy as np

from melissa_nb.client import (
    melissa_finalize,
    melissa_init,
    melissa_send,
    simulation_id_from_environment,
)


def field(simulation_id: int, timestep: int, cells: int, parameters: list[float]) -> np.ndarray:
    """The vector sent at `timestep` (the reference a test compares with)."""
    a1, a2 = (list(parameters) + [0.0, 0.0])[:2]
    values = a1 * np.cos(np.arange(cells) * timestep / cells) + a2
    values[0], values[1] = simulation_id, timestep
    return values


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--timesteps", type=int, required=True)
    arguments.add_argument("--cells", type=int, default=8)
    arguments.add_argument("parameters", type=float, nargs="*")
    args = arguments.parse_args()
    simulation_id = simulation_id_from_environment()
    melissa_init("heat1", args.cells)
    for timestep in range(args.timesteps):
        melissa_send("heat1", field(simulation_id, timestep, args.cells, args.parameters))
    melissa_finalize()


if __name__ == "__main__":
    main()
