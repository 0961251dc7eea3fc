"""The runner's own cost per simulation through Slurm: a study of 1,000 trivial simulations
(one cell, one timestep) run by `melissa-nb run` on the Slurm that SLURM_CONF names.

Measured in one run:
- the runner's CPU time (its own and that of the Slurm commands it runs: `wait4`'s rusage of
  the runner process), per simulation, against the yardstick of one bare `sbatch` plus one
  `scontrol show job` call, timed the same way in the same run;
- the Slurm commands it makes, per simulation (wrappers first on PATH count every call);
- the wall time per simulation and the study's total.

The server and the simulations are Slurm jobs, not children of the runner: their CPU is not
the runner's. Without a Slurm the result file says so and nothing is measured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.timing import machine_info

SIMULATIONS = 1000
AT_ONCE = 64
COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")

SIMULATION = """
import numpy as np
from melissa_nb.client import melissa_finalize, melissa_init, melissa_send

melissa_init("u", 1)
melissa_send("u", np.array([1.0]))
melissa_finalize()
"""


def counting_wrappers(directory: Path, log: Path) -> Path:
    """A folder of wrappers: each Slurm command appends its name to `log`, then runs."""
    directory.mkdir()
    for name in COMMANDS:
        real = shutil.which(name)
        wrapper = directory / name
        wrapper.write_text(f'#!/bin/sh\necho {name} >>"{log}"\nexec "{real}" "$@"\n')
        wrapper.chmod(0o755)
    return directory


def child_cpu(argv: list[str], environment: dict[str, str]) -> tuple[float, float, int]:
    """(CPU seconds of the process and the children it waited for, wall seconds, exit code)."""
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    assert process.stderr is not None
    if process.returncode != 0:
        print(process.stderr.read().decode(errors="replace")[-2000:])
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - started, process.returncode


def yardstick(directory: Path) -> dict[str, float]:
    """CPU and wall seconds of one `sbatch --wrap true` and one `scontrol show job`."""
    script = (
        f"job=$(sbatch --parsable --output={directory}/yardstick-%j.out --wrap true); "
        "scontrol show job --oneliner $job >/dev/null"
    )
    samples = [child_cpu(["sh", "-c", script], dict(os.environ)) for _ in range(10)]
    samples.sort()
    cpu, wall, _ = samples[len(samples) // 2]
    return {"cpu_s": cpu, "wall_s": wall}


def study_file(directory: Path, simulations: int) -> Path:
    (directory / "sim.py").write_text(SIMULATION)
    path = directory / "study.toml"
    path.write_text(
        f"""[study]
name = "scale"
output_dir = "{directory / "out"}"
sample_size = {simulations}
fields = ["u"]
timesteps = 1
timeout = 7200

[simulation]
command = "{sys.executable} {directory / "sim.py"}"
working_dir = "{directory}"
at_once = {AT_ONCE}
timeout = 600
retries = 1

[scheduler]
kind = "slurm"

[parameters]
x = {{ distribution = "uniform", low = 0.0, high = 1.0 }}
"""
    )
    return path


def main(*, quick: bool, output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "study_scale.json"
    result: dict[str, object] = {"benchmark": "study_scale", "quick": quick}
    result["machine"] = machine_info()
    if not os.environ.get("SLURM_CONF") or shutil.which("sbatch") is None:
        result["skipped"] = "no Slurm: start one with tools/local-slurm and export SLURM_CONF"
        path.write_text(json.dumps(result, indent=2))
        print(result["skipped"])
        return path
    simulations = 20 if quick else SIMULATIONS
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        log = directory / "calls.txt"
        wrappers = counting_wrappers(directory / "wrappers", log)
        bin_dir = Path(sys.executable).parent
        environment = {**os.environ, "PATH": f"{wrappers}:{bin_dir}:{os.environ['PATH']}"}
        runner = [str(bin_dir / "melissa-nb"), "run", str(study_file(directory, simulations))]
        cpu, wall, code = child_cpu([*runner, "--no-progress"], environment)
        calls = log.read_text().split() if log.exists() else []
        bare = yardstick(directory)
    per_simulation = cpu / simulations
    result.update(
        {
            "simulations": simulations,
            "at_once": AT_ONCE,
            "exit_code": code,
            "wall_s": wall,
            "wall_per_simulation_s": wall / simulations,
            "runner_cpu_s": cpu,
            "runner_cpu_per_simulation_s": per_simulation,
            "yardstick_sbatch_plus_scontrol": bare,
            "runner_cpu_per_simulation_over_yardstick": per_simulation / bare["cpu_s"],
            "calls_per_simulation": {
                name: calls.count(name) / simulations for name in COMMANDS if name in calls
            },
        }
    )
    print(
        f"{simulations} simulations through Slurm (at_once {AT_ONCE}): {wall:.0f} s "
        f"({wall / simulations * 1000:.0f} ms each), runner CPU {per_simulation * 1000:.1f} ms "
        f"per simulation = {per_simulation / bare['cpu_s']:.2f} x one sbatch + scontrol "
        f"({bare['cpu_s'] * 1000:.1f} ms); calls per simulation {result['calls_per_simulation']}"
    )
    path.write_text(json.dumps(result, indent=2))
    return path
