"""A downstream consumer: online linear regression of a field on the simulation parameters.

The server pushes every accepted message here (`melissa-nb server --forward-to DATA
--forward-ack ACK`); for each timestep and cell this process keeps the normal equations of
y = b0 + b1 a1 + ... + bp ap over the simulations seen so far (X'X and X'y, updated in place,
nothing stored per simulation) and solves them when the stream has ended:

    python consumer.py --data tcp://127.0.0.1:6000 --ack tcp://127.0.0.1:6001 \
        --parameters parameters.csv --timesteps 10 --output coefficients.npy

`parameters.csv` holds one row per simulation: its id, then its parameter values.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from melissa_nb.forward_protocol import DATA
from melissa_nb.server.pipeline.forward import Consumer


class OnlineRegression:
    """Normal equations of a linear model in the parameters, per timestep, for every cell."""

    def __init__(self, timesteps: int, parameters: int) -> None:
        self.timesteps = timesteps
        self.features = parameters + 1
        self.gram = np.zeros((timesteps, self.features, self.features))  # X'X per timestep
        self.moments: np.ndarray | None = None  # X'y per timestep: (T, features, cells)

    def update(self, timestep: int, parameters: np.ndarray, values: np.ndarray) -> None:
        """Fold one simulation's field at one timestep (cells of the whole field)."""
        x = np.concatenate(([1.0], parameters))
        if self.moments is None:
            self.moments = np.zeros((self.timesteps, self.features, values.size))
        self.gram[timestep] += np.outer(x, x)
        self.moments[timestep] += np.outer(x, values)

    def coefficients(self) -> np.ndarray:
        """(T, features, cells): intercept then one slope per parameter, least squares."""
        assert self.moments is not None, "no data"
        return np.linalg.solve(self.gram, self.moments)


def consume(
    consumer: Consumer, parameters: dict[int, np.ndarray], timesteps: int, timeout: float = 60.0
) -> np.ndarray:
    """Assemble each (simulation, timestep) field from the ranks' pieces, regress, solve."""
    width = len(next(iter(parameters.values())))
    regression = OnlineRegression(timesteps, width)
    pieces: dict[tuple[int, int], dict[tuple[int, int], np.ndarray]] = {}
    for message in consumer.messages(timeout):
        if message.kind != DATA:
            continue
        key = (message.simulation_id, message.timestep)
        # the values are a view of the frame: copy what is kept past this iteration
        pieces.setdefault(key, {})[(message.rank, message.client_rank)] = message.values[0].copy()
        # one piece per server rank: this example's simulations are single processes
        expected_pieces = message.ranks
        if len(pieces[key]) == expected_pieces:
            field = pieces.pop(key)  # pieces in (server rank, client rank) order: the whole field
            regression.update(
                key[1], parameters[key[0]], np.concatenate([field[p] for p in sorted(field)])
            )
    assert not pieces, f"incomplete fields at the end of the stream: {sorted(pieces)}"
    return regression.coefficients()


def main() -> None:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--data", required=True, help="address to bind for the data (PULL)")
    arguments.add_argument("--ack", required=True, help="address to bind for acknowledgements")
    arguments.add_argument(
        "--key", type=Path, required=True, help="the links' key file (created if missing)"
    )
    arguments.add_argument("--parameters", type=Path, required=True)
    arguments.add_argument("--timesteps", type=int, required=True)
    arguments.add_argument("--output", type=Path, default=Path("coefficients.npy"))
    args = arguments.parse_args()
    table = np.loadtxt(args.parameters, delimiter=",", ndmin=2)
    parameters = {int(row[0]): row[1:] for row in table}
    consumer = Consumer(args.data, args.ack, key_file=args.key)
    try:
        coefficients = consume(consumer, parameters, args.timesteps)
    finally:
        consumer.close()
    np.save(args.output, coefficients)
    print(
        f"consumer: {sum(consumer.received.values())} messages from {consumer.ranks} rank(s); "
        f"coefficients {coefficients.shape} written to {args.output}"
    )


if __name__ == "__main__":
    main()
