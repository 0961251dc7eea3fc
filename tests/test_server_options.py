"""The `melissa-nb server` command line is built from ServerConfig's fields, and docs/server.md's
option table documents exactly those options with their defaults."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from melissa_nb.errors import ConfigurationError
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.options import parse_arguments

DOCS = Path(__file__).parent.parent / "docs" / "server.md"


def documented_options() -> dict[str, str]:
    """Every flag of the options table -> its default column, as written."""
    section = DOCS.read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    options = {}
    for line in section.splitlines():
        if line.startswith("| `-"):
            option, default = (cell.strip() for cell in line.strip("|").split("|")[:2])
            for flag in re.findall(r"`(-[-\w]+)`", option):
                options[flag] = default
    return options


def command_line_fields() -> list:
    return [item for item in fields(ServerConfig) if "flags" in item.metadata]


def shown(default: object) -> str:
    """How the docs write a default: numbers plainly (300, not 300.0), texts and lists in
    backticks."""
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        text = ":".join(map(str, default)) if isinstance(default, tuple) else str(default)
        return f"`{text}`"
    return str(int(default)) if default == int(default) else str(default)


def test_docs_table_documents_every_option_and_its_default() -> None:
    documented = documented_options()
    flags = {flag for item in command_line_fields() for flag in item.metadata["flags"]}
    assert set(documented) == flags
    for item in command_line_fields():
        written = {documented[flag] for flag in item.metadata["flags"]}
        assert len(written) == 1, f"{item.name}: one row per option"
        (text,) = written
        if item.default is MISSING:
            assert text == "required", item.name
        elif item.default is None or item.default == ():
            assert not re.fullmatch(r"[\d.]+", text), f"{item.name}: no number for no default"
        else:
            assert text == shown(item.default), item.name


def test_every_option_parses_into_its_field() -> None:
    arguments = ["-s", "7", "-t", "3", "-f", "u:v", "-p", "2", "-o", "mean:sobol:threshold"]
    arguments += ["--treshold", "0.5:1", "--batch-mb", "0", "-c", "12"]
    arguments += ["--output-dir", "out", "--forward-timeout", "5", "-r", "."]
    config = parse_arguments(arguments)
    assert config.sampling_size == 7 and config.timesteps == 3 and config.parameters == 2
    assert config.field_names == ("u", "v") and config.operations == ("mean", "sobol", "threshold")
    assert config.thresholds == (0.5, 1.0) and config.batch_mb == 0 and config.check_interval == 12
    assert config.output_dir == Path("out") and config.restart_dir == Path(".")
    assert config.forward_timeout == 5
    defaults = parse_arguments(["-s", "1", "-t", "1", "-f", "u"])
    for item in command_line_fields():
        if item.default is not MISSING and item.name not in ("study_id",):
            assert getattr(defaults, item.name) == item.default, item.name


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["-s", "1", "-t", "1"], "fieldnames"),
        (["-s", "1", "-t", "1", "-f", "u", "--bogus", "2"], "No such option: --bogus"),
        (["-s", "one", "-t", "1", "-f", "u"], "samplingsize"),
        (["-s", "1", "-t", "1", "-f", "u", "-o", "mean:median"], "unknown operation 'median'"),
    ],
)
def test_a_wrong_option_says_what_is_wrong(arguments: list[str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_arguments(arguments)
