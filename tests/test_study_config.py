"""Study files: a valid file loads into the expected settings; every bad key is named."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melissa_nb.errors import ConfigurationError
from melissa_nb.study.config import load_study, parse_study, tomllib

VALID = """
[study]
name = "demo"
output_dir = "out"
sample_size = 8
sampling = "latin_hypercube"
seed = 3
sobol = true
fields = ["u", "v"]
statistics = ["mean", "variance", "threshold", "quantile"]
thresholds = [0.5, -1]
quantiles = [0.1, 0.9]
timesteps = 4
grid_shape = [2, 3]

[simulation]
command = "python sim.py --a {a} --b={b}"
at_once = 3
timeout = 20
retries = 1

[server]
ranks = 2
threads = 3
checkpoint_interval = 60

[parameters]
a = { distribution = "uniform", low = 0, high = 1 }
b = { distribution = "normal", mean = 1.5, std = 0.5 }
c = { distribution = "loguniform", low = 0.01, high = 10 }
"""


def write(tmp_path: Path, text: str) -> Path:
    """The study file, beside the programs its commands name (`sim.py`, an executable `sim`)."""
    path = tmp_path / "study.toml"
    path.write_text(text)
    (tmp_path / "sim.py").write_text("")
    (tmp_path / "sim").write_text("#!/bin/sh\n")
    (tmp_path / "sim").chmod(0o755)
    return path


@pytest.mark.parametrize(
    ("command", "remove", "message"),
    [
        ("python sim.py --a {a} --b={b}", "sim.py", "a Python script that exists in"),
        ("./sim {a}", "sim", "a program on PATH or executable in"),
        ("no-such-program-here {a}", None, "a program on PATH or executable in"),
    ],
)
def test_a_simulation_program_that_cannot_run_is_named_before_anything_starts(
    tmp_path: Path, command: str, remove: str | None, message: str
) -> None:
    """It used to start the server and fail every simulation (a 120-line traceback for a
    missing program)."""
    path = write(tmp_path, replaced('"python sim.py --a {a} --b={b}"', f'"{command}"'))
    if remove is not None:
        (tmp_path / remove).unlink()
    with pytest.raises(ConfigurationError) as error:
        load_study(path)
    assert str(error.value).startswith("[simulation] command: expected " + message), error.value


def replaced(old: str, new: str) -> str:
    assert old in VALID, old
    return VALID.replace(old, new, 1)


def test_valid_study_loads_every_setting(tmp_path: Path) -> None:
    config = load_study(write(tmp_path, VALID))
    assert config.name == "demo"
    assert config.output_dir == (tmp_path / "out").resolve()
    assert config.parameter_names == ("a", "b", "c")
    assert [p.distribution for p in config.parameters] == ["uniform", "normal", "loguniform"]
    assert config.parameters[1].arguments == (1.5, 0.5)
    assert (config.sample_size, config.sampling, config.seed, config.sobol) == (
        8,
        "latin_hypercube",
        3,
        True,
    )
    assert config.group_size == 5 and config.sample_size * config.group_size == 40
    assert config.fields == ("u", "v") and config.timesteps == 4
    assert config.operations == ("mean", "variance", "threshold", "quantile", "sobol")
    assert config.thresholds == (0.5, -1.0) and config.quantiles == (0.1, 0.9)
    assert config.grid_shape == (2, 3)
    assert (config.at_once, config.simulation_timeout, config.retries) == (3, 20.0, 1)
    assert (config.server_ranks, config.server_threads, config.checkpoint_interval) == (2, 3, 60.0)
    assert config.working_dir == tmp_path.resolve()
    # "python" is the interpreter running the study; values are exact (repr) text.
    assert config.command_for({"a": 0.1, "b": 2.0, "c": 1.0}) == [
        sys.executable,
        "sim.py",
        "--a",
        "0.1",
        "--b=2.0",
    ]


def test_defaults_fill_optional_keys(tmp_path: Path) -> None:
    text = """
