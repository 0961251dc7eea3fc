"""Run the pipeline example: simulations -> an M-rank melissa-nb server -> a regression consumer.

    python run.py --ranks 2 --simulations 8 --timesteps 5 --cells 12 --workdir pipeline_run

Draws each simulation's two parameters, writes them to `<workdir>/parameters.csv`, starts the
consumer (consumer.py), the server (`mpiexec -n M melissa-nb server ... --forward-to ...`) and
the simulations (../melissa4py/simulation.py), and waits for all of them. The server computes
its usual statistics and forwards every accepted message; the consumer fits, per timestep and
cell, the field as a linear function of the parameters and saves the coefficients to
`<workdir>/coefficients.npy`. Every process writes its output to `<workdir>/<name>.log`. The
links between server and consumer are authenticated with `<workdir>/pipeline.key`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from melissa_nb.auth import create_key_file
from melissa_nb.ports import free_port

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
DEADLINE = 120.0  # seconds the whole example may take


def start(command: list[str], log: Path, environment: dict[str, str] | None = None):
    """A child process writing its output to `log`."""
    with log.open("w") as sink:
        return subprocess.Popen(
            command, stdout=sink, stderr=subprocess.STDOUT, env=environment or dict(os.environ)
        )


def main() -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--ranks", type=int, default=2)
    arguments.add_argument("--simulations", type=int, default=8)
    arguments.add_argument("--timesteps", type=int, default=5)
    arguments.add_argument("--cells", type=int, default=12)
    arguments.add_argument("--seed", type=int, default=0)
    arguments.add_argument("--workdir", type=Path, default=Path("pipeline_run"))
    args = arguments.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    parameters = np.random.default_rng(args.seed).uniform(0.5, 2.0, size=(args.simulations, 2))
    table = workdir / "parameters.csv"
    ids = np.arange(args.simulations)[:, None]
    np.savetxt(table, np.hstack([ids, parameters]), delimiter=",", fmt="%.17g")
    data, ack = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
    # The links' key (mode 0600), made before either end starts: the consumer admits only
    # holders of it, and the server reads it (--forward-key).
    key_file = workdir / "pipeline.key"
    create_key_file(key_file)
    connection_port = free_port()
    children = [
        start(
            [
                sys.executable,
                str(HERE / "consumer.py"),
                "--data",
                data,
                "--ack",
                ack,
                "--key",
                str(key_file),
                "--parameters",
                str(table),
                "--timesteps",
                str(args.timesteps),
                "--output",
                str(workdir / "coefficients.npy"),
            ],
            workdir / "consumer.log",
        ),
        start(
            [
                str(BIN / "mpiexec"),
                "-n",
                str(args.ranks),
                str(BIN / "melissa-nb"),
                "server",
                "-s",
                str(args.simulations),
                "-t",
                str(args.timesteps),
                "-f",
                "heat1",
                "-o",
                "mean:variance",
                "-w",
                "60",
                "--connection-port",
                str(connection_port),
                "--data_port",
                "0",
                "--output-dir",
                str(workdir / "results"),
                "--forward-to",
                data,
                "--forward-ack",
                ack,
                "--forward-key",
                str(key_file),
                "--forward-timeout",
                "30",
            ],
            workdir / "server.log",
        ),
    ]
    for simulation, values in enumerate(parameters):
        environment = dict(
            os.environ,
            MELISSA_SIMU_ID=str(simulation),
            MELISSA_SERVER_NODE_NAME="127.0.0.1",
            MELISSA_SERVER_PORT=str(connection_port),
        )
        children.append(
            start(
                [
                    sys.executable,
                    str(HERE.parent / "melissa4py" / "simulation.py"),
                    "--timesteps",
                    str(args.timesteps),
                    "--cells",
                    str(args.cells),
                    *(repr(float(value)) for value in values),
                ],
                workdir / f"simulation_{simulation}.log",
                environment,
            )
        )
    deadline = time.monotonic() + DEADLINE
    try:
        codes = [child.wait(max(1.0, deadline - time.monotonic())) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    if any(codes):
        print(f"failed: exit codes {codes} (consumer, server, simulations); see {workdir}/*.log")
        return 1
    coefficients = np.load(workdir / "coefficients.npy")
    print(f"slopes of heat1 on a1 at the last timestep: {np.round(coefficients[-1, 1], 3)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
