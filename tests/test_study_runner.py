"""The runner's translation of a study into server options (parsed by the real server CLI)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from melissa_nb.cli import app
from melissa_nb.server.config import parse_colon_list
from melissa_nb.study.config import load_study
from melissa_nb.study.launcher import LauncherPorts
from melissa_nb.study.runner import server_arguments, server_command

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
command = "sim {x} {y}"
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


def test_server_options_parse_into_the_study_settings(tmp_path: Path) -> None:
    (tmp_path / "study.toml").write_text(STUDY)
    config = load_study(tmp_path / "study.toml")
    arguments = server_arguments(config, LauncherPorts(push=5001, pull=5002, req=5003), 6000,
                                 "options_42")
    command = typer.main.get_command(app).commands["server"]
    values = command.make_context("server", list(arguments)).params
    assert (values["parameters"], values["sampling_size"], values["timesteps"]) == (2, 8, 7)
    assert parse_colon_list(values["operations"], "-o") == (
        "mean", "min", "max", "threshold", "quantile", "sobol")
    assert parse_colon_list(values["thresholds"], "-e", float) == (-1.5, 2.0)
    assert parse_colon_list(values["quantiles"], "-q", float) == (0.05, 0.95)
    assert parse_colon_list(values["field_names"], "-f") == ("u", "v")
    assert values["launcher_name"] == "127.0.0.1"
    assert (values["txt_push_port"], values["txt_pull_port"], values["txt_req_port"]) == (
        5001, 5002, 5003)
    assert (values["connection_port"], values["data_port"]) == (6000, 0)
    assert (values["timeout"], values["check_interval"], values["verbosity"]) == (12.0, 45.0, 2)
    assert values["confidence"] == 0.9 and values["study_id"] == "options_42"
    assert values["output_dir"] == str(config.output_dir)
    assert values["bind"] == values["advertise"] == "127.0.0.1"


def test_several_ranks_run_under_the_interpreters_mpiexec(tmp_path: Path) -> None:
    (tmp_path / "study.toml").write_text(STUDY)
    config = load_study(tmp_path / "study.toml")
    command = server_command(config, ["-s", "8"])
    bin_dir = Path(sys.executable).parent
    assert command == [str(bin_dir / "mpiexec"), "-n", "3", str(bin_dir / "melissa-nb"),
                       "server", "-s", "8"]
