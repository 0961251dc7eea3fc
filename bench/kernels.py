"""Benchmark of the melissa_nb statistics kernels against numpy and iterative-stats 0.1.2.

For each kernel and size: milliseconds per update (best of repeated steady-state updates through
the object API), effective bandwidth from the bytes the update must touch, its fraction of the
triad bandwidth measured in the same run, and the speed-up against the straightforward in-place
numpy version and against iterative-stats, both timed in the same run on the same data. It also
times ``import melissa_nb.kernels`` plus first calls in fresh processes, with a warm and a cold
Numba cache. Results go to ``kernels.json``; see ``bench/RESULTS.md`` for how to read them.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import baselines
from bench.timing import Timing, machine_info, time_interleaved
from bench.triad import BYTES_PER_ELEMENT, DEFAULT_ELEMENTS, scaled_add_gbps, triad_gbps
from melissa_nb import kernels

SIZES = (100_000, 1_000_000, 10_000_000)
QUICK_SIZES = (2_000,)
THRESHOLDS = (0.0, 1.0)
QUANTILE_ORDERS = (0.05, 0.5, 0.95)
SOBOL_PARAMETERS = 5
# One iterative-stats Martinez increment costs ~0.27 s per 1e6 cells: above this size it would
# dominate the run, so it is timed only up to here (its records say so).
ITERATIVE_STATS_SOBOL_MAX_CELLS = 1_000_000
# Targets of issue 2, reported against and never tuned to.
TARGET_FRACTION_OF_TRIAD = 0.60
TARGET_FRACTION_MIN_CELLS = 1_000_000
TARGET_SOBOL_SPEEDUP = 10.0
TARGET_SOBOL_CELLS = 1_000_000
TARGET_IMPORT_FIRST_CALL_S = 1.0
# Relative state difference above which a numpy baseline is taken to compute something else.
AGREEMENT_TOLERANCE = 1e-10

# How many times an update must move each per-cell state array (the object layouts' names):
# 2 = read and written every update; 1 = read every update, written only rarely (the shift at the
# first sample, an extremum or range bound when a new one arrives: ~2/n of the cells after n
# samples); 0 = written only when a new extremum arrives, never read. The input is read once.
# A layout array missing here is an error, so a new state array cannot go uncounted.
STATE_ACCESSES = {
    "shift": 1,
    "central": 2,
    "min": 1,
    "max": 1,
    "min_simulation": 0,
    "max_simulation": 0,
    "exceedances": 2,
    "quantile": 2,
    "quantile_low": 1,
    "quantile_high": 1,
    "mean": 2,
    "m2": 2,
    "comoment_first": 2,
    "comoment_total": 2,
}

Update = Callable[[np.ndarray, int], None]


@dataclass(frozen=True)
class KernelCase:
    """One update kernel, how to build it and what it is compared with.

    The three factories take ``cells`` and return a fresh statistics object: melissa_nb's (the
    object API the server uses), the numpy baseline and the iterative-stats objects.
    """

    name: str
    statistic: str
    input_rows: int  # rows of one update's input: 1 for a field vector, p + 2 for a Sobol group
    layout: Callable[[int], Mapping[str, tuple[tuple[int, ...], np.dtype]]]
    melissa_nb: Callable[[int], Any]
    numpy: Callable[[int], Any]
    iterative_stats: Callable[[int], Any]
    iterative_stats_statistic: str
    takes_simulation: bool = False  # whether melissa_nb's update takes the simulation id
    iterative_stats_max_cells: int | None = None

    def melissa_nb_update(self, statistic: Any) -> Update:
        """``statistic.update`` called as ``update(data, simulation)``."""
        if self.takes_simulation:
            return statistic.update
        return lambda data, simulation: statistic.update(data)


def kernel_cases() -> list[KernelCase]:
    """Every update kernel of melissa_nb.kernels with its settings for this benchmark."""
    fused = {"order": 4, "extrema": True, "thresholds": THRESHOLDS, "quantiles": QUANTILE_ORDERS}
    return [
        KernelCase(
            name="moments_order2",
            statistic="Moments(cells, order=2)",
            input_rows=1,
            layout=lambda cells: kernels.Moments.layout(cells, order=2),
            melissa_nb=lambda cells: kernels.Moments(cells, 2),
            numpy=lambda cells: baselines.NumpyMoments(cells, 2),
            iterative_stats=lambda cells: baselines.iterative_stats_moments(cells, 2),
            iterative_stats_statistic="IterativeVariance",
        ),
        KernelCase(
            name="moments_order4",
            statistic="Moments(cells, order=4)",
            input_rows=1,
            layout=lambda cells: kernels.Moments.layout(cells, order=4),
            melissa_nb=lambda cells: kernels.Moments(cells, 4),
            numpy=lambda cells: baselines.NumpyMoments(cells, 4),
            iterative_stats=lambda cells: baselines.iterative_stats_moments(cells, 4),
            iterative_stats_statistic="IterativeMoments(max_order=4)",
        ),
        KernelCase(
            name="extrema",
            statistic="Extrema(cells)",
            input_rows=1,
            layout=kernels.Extrema.layout,
            melissa_nb=kernels.Extrema,
            numpy=baselines.NumpyExtrema,
            iterative_stats=baselines.iterative_stats_extrema,
            iterative_stats_statistic="IterativeExtrema (no ids)",
            takes_simulation=True,
        ),
        KernelCase(
            name="thresholds_2",
            statistic=f"ThresholdExceedance(cells, {list(THRESHOLDS)})",
            input_rows=1,
            layout=lambda cells: kernels.ThresholdExceedance.layout(cells, THRESHOLDS),
            melissa_nb=lambda cells: kernels.ThresholdExceedance(cells, THRESHOLDS),
            numpy=lambda cells: baselines.NumpyThresholds(cells, THRESHOLDS),
            iterative_stats=lambda cells: baselines.iterative_stats_thresholds(cells, THRESHOLDS),
            iterative_stats_statistic=f"{len(THRESHOLDS)} x IterativeThreshold",
        ),
        KernelCase(
            name="quantiles_3",
            statistic=f"Quantiles(cells, {list(QUANTILE_ORDERS)})",
            input_rows=1,
            layout=lambda cells: kernels.Quantiles.layout(cells, QUANTILE_ORDERS),
            melissa_nb=lambda cells: kernels.Quantiles(cells, QUANTILE_ORDERS),
            numpy=lambda cells: baselines.NumpyQuantiles(cells, QUANTILE_ORDERS),
            iterative_stats=lambda cells: baselines.iterative_stats_quantiles(
                cells, QUANTILE_ORDERS
            ),
            iterative_stats_statistic=f"{len(QUANTILE_ORDERS)} x IterativeQuantile",
        ),
        KernelCase(
            name=f"sobol_martinez_p{SOBOL_PARAMETERS}",
            statistic=f"SobolMartinez(cells, {SOBOL_PARAMETERS})",
            input_rows=SOBOL_PARAMETERS + 2,
            layout=lambda cells: kernels.SobolMartinez.layout(cells, SOBOL_PARAMETERS),
            melissa_nb=lambda cells: kernels.SobolMartinez(cells, SOBOL_PARAMETERS),
            numpy=lambda cells: baselines.NumpySobolMartinez(cells, SOBOL_PARAMETERS),
            iterative_stats=lambda cells: baselines.iterative_stats_sobol_martinez(
                cells, SOBOL_PARAMETERS
            ),
            iterative_stats_statistic="IterativeSensitivityMartinez",
            iterative_stats_max_cells=ITERATIVE_STATS_SOBOL_MAX_CELLS,
        ),
        KernelCase(
            name="fused",
            statistic=f"FieldStatistics(cells, {_call_arguments(fused)})",
            input_rows=1,
            layout=lambda cells: kernels.FieldStatistics.layout(cells, **fused),
            melissa_nb=lambda cells: kernels.FieldStatistics(cells, **fused),
            numpy=lambda cells: baselines.NumpyFieldStatistics(cells, **fused),
            iterative_stats=lambda cells: baselines.iterative_stats_field_statistics(
                cells, **fused
            ),
            iterative_stats_statistic="IterativeMoments(4), IterativeExtrema, "
            f"{len(THRESHOLDS)} x IterativeThreshold, "
            f"{len(QUANTILE_ORDERS)} x IterativeQuantile",
            takes_simulation=True,
        ),
    ]


def _call_arguments(settings: Mapping[str, object]) -> str:
    return ", ".join(
        f"{key}={list(value) if isinstance(value, tuple) else value}"
        for key, value in settings.items()
    )


def numpy_disagreement(case: KernelCase, cells: int = 5003, samples: int = 6) -> float:
    """Largest difference between melissa_nb's state and the numpy baseline's after the same
    ``samples`` updates, relative to each state array's magnitude.

    A speed-up means something only if both sides compute the same statistic: the benchmark
    refuses to run against a baseline that disagrees (``AGREEMENT_TOLERANCE``).
    """
    rng = np.random.default_rng(7)
    ours = case.melissa_nb(cells)
    reference = case.numpy(cells)
    update = case.melissa_nb_update(ours)
    for simulation, data in enumerate(_inputs(rng, case.input_rows, cells, samples)):
        update(data, simulation)
        reference.update(data, simulation)
    expected_names = set(ours.arrays) - {"count"}
    if set(reference.arrays) != expected_names:
        raise KeyError(
            f"{case.name}: numpy baseline state {sorted(reference.arrays)} does not "
            f"match melissa_nb's {sorted(expected_names)}"
        )
    worst = 0.0
    for name, expected in reference.arrays.items():
        scale = max(1.0, float(np.max(np.abs(expected))))
        difference = np.max(np.abs(ours.arrays[name] - expected.astype(np.float64)))
        worst = max(worst, float(difference) / scale)
    return worst


def bytes_per_cell(case: KernelCase) -> int:
    """Bytes one update must move per cell: the input once plus the state per STATE_ACCESSES."""
    cells = 8
    total = 8 * case.input_rows
    for name, (shape, dtype) in case.layout(cells).items():
        if name == "count":
            continue
        if name not in STATE_ACCESSES:
            raise KeyError(f"{case.name}: state array {name!r} has no entry in STATE_ACCESSES")
        per_cell = math.prod(shape) // cells * np.dtype(dtype).itemsize
        total += STATE_ACCESSES[name] * per_cell
    return total


def _inputs(rng: np.random.Generator, rows: int, cells: int, count: int = 2) -> list[np.ndarray]:
    """A few distinct standard-normal inputs, cycled through by the timed updates."""
    shape = (cells,) if rows == 1 else (rows, cells)
    return [rng.standard_normal(shape) for _ in range(count)]


def steady_state_call(update: Update, inputs: Sequence[np.ndarray]) -> Callable[[], None]:
    """A call folding the next input (cycling through ``inputs``) into a state built before.

    No state is reset between timed calls: every call folds one more sample in, which is the
    server's steady state (the first sample's initialisation happens in the warm-up).
    """
    simulations = itertools.count()

    def call() -> None:
        simulation = next(simulations)
        update(inputs[simulation % len(inputs)], simulation)

    return call


def iterative_stats_note(case: KernelCase, cells: int) -> str | None:
    """Why iterative-stats is not timed for this kernel and size, or None if it is."""
    if not baselines.iterative_stats_installed():
        return "iterative-stats not installed (pip install '.[bench]')"
    if case.iterative_stats_max_cells is not None and cells > case.iterative_stats_max_cells:
        return (
            f"iterative-stats timed only at <= {case.iterative_stats_max_cells} cells "
            "(too slow above)"
        )
    return None


def time_case(
    case: KernelCase, cells: int, inputs: Sequence[np.ndarray], budget_s: float
) -> dict[str, Timing]:
    """melissa_nb, numpy and (where timed) iterative-stats, interleaved on the same inputs."""
    calls = {
        "melissa_nb": steady_state_call(case.melissa_nb_update(case.melissa_nb(cells)), inputs),
        "numpy": steady_state_call(case.numpy(cells).update, inputs),
    }
    if iterative_stats_note(case, cells) is None:
        calls["iterative_stats"] = steady_state_call(case.iterative_stats(cells).update, inputs)
    return time_interleaved(calls, budget_s=budget_s)


def case_record(
    case: KernelCase, cells: int, passes: Sequence[Mapping[str, Timing]]
) -> dict[str, object]:
    """The record of one kernel at one size from its timings in every pass: the best time of
    each implementation over all passes (fractions of triad are added by the caller)."""
    best = {name: min(timings[name].best_s for timings in passes) for name in passes[0]}
    ours = best["melissa_nb"]
    reference = best.get("iterative_stats")
    byte_count = bytes_per_cell(case)
    return {
        "name": case.name,
        "statistic": case.statistic,
        "cells": cells,
        "bytes_per_cell": byte_count,
        "ms": ours * 1e3,
        "ms_median": min(timings["melissa_nb"].median_s for timings in passes) * 1e3,
        "repeats": sum(timings["melissa_nb"].repeats for timings in passes),
        "gbps": byte_count * cells / ours / 1e9,
        "fraction_of_triad": None,
        "numpy_ms": best["numpy"] * 1e3,
        "speedup_vs_numpy": best["numpy"] / ours,
        "iterative_stats_statistic": case.iterative_stats_statistic,
        "iterative_stats_ms": None if reference is None else reference * 1e3,
        "speedup_vs_iterative_stats": None if reference is None else reference / ours,
        "note": iterative_stats_note(case, cells),
    }


_FIRST_CALL_SCRIPT = """
import json, time
start = time.perf_counter()
import numpy as np
import melissa_nb.kernels as kernels
imported = time.perf_counter()
cells = 1000
x = np.linspace(0.0, 1.0, cells)
fields = kernels.FieldStatistics(cells, order=4, extrema=True, thresholds=[0.5], quantiles=[0.5])
fields.update(x, 0)
sobol = kernels.SobolMartinez(cells, 5)
sobol.update(np.tile(x, (7, 1)))
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "first_call_s": done - imported,
                  "total_s": done - start}))
