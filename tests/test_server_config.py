"""ServerConfig validation, the data-port rule, addresses, and the `melissa-nb server` options."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from melissa_nb.errors import ConfigurationError
from melissa_nb.ports import melissa_data_port
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.options import parse_colon_list

MELISSA = Path(sys.executable).parent / "melissa-nb"


CHAOS = {
    "operations": ("mean", "chaos"),
    "parameters": 2,
    "launcher_name": "localhost",
    "chaos_laws": ("uniform,0,1", "normal,0,1"),
}


def make(**settings) -> ServerConfig:
    base = {"sampling_size": 4, "timesteps": 3, "field_names": ("u",)}
    return ServerConfig(**(base | settings))


@pytest.mark.parametrize(
    ("settings", "option"),
    [
        ({"operations": ("mean", "sobol")}, "-p/--parameters"),
        ({**CHAOS, "chaos_fields": ("w",)}, "--chaos-fields: w not among -f/--fieldnames u"),
        ({**CHAOS, "chaos_timesteps": (0, 3)}, "--chaos-timesteps: [3] outside 0..2"),
        ({**CHAOS, "chaos_timesteps": (1, 1)}, "--chaos-timesteps: repeated"),
        ({**CHAOS, "operations": ("chaos",), "chaos_timesteps": (1,)}, "chaos alone"),
        ({**CHAOS, "chaos_laws": ("uniform,0,1",)}, "--chaos-laws: 1 laws for -p/--parameters 2"),
        ({"operations": ("threshold",)}, "-e/--thresholds"),
        ({"operations": ("quantile",)}, "-q/--quantiles"),
        ({"operations": ("median",)}, "unknown operation 'median'"),
        ({"timesteps": 0}, "-t/--timesteps"),
        ({"sampling_size": 0}, "-s/--samplingsize"),
        ({"field_names": ()}, "-f/--fieldnames"),
        ({"field_names": ("u", "u")}, "-f/--fieldnames: repeated"),
        ({"field_names": ("a/b",)}, "field name 'a/b'"),
        ({"quantiles": (0.5, 1.0), "operations": ("quantile",)}, "-q/--quantiles: order 1.0"),
        ({"connection_port": 0}, "--connection-port"),
        ({"data_port": 70000}, "--data_port"),
        ({"timeout": 0}, "-w/--timeout"),
        ({"confidence": 1.5}, "--confidence"),
        ({"study_id": "bad id"}, "--study-id"),
        ({"port_table_width": 8}, "--port-table-width"),
        ({"member_buffer_mb": 0}, "--member-buffer-mb"),
        ({"batch_mb": -1}, "--batch-mb must be >= 0"),
        ({"launcher_name": "localhost", "connection_port": 5554}, "--connection-port 5554 is"),
        ({"txt_push_port": 5556}, "must differ"),
        (
            {"operations": ("correlation",), "launcher_name": "localhost"},
            "correlation needs -p/--parameters",
        ),
        ({"operations": ("correlation",), "parameters": 2}, "give -n/--launchername"),
        (
            {"operations": ("sobol", "correlation"), "parameters": 2, "launcher_name": "x"},
            "not both",
        ),
        (
            {"forward_to": "tcp://a:1", "forward_ack": "tcp://a:2"},
            "--forward-to needs --forward-key",
        ),
        ({"grid_shape": (3,)}, "--grid-shape: expected rows:columns"),
    ],
)
def test_invalid_settings_name_their_option(settings: dict, option: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(option)):
        make(**settings)


def test_colon_lists() -> None:
    assert parse_colon_list("mean:variance", "-o") == ("mean", "variance")
    assert parse_colon_list("0.5:-1e3", "-e", float) == (0.5, -1000.0)
    assert parse_colon_list(None, "-e", float) == ()
    with pytest.raises(ConfigurationError, match="-e/--thresholds: cannot read '1:x'"):
        parse_colon_list("1:x", "-e/--thresholds", float)
    with pytest.raises(ConfigurationError, match="empty item"):
        parse_colon_list("mean::max", "-o")


def test_data_ports_follow_melissa_and_skip_reserved_ports() -> None:
    reserved = (2002, 2003, 5555, 5556, 5554)
    assert [melissa_data_port(2004, i, reserved) for i in range(3)] == [2004, 2005, 2006]
    assert [melissa_data_port(2000, i, reserved) for i in range(4)] == [2000, 2001, 2004, 2005]
    assert melissa_data_port(0, 5, reserved) == 0
    config = make(data_port=5553)
    assert [config.data_port_for(i) for i in range(3)] == [5553, 5557, 5558]


def test_derived_settings() -> None:
    config = make(operations=("kurtosis", "max", "sobol"), parameters=3, max_cells=1000)
    assert config.sobol and config.group_size == 5 and config.moment_order == 4
    assert config.extrema and config.general_statistics
    assert config.max_message_bytes == 144 + 5 * 8 * 1000
    assert config.bind_address == "127.0.0.1" and config.advertise_host == "127.0.0.1"
    remote = make(launcher_name="some-remote-node")
    assert remote.bind_address == "0.0.0.0" and remote.advertise_host != "0.0.0.0"
    assert make(bind="10.0.0.5").advertise_host == "10.0.0.5"
    assert make(study_id=None).study_id == make().study_id, "every rank derives the same id"
    assert make(output_dir="a").study_id != make(output_dir="b").study_id


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [str(MELISSA), "server", *arguments], capture_output=True, text=True, timeout=60, env=env
    )


def test_a_chaos_subset_leaves_the_other_fields_without_chaos() -> None:
    config = make(**CHAOS, field_names=("u", "v"), chaos_fields=("v",), chaos_timesteps=(2, 0))
    assert config.for_field("u").operations == ("mean",)
    assert config.for_field("v") is config
    assert config.chaos_steps == (0, 2)
    assert make(**CHAOS).chaos_steps == (0, 1, 2)


def test_cli_rejects_bad_combinations_with_exit_code_2() -> None:
    result = run_cli("-s", "3", "-t", "2", "-f", "u", "-o", "mean:sobol")
    assert result.returncode == 2
    assert "-o/--operations sobol needs -p/--parameters >= 1 (got 0)" in result.stderr
    result = run_cli("-s", "3", "-t", "2", "-f", "u", "-o", "threshold", "--treshold", "1:x")
    assert result.returncode == 2
    assert "-e/--thresholds: cannot read '1:x' as floats" in result.stderr
    result = run_cli("-s", "3", "-t", "two", "-f", "u")
    assert result.returncode == 2 and "--timesteps" in result.stderr


def test_cli_help_lists_melissa_spellings() -> None:
    result = subprocess.run(
        [str(MELISSA), "server", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert result.returncode == 0
    for spelling in (
        "--samplingsize",
        "--treshold",
        "--tresholds",
        "--quantile",
        "--txt_push_port",
        "--txt_pull_port",
        "--txt_req_port",
        "--data_port",
        "--launchername",
    ):
        assert spelling in result.stdout, spelling


@pytest.mark.parametrize("arguments", [["--version"], ["version"]])
def test_version_as_an_option_and_a_command(arguments: list[str]) -> None:
    from melissa_nb import __version__

    completed = subprocess.run(
        [str(MELISSA), *arguments], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == __version__
