"""Run the benchmarks: ``python -m bench [NAME ...] [--quick] [--output-dir DIR]``."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from pathlib import Path

# Benchmark name -> module with ``main(*, quick: bool, output_dir: Path) -> Path``.
BENCHMARKS = {
    "kernels": "bench.kernels",
    "ingest": "bench.ingest",
    "startup": "bench.startup",
    "memory": "bench.memory",
    "scheduler": "bench.scheduler",
    "study_scale": "bench.study_scale",
    "auth": "bench.auth",
    "sensitivity": "bench.sensitivity",
    "chaos": "bench.chaos",
    "chaos_worth": "bench.chaos_worth",
    "chaos_heat": "bench.chaos_heat",
}
RESULTS_DIR = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run each chosen benchmark in turn."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "benchmarks",
        nargs="*",
        metavar="NAME",
        help=f"benchmarks to run, among {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny sizes and few repetitions: checks the code, not the speed",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where the JSON results go (default: {RESULTS_DIR})",
    )
    arguments = parser.parse_args(argv)
    unknown = [name for name in arguments.benchmarks if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose among {', '.join(BENCHMARKS)}")
    names = arguments.benchmarks or list(BENCHMARKS)
    if len(names) > 1:
        # One fresh interpreter per benchmark: what one leaves behind (the kernels benchmark's
        # gigabytes in the heap, Numba's threads) must not weigh on the next; a server forked from
        # a big process even inherits its resident size in wait4's peak.
        options = ["--output-dir", str(arguments.output_dir)] + (
            ["--quick"] if arguments.quick else []
        )
        for name in names:
            subprocess.run([sys.executable, "-m", "bench", name, *options], check=True)
        return
    path = importlib.import_module(BENCHMARKS[names[0]]).main(
        quick=arguments.quick, output_dir=arguments.output_dir
    )
    print(f"{names[0]}: results written to {path}")


if __name__ == "__main__":
    main()