"""
FIRST_CALL = (
    "import numpy and melissa_nb.kernels, then one FieldStatistics(order=4, extrema, "
    "1 threshold, 1 quantile).update and one SobolMartinez(p=5).update of 1000 cells"
)


def _first_call_in_fresh_process(environment: Mapping[str, str]) -> dict[str, float]:
    completed = subprocess.run(
        [sys.executable, "-c", _FIRST_CALL_SCRIPT],
        env=dict(environment),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure_import(*, cold: bool, warm_runs: int = 3) -> dict[str, object]:
    """Import plus first calls in fresh processes: best of ``warm_runs`` with the kernels'
    cache already written (one unmeasured run first makes sure it is), and, if ``cold``, one run
    with NUMBA_CACHE_DIR pointing to an empty directory (everything compiles)."""
    environment = {key: value for key, value in os.environ.items() if key != "MELISSA_NB_NO_CACHE"}
    _first_call_in_fresh_process(environment)
    warm = [_first_call_in_fresh_process(environment) for _ in range(warm_runs)]
    result: dict[str, object] = {
        "what": FIRST_CALL,
        "warm_cache": min(warm, key=lambda run: run["total_s"]),
        "warm_cache_runs": len(warm),
        "cold_cache": None,
    }
    if cold:
        with tempfile.TemporaryDirectory(prefix="melissa_nb_bench_cache_") as cache_dir:
            result["cold_cache"] = _first_call_in_fresh_process(
                {**environment, "NUMBA_CACHE_DIR": cache_dir}
            )
    return result


def _targets(
    records: Sequence[Mapping[str, object]], import_time: Mapping[str, object]
) -> list[dict[str, object]]:
    """Each target of issue 2 that this run's sizes can judge, with its value and verdict."""
    targets: list[dict[str, object]] = []
    for record in records:
        if record["cells"] >= TARGET_FRACTION_MIN_CELLS:
            targets.append(
                {
                    "target": f"{record['name']} at {record['cells']} cells >= "
                    f"{TARGET_FRACTION_OF_TRIAD:.0%} of triad",
                    "value": record["fraction_of_triad"],
                    "pass": record["fraction_of_triad"] >= TARGET_FRACTION_OF_TRIAD,
                }
            )
        if (
            record["name"] == f"sobol_martinez_p{SOBOL_PARAMETERS}"
            and record["cells"] == TARGET_SOBOL_CELLS
        ):
            speedup = record["speedup_vs_iterative_stats"]
            targets.append(
                {
                    "target": f"{record['name']} at {TARGET_SOBOL_CELLS} cells >= "
                    f"{TARGET_SOBOL_SPEEDUP:g}x faster than iterative-stats",
                    "value": speedup,
                    "pass": speedup is not None and speedup >= TARGET_SOBOL_SPEEDUP,
                }
            )
    warm = import_time["warm_cache"]
    targets.append(
        {
            "target": f"import + first calls, warm cache < {TARGET_IMPORT_FIRST_CALL_S:g} s",
            "value": warm["total_s"],
            "pass": warm["total_s"] < TARGET_IMPORT_FIRST_CALL_S,
        }
    )
    return targets


