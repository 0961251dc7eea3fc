"""The runner's translation of a study into server options (parsed by the real server CLI)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
import zmq
from harness import wait_for

from melissa_nb.cli import app
from melissa_nb.ports import free_port
from melissa_nb.server.options import parse_colon_list
from melissa_nb.study.config import load_study
from melissa_nb.study.jobs import LocalJobs
from melissa_nb.study.launcher_sockets import Launcher, LauncherPorts
from melissa_nb.study.runner import StudyRunner
from melissa_nb.study.samples import Status
from melissa_nb.study.server_job import server_arguments, server_command

STUDY = """
[study]
name = "options"
sample_size = 8
sobol = true
fields = ["u", "v"]
statistics = ["mean", "min", "max", "threshold", "quantile"]
thresholds = [-1.5, 2.0]
quantiles = [0.05, 0.95]
timesteps = 7
[simulation]
command = "./sim {x} {y}"
timeout = 12
[server]
ranks = 3
checkpoint_interval = 45
confidence = 0.9
verbosity = 2
[parameters]
x = { distribution = "uniform", low = 0, high = 1 }
y = { distribution = "uniform", low = 0, high = 1 }
"""


def write_study(tmp_path: Path) -> None:
    """The study file and the (never run) executable its command names."""
    (tmp_path / "study.toml").write_text(STUDY)
    (tmp_path / "sim").write_text("#!/bin/sh\n")
    (tmp_path / "sim").chmod(0o755)


def test_server_options_parse_into_the_study_settings(tmp_path: Path) -> None:
    write_study(tmp_path)
    config = load_study(tmp_path / "study.toml")
    arguments = server_arguments(
        config, LauncherPorts(push=5001, pull=5002, req=5003), 6000, "options_42"
    )
    command = typer.main.get_command(app).commands["server"]
    values = command.make_context("server", list(arguments)).params
    assert (values["parameters"], values["sampling_size"], values["timesteps"]) == (2, 8, 7)
    assert parse_colon_list(values["operations"], "-o") == (
        "mean",
        "min",
        "max",
        "threshold",
        "quantile",
        "sobol",
    )
    assert parse_colon_list(values["thresholds"], "-e", float) == (-1.5, 2.0)
    assert parse_colon_list(values["quantiles"], "-q", float) == (0.05, 0.95)
    assert parse_colon_list(values["field_names"], "-f") == ("u", "v")
    assert values["launcher_name"] == "127.0.0.1"
    assert (values["txt_push_port"], values["txt_pull_port"], values["txt_req_port"]) == (
        5001,
        5002,
        5003,
    )
    assert (values["connection_port"], values["data_port"]) == (6000, 0)
    assert (values["timeout"], values["check_interval"], values["verbosity"]) == (12.0, 45.0, 2)
    assert values["confidence"] == 0.9 and values["study_id"] == "options_42"
    assert values["output_dir"] == str(config.output_dir)
    assert values["bind"] == values["advertise"] == "127.0.0.1"


def test_several_ranks_run_under_the_interpreters_mpiexec(tmp_path: Path) -> None:
    write_study(tmp_path)
    config = load_study(tmp_path / "study.toml")
    command = server_command(config, ["-s", "8"], LocalJobs())
    bin_dir = Path(sys.executable).parent
    assert command == (
        str(bin_dir / "mpiexec"),
        "-n",
        "3",
        str(bin_dir / "melissa-nb"),
        "server",
        "-s",
        "8",
    )


DROPPING_SIMULATION = """
import os, sys, time
if os.environ["MELISSA_SIMU_ID"] == "0":
    sys.exit(1)  # member A of group 0 fails at once, on its last attempt
time.sleep(30)  # member B is still running when its group is dropped
"""


def test_a_member_halted_with_its_dropped_group_is_not_retried(tmp_path: Path) -> None:
    """watch() sees A fail, which drops group 0 and halts B: B must stay dropped, not be taken
    for a failure of its own and relaunched (CI once saw it relaunched and reported finished)."""
    (tmp_path / "sim.py").write_text(DROPPING_SIMULATION)
    (tmp_path / "study.toml").write_text(
        STUDY.replace(
            'command = "./sim {x} {y}"', 'command = "python sim.py {x} {y}"\nretries = 1'
        ).replace("[study]\n", f'[study]\noutput_dir = "{tmp_path / "out"}"\n')
    )
    runner = StudyRunner(load_study(tmp_path / "study.toml"), show_progress=False)
    runner.log_dir.mkdir(parents=True)
    context = zmq.Context()
    launcher = Launcher(context, runner.samples.job, options="")
    try:
        member_a, member_b = runner.samples.members(0)[:2]
        member_a.failures = 1  # its retry is spent: this failure drops the group
        for member in (member_a, member_b):
            runner.launch(member, launcher, connection_port=free_port())
        active = runner.samples.active
        wait_for(lambda: active[0].poll() is not None, "member A to fail", timeout=30)
        runner.watch(launcher)
        assert member_a.status == member_b.status == Status.DROPPED
        assert runner.samples.retried == 0 and not runner.samples.active
        assert all(member.status == Status.DROPPED for member in runner.samples.members(0))
    finally:
        for simulation in runner.samples.simulations.values():
            runner.samples.halt(simulation)
        runner.jobs.close()  # the runner's watchdog ends with it
        launcher.close()
        context.term()


def test_dropped_ids_are_all_listed_compactly() -> None:
    from melissa_nb.study.report import id_ranges

    assert id_ranges([9, 2, 3, 4, 5, 11, 12]) == "2-5, 9, 11-12"
    assert id_ranges([7]) == "7"
    assert id_ranges(list(range(1000))) == "0-999"


def test_a_stop_signal_during_a_launch_leaves_no_process_unrecorded(tmp_path: Path) -> None:
    """SIGINT delivered right after a simulation's process started (the gap CI once hit: one
    simulation outlived its interrupted runner): the launch records the attempt, then the
    interruption unwinds, so the cleanup stops that process."""
    import os
    import signal

    import psutil
    import pytest

    from melissa_nb.errors import StudyInterrupted
    from melissa_nb.study.stop_signals import interrupt, stop_signals

    (tmp_path / "sim.py").write_text("import time\ntime.sleep(60)\n")
    (tmp_path / "study.toml").write_text(
        STUDY.replace('command = "./sim {x} {y}"', 'command = "python sim.py {x} {y}"').replace(
            "[study]\n", f'[study]\noutput_dir = "{tmp_path / "out"}"\n'
        )
    )
    runner = StudyRunner(load_study(tmp_path / "study.toml"), show_progress=False)
    runner.log_dir.mkdir(parents=True)
    submit = runner.jobs.submit

    def submit_then_interrupted(*arguments, **keywords):
        job = submit(*arguments, **keywords)
        os.kill(os.getpid(), signal.SIGINT)  # lands before the attempt is recorded
        return job

    runner.jobs.submit = submit_then_interrupted
    context = zmq.Context()
    launcher = Launcher(context, runner.samples.job, options="")
    member = runner.samples.members(0)[0]
    try:
        with stop_signals(interrupt), pytest.raises(StudyInterrupted):
            runner.launch(member, launcher, connection_port=free_port())
        started = runner.samples.active[member.spec.simulation_id].job.process.pid
        assert psutil.pid_exists(started)
    finally:
        for simulation in runner.samples.simulations.values():
            runner.samples.halt(simulation)
        runner.jobs.close()  # the runner's watchdog ends with it
        launcher.close()
        context.term()
    assert not psutil.pid_exists(started) or psutil.Process(started).status() == "zombie"
