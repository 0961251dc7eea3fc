"""Study files a careless or hostile user writes (issue 25, item 5), through the real CLI:
each is refused before anything starts, with exit code 2 and one line naming the key, never a
traceback, an allocation of terabytes, or a study whose every sample is infinite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import MELISSA, WAIT

STUDY = """
[study]
output_dir = "out"
sample_size = 4
fields = ["u"]
statistics = ["mean"]
timesteps = 1

[simulation]
command = "python sim.py {x}"

[parameters]
x = { distribution = "uniform", low = 0, high = 1 }
"""


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("sample_size = 4", "sample_size = 1000000000000", "[study] sample_size"),
        ('output_dir = "out"', 'output_dir = "a_file"', "[study] output_dir"),
        ('output_dir = "out"', 'output_dir = "a_file/below"', "[study] output_dir"),
        ("python sim.py {x}", "python sim.py {}", "[simulation] command"),
        ("python sim.py {x}", "python sim.py {x:>99999999999}", "[simulation] command"),
        ("python sim.py {x}", "python sim.py {x:>999999999}", "[simulation] command"),
        ("python sim.py {x}", "python sim.py {x!r}", "[simulation] command"),
        ("low = 0, high = 1", "low = -1.7e308, high = 1.7e308", "[parameters.x]"),
        (
            '"uniform", low = 0, high = 1',
            '"normal", mean = 1e308, std = 1e307',
            "[parameters.x]",
        ),
    ],
)
def test_a_hostile_study_file_is_one_line_and_exit_2(tmp_path: Path, old, new, named) -> None:
    assert old in STUDY
    study = tmp_path / "study.toml"
    study.write_text(STUDY.replace(old, new))
    (tmp_path / "sim.py").write_text("")
    (tmp_path / "a_file").write_text("not a directory")
    completed = subprocess.run(
        [str(MELISSA), "run", str(study), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env={"PATH": str(Path(sys.executable).parent)},
    )
    assert completed.returncode == 2, completed.stderr + completed.stdout
    assert "Traceback" not in completed.stderr
    assert completed.stderr.startswith("error: ") and named in completed.stderr
    assert not (tmp_path / "out").exists()  # nothing started