def run(
    sizes: Sequence[int] = SIZES,
    *,
    quick: bool = False,
    passes: int = 2,
    progress: Callable[[str], None] = print,
) -> dict[str, object]:
    """Run the whole kernel benchmark and return the results (what ``kernels.json`` holds).

    Every kernel and size is timed in each of ``passes`` passes over all of them, and keeps its
    best time: a neighbour's burst of activity during one pass does not decide the result.
    """
    load_start = os.getloadavg()[0]
    budget_s = 0.02 if quick else 0.6
    yardstick_elements = 1_000_000 if quick else DEFAULT_ELEMENTS
    cases = kernel_cases()
    disagreement = {case.name: numpy_disagreement(case) for case in cases}
    for name, difference in disagreement.items():
        if not difference <= AGREEMENT_TOLERANCE:
            raise RuntimeError(
                f"the numpy baseline of {name} disagrees with melissa_nb by "
                f"{difference:.3g} (relative): the speed-up would be meaningless"
            )
    triads = [triad_gbps(yardstick_elements)]
    scaled_adds = [scaled_add_gbps(yardstick_elements)]
    progress(f"triad: {triads[-1]:.1f} GB/s, in-place a += s*b: {scaled_adds[-1]:.1f} GB/s")
    timings: dict[tuple[str, int], list[dict[str, Timing]]] = {}
    for pass_number in range(1, passes + 1):
        rng = np.random.default_rng(20261122)
        for cells in sizes:
            inputs_by_rows: dict[int, list[np.ndarray]] = {}
            for case in cases:
                if case.input_rows not in inputs_by_rows:
                    inputs_by_rows[case.input_rows] = _inputs(rng, case.input_rows, cells)
                timing = time_case(case, cells, inputs_by_rows[case.input_rows], budget_s)
                timings.setdefault((case.name, cells), []).append(timing)
                progress(
                    f"pass {pass_number}: {case.name} at {cells} cells: "
                    f"{timing['melissa_nb'].best_s * 1e3:.3f} ms"
                )
            del inputs_by_rows
        triads.append(triad_gbps(yardstick_elements))
        scaled_adds.append(scaled_add_gbps(yardstick_elements))
    # The yardstick is the best of its measurements: fractions are never flattered by a triad
    # slowed down by a busy neighbour.
    triad = max(triads)
    records = [
        case_record(case, cells, timings[case.name, cells]) for cells in sizes for case in cases
    ]
    for record in records:
        record["fraction_of_triad"] = record["gbps"] / triad
    import_time = measure_import(cold=not quick)
    # Other processes share the cores: the load before and after says how much.
    machine = machine_info() | {
        "load_average_1min_start": load_start,
        "load_average_1min_end": os.getloadavg()[0],
    }
    return {
        "benchmark": "kernels",
        "quick": quick,
        "machine": machine,
        "triad": {
            "gbps": triad,
            "measurements_gbps": triads,
            "scaled_add_gbps": max(scaled_adds),
            "scaled_add_measurements_gbps": scaled_adds,
            "elements": yardstick_elements,
            "bytes_per_element": BYTES_PER_ELEMENT,
        },
        "settings": {
            "thresholds": list(THRESHOLDS),
            "quantile_orders": list(QUANTILE_ORDERS),
            "sobol_parameters": SOBOL_PARAMETERS,
            "budget_s": budget_s,
            "passes": passes,
            "timing": "best of >= 3 steady-state updates after 2 warm-up updates, "
            "melissa_nb, numpy and iterative-stats interleaved, best over "
            "the passes",
            "state_accesses": STATE_ACCESSES,
        },
        "numpy_disagreement": disagreement,
        "import_time": import_time,
        "records": records,
        "targets": _targets(records, import_time),
    }


