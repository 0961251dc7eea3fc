"""The design's simulations and where each stands, as the runner sees it: the queue of those to
launch, the attempts under way, failures and retries, and the samples given up.

The server names samples, not processes: with Sobol its ids are group ids (one JOB, one
SIMU_STATUS, one TIMEOUT, one DROP per group), as for Melissa 0.6's group jobs. A failed
attempt is relaunched until its retries are spent, then its sample is DROPped; with Sobol the
rest of its group goes with it, since a group missing a member cannot contribute.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from dataclasses import dataclass

from melissa_nb.protocol import Drop, Job
from melissa_nb.study.config import StudyConfig
from melissa_nb.study.jobs import Attempt
from melissa_nb.study.launcher_sockets import HEARTBEAT_SECONDS, Launcher
from melissa_nb.study.sampling import SimulationSpec, design


class Status(enum.Enum):
    """Where a simulation stands, as the runner sees it."""

    PENDING = "pending"
    RUNNING = "running"
    EXITED = "exited"  # the process ended well; the server has not confirmed all its data yet
    FINISHED = "finished"  # the server confirmed every timestep
    DROPPED = "dropped"


@dataclass
class Simulation:
    """A simulation of the design and its history in this study."""

    spec: SimulationSpec
    status: Status = Status.PENDING
    attempts: int = 0
    failures: int = 0


class Samples:
    """Every simulation of one study's design and the state machine of its attempts."""

    def __init__(self, config: StudyConfig, study_id: str) -> None:
        self.config = config
        self.study_id = study_id
        self.simulations = {spec.simulation_id: Simulation(spec) for spec in design(config)}
        self.queue: deque[int] = deque(self.simulations)  # to launch, in this order
        self.active: dict[int, Attempt] = {}  # attempts under way, by simulation id
        self.retried = 0
        self.dropped: dict[int, str] = {}  # sample -> why it was dropped
        self.non_finite: dict[int, set[str]] = {}  # sample -> fields it sent NaN or inf in
        self.next_drops = 0.0

    def members(self, sample: int) -> list[Simulation]:
        """The simulations of a sample: its Sobol group in member order, or the one simulation."""
        size = self.config.group_size
        return [self.simulations[simu_id] for simu_id in range(sample * size, (sample + 1) * size)]

    def job_id(self, sample: int) -> str:
        """The job id the server is told for a sample."""
        return f"{self.study_id}.{sample}"

    def job(self, sample: int) -> Job:
        """The JOB of a sample: its parameters; with Sobol the group's draws A then B (every
        member's point follows from them)."""
        draws = self.members(sample)[:2]
        return Job(sample, self.job_id(sample), tuple(v for m in draws for v in m.spec.values))

    def job_of(self, sample: int) -> Job | None:
        """The answer to `simu_info <sample>`: its JOB, None for an id the study lacks."""
        return self.job(sample) if 0 <= sample < self.config.sample_size else None

    def sent_non_finite(self, sample: int, field: str, launcher: Launcher) -> None:
        """The server refused NaN or infinite values of `field` from a sample: the attempt
        failed. Its members that run or ran are relaunched, or the sample is dropped once
        their retries are spent (a Sobol group needs every member's data of a timestep)."""
        if not 0 <= sample < self.config.sample_size:
            return
        self.non_finite.setdefault(sample, set()).add(field)
        for simulation in self.members(sample):
            if simulation.status in (Status.RUNNING, Status.EXITED):
                self.fail(simulation, launcher, f"sent NaN or infinite values in {field}")

    def timed_out(self, sample: int, launcher: Launcher) -> None:
        """The server heard nothing from a sample for too long.

        While a member is still pending or running the sample is in progress as far as the
        runner knows (a hung process hits the runner's own timeout). When every member ran to
        completion yet the server lacks data, the exited members are relaunched (the server
        keeps what it already has).
        """
        group = self.members(sample)
        if any(simulation.status in (Status.PENDING, Status.RUNNING) for simulation in group):
            return
        for simulation in group:
            if simulation.status == Status.EXITED:
                self.fail(simulation, launcher, "exited without sending every timestep")

    def halt(self, simulation: Simulation) -> None:
        """Stop the simulation's process, if it has one alive."""
        run = self.active.pop(simulation.spec.simulation_id, None)
        if run is not None:
            run.stop()

    def fail(self, simulation: Simulation, launcher: Launcher, why: str) -> None:
        """A failed or timed-out attempt: relaunch next, or drop its sample once retries are spent.

        A relaunch goes to the front of the queue so that its group completes soon. `why`
        (exit code, timeout, ...) is what the summary says of a sample dropped for it.
        """
        self.halt(simulation)
        simulation.failures += 1
        if simulation.failures > self.config.retries:
            member = ""
            if self.config.group_size > 1:
                member = f"simulation {simulation.spec.simulation_id} "
            attempts = simulation.failures
            self.drop(
                simulation.spec.group,
                launcher,
                f"{member}{why}, {attempts} attempt{'s' if attempts > 1 else ''}",
            )
        else:
            simulation.status = Status.PENDING
            self.retried += 1
            self.queue.appendleft(simulation.spec.simulation_id)

    def drop(self, sample: int, launcher: Launcher, why: str) -> None:
        """Give a sample up for good (a whole Sobol group) and tell the server."""
        for simulation in self.members(sample):
            self.halt(simulation)
            simulation.status = Status.DROPPED
        self.dropped.setdefault(sample, why)
        launcher.publish(Drop(sample, self.job_id(sample)))

    def repeat_drops(self, launcher: Launcher) -> None:
        """Publish every DROP again now and then: PUB/SUB gives no delivery guarantee, and a
        lost DROP would leave the server waiting for that sample until the deadline (the
        server ignores a repeated DROP)."""
        now = time.monotonic()
        if now < self.next_drops:
            return
        self.next_drops = now + HEARTBEAT_SECONDS
        for sample in sorted(self.dropped):
            launcher.publish(Drop(sample, self.job_id(sample)))

    def count(self, *statuses: Status) -> int:
        """How many simulations are in one of `statuses`."""
        return sum(simulation.status in statuses for simulation in self.simulations.values())

    def specs(self) -> list[SimulationSpec]:
        """The design, simulation by simulation."""
        return [simulation.spec for simulation in self.simulations.values()]

    def unstarted(self) -> list[int]:
        """Samples none of whose members was ever launched."""
        return [
            sample
            for sample in range(self.config.sample_size)
            if all(
                member.status == Status.PENDING and member.attempts == 0
                for member in self.members(sample)
            )
        ]

    def all_dropped(self) -> bool:
        """True when every simulation was given up."""
        return all(simulation.status == Status.DROPPED for simulation in self.simulations.values())
