"""The CF checker (the `cfchecker` package, `cfchecks`) on a result file, offline.

It needs the udunits2 C library (Debian `libudunits2-0`: `.ci/run` installs it; without it the
tests that use this are skipped and say so) and the CF tables, which it would download: the
trimmed copies in tests/data/cf stand in for them (our files use no standard names, area types
or region names).
"""

from __future__ import annotations

import ctypes.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

TABLES = Path(__file__).parent / "data" / "cf"
CFCHECKS = Path(sys.executable).parent / "cfchecks"


def cf_messages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """The checker's ERROR and WARN messages on `path`, as (variable or "", message) pairs."""
    if ctypes.util.find_library("udunits2") is None:
        pytest.skip("the CF checker needs libudunits2 (apt-get install libudunits2-0)")
    checked = subprocess.run(
        [
            str(CFCHECKS),
            "-s",
            str(TABLES / "standard-name-table.xml"),
            "-a",
            str(TABLES / "area-type-table.xml"),
            "-r",
            str(TABLES / "region-names.xml"),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "ERRORS detected" in checked.stdout, checked.stdout + checked.stderr
    messages: dict[str, list[tuple[str, str]]] = {"ERROR": [], "WARN": []}
    variable = ""
    for line in checked.stdout.splitlines():
        if match := re.match(r"Checking variable: (\S+)", line):
            variable = match.group(1)
        elif match := re.match(r"(ERROR|WARN): (.*)", line):
            messages[match.group(1)].append((variable, match.group(2)))
    return messages


NAMES_AS_COORDINATE = ("parameter", "(5): Possible incorrect declaration of a coordinate variable.")
"""The one warning every Sobol file gets, by choice: `parameter` holds the names as characters
under the dimension's own name, so that xarray makes it the dimension's index
(`ds.sobol_first.sel(parameter="T1")`); the checker expects a coordinate variable to be 1-D."""
