"""A small launcher for the melissa4py example: JOBs, simulations, and server.py, until STOP.

    python drive.py --sample_size 4 --timesteps 10

Binds the launcher's three sockets (melissa_nb.study.launcher), starts server.py with their
ports, publishes a JOB for each simulation (two parameters drawn uniformly in [0.5, 2]) as it
starts simulation.py, answers the server's requests and waits for its STOP. The server uses
Melissa's default ports (2003 for connections, 2004 for data): one study at a time per host.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from melissa_nb.protocol import Job, Server, Stop
from melissa_nb.study.launcher_sockets import Launcher

HERE = Path(__file__).resolve().parent
WAIT = 120.0  # seconds the whole study may take


class LauncherThread(threading.Thread):
    """Launcher side of one study: waits for the server, runs each JOB's simulation, until STOP.

    `ports` is set (and `ready` set) once the launcher's sockets are bound; `failure` holds
    what went wrong, if anything.
    """

    def __init__(self, jobs: dict[int, Job], connection_port: int, timesteps: int, cells: int):
        super().__init__(daemon=True)
        self.jobs, self.connection_port = jobs, connection_port
        self.timesteps, self.cells = timesteps, cells
        self.ports = None
        self.ready = threading.Event()
        self.received: list[object] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        context = zmq.Context()
        launcher = Launcher(context, self.jobs.get, options="")
        self.ports = launcher.ports
        self.ready.set()
        processes: list[subprocess.Popen] = []
        deadline = time.monotonic() + WAIT
        try:
            while not any(isinstance(message, Server) for message in self.received):
                if time.monotonic() > deadline:
                    raise TimeoutError("the server never said SERVER")
                self.received += launcher.service(0.05)
            for job in self.jobs.values():
                launcher.publish(job)
                processes.append(self.simulate(job))
            while Stop() not in self.received:
                if time.monotonic() > deadline:
                    raise TimeoutError("no STOP from the server")
                self.received += launcher.service(0.05)
            codes = [process.wait(WAIT) for process in processes]
            if any(codes):
                raise RuntimeError(f"simulation exit codes {codes}")
        except BaseException as error:  # reported to whoever joins this thread
            self.failure = error
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait(WAIT)
            launcher.close()
            context.term()

    def simulate(self, job: Job) -> subprocess.Popen:
        """Start simulation.py for one JOB."""
        environment = dict(
            os.environ,
            MELISSA_SIMU_ID=str(job.simu_id),
            MELISSA_SERVER_NODE_NAME="127.0.0.1",
            MELISSA_SERVER_PORT=str(self.connection_port),
        )
        command = [
            sys.executable,
            str(HERE / "simulation.py"),
            "--timesteps",
            str(self.timesteps),
            "--cells",
            str(self.cells),
            *(repr(value) for value in job.parameters),
        ]
        return subprocess.Popen(command, env=environment)


def main() -> int:
    arguments = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments.add_argument("--sample_size", type=int, default=4)
    arguments.add_argument("--timesteps", type=int, default=10)
    arguments.add_argument("--cells", type=int, default=8)
    arguments.add_argument("--seed", type=int, default=0)
    args = arguments.parse_args()
    draws = np.random.default_rng(args.seed).uniform(0.5, 2.0, size=(args.sample_size, 2))
    jobs = {s: Job(s, f"job{s}", tuple(draws[s])) for s in range(args.sample_size)}
    study = LauncherThread(jobs, 2003, args.timesteps, args.cells)
    study.start()
    study.ready.wait(WAIT)
    server = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "server.py"),
            "--timesteps",
            str(args.timesteps),
            "--sample_size",
            str(args.sample_size),
            "--nb_parameters_simulation",
            "2",
            "--txt_pull_port",
            str(study.ports.pull),
            "--txt_push_port",
            str(study.ports.push),
            "--txt_req_port",
            str(study.ports.req),
            "--launcher_node_name",
            "127.0.0.1",
        ]
    )
    study.join(WAIT)
    code = server.wait(WAIT)
    if study.failure is not None or code != 0:
        print(f"study failed: {study.failure!r}, server exit code {code}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