[study]
sample_size = 3
fields = ["f"]
timesteps = 1
[simulation]
command = "./sim {x}"
[parameters]
x = { distribution = "uniform", low = 0, high = 1 }
"""
    config = load_study(write(tmp_path, text))
    assert config.name == "study" and config.sampling == "monte_carlo" and not config.sobol
    assert config.statistics == ("mean", "variance") and config.server_ranks == 1
    assert config.server_threads == 1
    assert config.command == ("./sim", "{x}")


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("sample_size = 8", "sample_size = 0", "[study] sample_size"),
        ("sample_size = 8", "sample_size = 'eight'", "[study] sample_size"),
        ("sample_size = 8\n", "", "[study] sample_size is missing"),
        ("sample_size = 8", "sample_size = 3", "[study] sample_size"),  # sobol needs >= 4
        ('sampling = "latin_hypercube"', 'sampling = "grid"', "[study] sampling"),
        ("timesteps = 4\n", "", "[study] timesteps is missing"),
        ("sobol = true", "sobol = 1", "[study] sobol"),
        ('fields = ["u", "v"]', 'fields = ["u:v"]', "[study] fields"),
        ('fields = ["u", "v"]', "fields = []", "[study] fields"),
        ('"quantile"]', '"quantile", "median"]', "[study] statistics"),
        ('"quantile"]', '"quantile", "sobol"]', "[study] statistics"),
        ('"quantile"]', '"quantile", "correlation"]', "no 'correlation' with sobol = true"),
        ("thresholds = [0.5, -1]", "thresholds = []", "[study] thresholds"),
        ("quantiles = [0.1, 0.9]", "quantiles = [0.1, 1.0]", "[study] quantiles"),
        ("quantiles = [0.1, 0.9]", "quantiles = [0.1, 0.1]", "[study] quantiles"),
        ("grid_shape = [2, 3]", "grid_shape = [2, 0]", "[study] grid_shape"),
        ("seed = 3", "seed = 3\nsead = 4", "[study] unknown key 'sead'"),
        (
            'command = "python sim.py --a {a} --b={b}"',
            'command = "sim {a} {d}"',
            "unknown placeholder {d}",
        ),
        (
            'command = "python sim.py --a {a} --b={b}"',
            'command = "sim \'{a}"',
            "[simulation] command",
        ),
        ("at_once = 3", "at_once = 0", "[simulation] at_once"),
        ("timeout = 20", "timeout = -1", "[simulation] timeout"),
        ("timeout = 20", "timeout = 0", "[simulation] timeout"),
        ("timeout = 20", 'timeout = "ten"', "[simulation] timeout"),
        ("timeout = 20", "timeout = inf", "[simulation] timeout"),
        ("retries = 1", "retries = 1.5", "[simulation] retries"),
        ("ranks = 2", "ranks = 2\ncores = 4", "[server] unknown key 'cores'"),
        ("threads = 3", "threads = 0", "[server] threads"),
        ('distribution = "normal"', 'distribution = "gamma"', "[parameters.b] distribution"),
        ("std = 0.5", "std = 0", "[parameters.b] std"),
        ("std = 0.5", "sd = 0.5", "[parameters.b] std is missing"),
        ("low = 0, high = 1", "low = 1, high = 0", "[parameters.a] high"),
        ("low = 0.01, high = 10", "low = 0, high = 10", "[parameters.c] low"),
        ("high = 1 }", "high = 1, step = 2 }", "[parameters.a] unknown key 'step'"),
        ("a = {", "2a = {", "'2a'"),
        ("[server]", "[servers]", "[top level] unknown key 'servers'"),
        ("[simulation]", "[simulations]", "[top level] simulation is missing"),
    ],
)
def test_bad_key_is_named(tmp_path: Path, old: str, new: str, named: str) -> None:
    with pytest.raises(ConfigurationError) as error:
        load_study(write(tmp_path, replaced(old, new)))
    assert named in str(error.value)


def test_missing_parameters_table_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"\[top level\] parameters is missing"):
        load_study(write(tmp_path, VALID.split("[parameters]")[0]))


def test_missing_file_and_invalid_toml_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_study(tmp_path / "nowhere.toml")
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        load_study(write(tmp_path, "[study\n"))


def test_examples_are_valid_studies() -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    heat = load_study(examples / "heat" / "study.toml")
    assert heat.sobol and heat.sample_size >= 20 and heat.timesteps == 100
    assert heat.grid_shape == (100, 100) and len(heat.parameters) == 5
    ishigami = load_study(examples / "ishigami" / "study.toml")
    assert ishigami.sobol and ishigami.parameter_names == ("x1", "x2", "x3")


TOML_VALUES = st.recursive(
    st.none().map(lambda _: "")
    | st.booleans()
    | st.integers(-5, 50)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    section=st.sampled_from(["study", "simulation", "server", "parameters"]),
    key=st.sampled_from(
        [
            "sample_size",
            "timesteps",
            "fields",
            "statistics",
            "thresholds",
            "quantiles",
            "grid_shape",
            "command",
            "at_once",
            "timeout",
            "ranks",
            "confidence",
            "a",
            "sobol",
            "sampling",
            "seed",
            "other",
        ]
    ),
    value=TOML_VALUES,
)
def test_any_value_anywhere_gives_a_configuration_error_or_a_study(
    tmp_path_factory: pytest.TempPathFactory, section: str, key: str, value: object
) -> None:
    data = tomllib.loads(VALID)
    data[section][key] = value
    path = tmp_path_factory.getbasetemp() / "study.toml"
    try:
        parse_study(data, path)
    except ConfigurationError as error:
        assert str(error)
