"""`[scheduler]` of a study file: where the server and the simulations run, with the options
of every job (docs/study.md, "On a cluster")."""

from __future__ import annotations

from dataclasses import dataclass

from melissa_nb.study.toml_table import TomlTable

SCHEDULERS = ("local", "slurm")


@dataclass(frozen=True)
class SchedulerConfig:
    """`[scheduler]`: where the server and the simulations run (docs/study.md, "On a cluster").

    `local` (the default) runs them as child processes of the runner; `slurm` submits the server
    as one job and every simulation (every Sobol group) as one job, with these sbatch options.
    """

    kind: str = "local"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: int | None = None  # minutes, per simulation job (sbatch --time)
    server_time_limit: int | None = None  # minutes, for the server job
    cpus_per_simulation: int = 1
    sbatch_arguments: tuple[str, ...] = ()
    pending_warning: float = 600.0  # seconds a job may wait in the queue before a warning
    mpi: str = "pmi2"  # srun --mpi for programs of several ranks (the pip mpich wheel: pmi2)
    submit_patience: float = 600.0  # seconds sbatch may refuse jobs for now before the study ends

    @property
    def cluster(self) -> bool:
        """True when the processes run on other nodes than the runner."""
        return self.kind != "local"


def read_scheduler(table: TomlTable) -> SchedulerConfig:
    """The `[scheduler]` table (absent: the local runner)."""

    def optional_text(key: str) -> str | None:
        return table.text(key) if table.get(key, None) is not None else None

    def optional_minutes(key: str) -> int | None:
        return table.integer(key, minimum=1) if table.get(key, None) is not None else None

    scheduler = SchedulerConfig(
        kind=table.text("kind", "local", SCHEDULERS),
        partition=optional_text("partition"),
        account=optional_text("account"),
        qos=optional_text("qos"),
        time_limit=optional_minutes("time_limit"),
        server_time_limit=optional_minutes("server_time_limit"),
        cpus_per_simulation=table.integer("cpus_per_simulation", 1, minimum=1),
        sbatch_arguments=tuple(table.array("sbatch_arguments", [])),
        pending_warning=table.number("pending_warning", 600.0, minimum=0, exclusive=True),
        mpi=table.text("mpi", "pmi2"),
        submit_patience=table.number("submit_patience", 600.0, minimum=0, exclusive=True),
    )
    if any(not isinstance(item, str) or not item for item in scheduler.sbatch_arguments):
        raise table.fail("sbatch_arguments", "an array of strings", scheduler.sbatch_arguments)
    table.finish()
    return scheduler
