"""Submit-to-status latency on the Slurm that SLURM_CONF names: plain sbatch + scontrol (what
`melissa_nb.study.slurm` does) against psij-python's Slurm executor, one `true` job at a time.

Measured per job: the submit call, submit -> RUNNING seen, submit -> COMPLETED seen. Also, with
`melissa-nb run` on the same Slurm, the overhead per simulation is the scheduler's start latency
(this benchmark's RUNNING column) plus the simulation's own start. Without a Slurm, the result
file says so and nothing is measured.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench.timing import machine_info

JOBS = 10
POLL_SECONDS = 0.05


def _state(job_id: str) -> str:
    shown = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True
    )
    match = re.search(r"\bJobState=(\S+)", shown.stdout)
    return match.group(1) if match else "VANISHED"


def plain_sbatch(directory: Path) -> dict[str, float]:
    """sbatch --parsable, then scontrol polled every POLL_SECONDS."""
    script = directory / "true.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    started = time.perf_counter()
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--output={directory}/plain-%j.out", str(script)],
        capture_output=True,
        text=True,
        check=True,
    )
    submit = time.perf_counter() - started
    job_id = submitted.stdout.strip().split(";")[0]
    running = None
    while True:
        state = _state(job_id)
        now = time.perf_counter() - started
        if state in ("RUNNING", "COMPLETING", "COMPLETED") and running is None:
            running = now
        if state not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
            return {"submit_s": submit, "running_s": running or now, "done_s": now}
        time.sleep(POLL_SECONDS)


def psij_executor(directory: Path, polling: float | None) -> dict[str, float]:
    """psij's Slurm executor; its own status polling (default: first poll after 2 s, then every
    30 s; or first and every `polling` s)."""
    import psij
    from psij.executors.batch.slurm import SlurmExecutorConfig

    timing = {}
    if polling is not None:
        timing = {"queue_polling_interval": polling, "initial_queue_polling_delay": polling}
    config = SlurmExecutorConfig(work_directory=directory, **timing)
    executor = psij.JobExecutor.get_instance("slurm", config=config)
    job = psij.Job(psij.JobSpec(executable="/bin/true", directory=directory))
    running: list[float] = []
    started = time.perf_counter()

    def seen(_job: object, status: psij.JobStatus) -> None:
        if status.state == psij.JobState.ACTIVE and not running:
            running.append(time.perf_counter() - started)

    job.set_job_status_callback(seen)
    executor.submit(job)
    submit = time.perf_counter() - started
    job.wait()
    done = time.perf_counter() - started
    return {"submit_s": submit, "running_s": running[0] if running else done, "done_s": done}


def summary(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}


def main(*, quick: bool, output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "scheduler.json"
    result: dict[str, object] = {"benchmark": "scheduler", "quick": quick}
    result["machine"] = machine_info()
    if not os.environ.get("SLURM_CONF") or shutil.which("sbatch") is None:
        result["skipped"] = "no Slurm: start one with tools/local-slurm and export SLURM_CONF"
        path.write_text(json.dumps(result, indent=2))
        print(result["skipped"])
        return path
    jobs = 2 if quick else JOBS
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        methods = {"plain sbatch + scontrol": lambda: plain_sbatch(directory)}
        try:
            import psij  # noqa: F401

            methods["psij-python (default polling)"] = lambda: psij_executor(directory, None)
            methods["psij-python (polling 0.1 s)"] = lambda: psij_executor(directory, 0.1)
            methods["psij-python (polling 1 s)"] = lambda: psij_executor(directory, 1)
        except ImportError:
            result["psij"] = "psij-python not installed (pip install '.[bench]')"
        for name, measure in methods.items():
            samples = [measure() for _ in range(jobs)]
            result[name] = {"median": summary(samples), "samples": samples}
            median = result[name]["median"]
            print(
                f"{name}: submit {median['submit_s'] * 1000:.0f} ms, running after "
                f"{median['running_s']:.2f} s, completed seen after {median['done_s']:.2f} s"
            )
    path.write_text(json.dumps(result, indent=2))
    return path
