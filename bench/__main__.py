"""Run the benchmarks: ``python -m bench [NAME ...] [--quick] [--output-dir DIR]``."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

# Benchmark name -> module with ``main(*, quick: bool, output_dir: Path) -> Path``.
BENCHMARKS = {"kernels": "bench.kernels", "ingest": "bench.ingest", "startup": "bench.startup",
              "memory": "bench.memory"}
RESULTS_DIR = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run each chosen benchmark in turn."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("benchmarks", nargs="*", metavar="NAME",
                        help=f"benchmarks to run, among {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repetitions: checks the code, not the speed")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR,
                        help=f"where the JSON results go (default: {RESULTS_DIR})")
    arguments = parser.parse_args(argv)
    unknown = [name for name in arguments.benchmarks if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose among {', '.join(BENCHMARKS)}")
    for name in arguments.benchmarks or list(BENCHMARKS):
        path = importlib.import_module(BENCHMARKS[name]).main(
            quick=arguments.quick, output_dir=arguments.output_dir)
        print(f"{name}: results written to {path}")


if __name__ == "__main__":
    main()
