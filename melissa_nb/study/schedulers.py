"""Which scheduler runs a study's programs (`[scheduler] kind`), and the check, before anything
starts, that the scheduler can ever run the study's jobs."""

from __future__ import annotations

from collections.abc import Callable

from melissa_nb.study.config import StudyConfig
from melissa_nb.study.jobs import Jobs, LocalJobs
from melissa_nb.study.slurm import Shape, SlurmJobs


def make_jobs(config: StudyConfig, study_id: str, tell: Callable[[str], None]) -> Jobs:
    """Where this study's programs run: here, or as jobs of the scheduler its file names
    (checked before anything starts: a missing sbatch, or a job no node could hold, is an
    error at once); `tell` shows the scheduler's warnings."""
    if config.scheduler.kind == "slurm":
        jobs = SlurmJobs(config.scheduler, config.output_dir / "jobs", study_id, tell)
        jobs.refuse_what_cannot_fit(job_shapes(config))
        return jobs
    return LocalJobs()


def job_shapes(config: StudyConfig) -> list[Shape]:
    """The shapes of the study's jobs: one simulation (or Sobol group), the server."""
    cpus, members = config.scheduler.cpus_per_simulation, config.group_size
    ranks = config.simulation_ranks
    simulation = f"{ranks} ranks x {cpus} CPUs" if ranks > 1 else f"{cpus} CPUs"
    what = f"a simulation ({simulation})"
    if members > 1:
        what = f"a Sobol group ({members} members of {simulation})"
    server = f"the server ({config.server_ranks} ranks x {config.server_threads} threads)"
    return [
        Shape(what, members * ranks, cpus),
        Shape(server, config.server_ranks, config.server_threads, config.server_nodes),
    ]