def _number(value: object, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


TABLE_WIDTH = 125


def print_table(results: Mapping[str, object]) -> None:
    """Print the records, the targets and the import times as rich tables."""
    from rich.console import Console
    from rich.table import Table

    triad = results["triad"]["gbps"]
    table = Table(title=f"melissa_nb kernels (triad {triad:.1f} GB/s, best of repeated updates)")
    for column in (
        "kernel",
        "cells",
        "B/cell",
        "ms",
        "GB/s",
        "triad",
        "numpy ms",
        "x numpy",
        "iter-stats ms",
        "x iter-stats",
    ):
        table.add_column(column, justify="left" if column == "kernel" else "right", no_wrap=True)
    for record in results["records"]:
        table.add_row(
            record["name"],
            f"{record['cells']:,}",
            str(record["bytes_per_cell"]),
            _number(record["ms"], 3),
            _number(record["gbps"], 1),
            f"{record['fraction_of_triad']:.0%}",
            _number(record["numpy_ms"], 3),
            _number(record["speedup_vs_numpy"], 1),
            _number(record["iterative_stats_ms"], 2),
            _number(record["speedup_vs_iterative_stats"], 1),
        )
    console = Console()
    if console.width < TABLE_WIDTH:  # not a terminal, or a narrow one: do not squeeze columns
        console = Console(width=TABLE_WIDTH)
    console.print(table)
    import_time = results["import_time"]
    for cache in ("warm_cache", "cold_cache"):
        run_time = import_time[cache]
        if run_time is not None:
            console.print(
                f"{cache.replace('_', ' ')}: import {run_time['import_s']:.3f} s + "
                f"first calls {run_time['first_call_s']:.3f} s = "
                f"{run_time['total_s']:.3f} s"
            )
    for target in results["targets"]:
        verdict = "[green]pass[/green]" if target["pass"] else "[red]FAIL[/red]"
        console.print(f"{verdict} {target['target']}: {_number(target['value'], 2)}")


def main(*, quick: bool, output_dir: Path) -> Path:
    """Run the benchmark (small sizes if ``quick``), print it, write ``kernels.json``."""
    results = run(
        QUICK_SIZES if quick else SIZES,
        quick=quick,
        passes=1 if quick else 3,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print_table(results)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "kernels.json"
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return path
