"""Benchmarks of melissa_nb, run by ``python -m bench`` (``nox -s bench``); results in
``bench/results/`` and their reading in ``bench/RESULTS.md``."""
