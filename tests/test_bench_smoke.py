"""The kernel benchmark at a tiny size, run as a user runs it (``python -m bench``), so its code
cannot rot: records are written with every required key and self-consistent values. Timings
themselves are not checked (they depend on the machine and its load)."""

from __future__ import annotations

import datetime
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
# The kernels issue 2 asks the benchmark to cover, with their settings (2 thresholds, 3 quantile
# orders, Sobol with p = 5, the fused general update).
KERNELS = {
    "moments_order2",
    "moments_order4",
    "extrema",
    "thresholds_2",
    "quantiles_3",
    "sobol_martinez_p5",
    "fused",
}
# Bytes per cell each update must move, derived by hand from the state layouts (see
# bench/RESULTS.md): the input once, state read and written, rarely-written state read only.
BYTES_PER_CELL = {
    "moments_order2": 8 + 8 + 2 * 16,  # x, shift (read), mean and M2
    "moments_order4": 8 + 8 + 4 * 16,  # x, shift (read), mean, M2, M3, M4
    "extrema": 8 + 2 * 8,  # x, min and max (read; ids written on change)
    "thresholds_2": 8 + 2 * 16,  # x, 2 int64 counts
    "quantiles_3": 8 + 2 * 8 + 3 * 16,  # x, running range (read), 3 estimates
    "sobol_martinez_p5": 7 * 8 + 8 + 24 * 16,  # 7 inputs, shift (read), 4 + 4p state doubles
    "fused": 8 + (8 + 64) + 16 + 32 + 48,  # x once, each family's state; the quantiles'
    # running range is the extrema's min and max
}
RECORD_KEYS = {
    "name",
    "cells",
    "ms",
    "gbps",
    "fraction_of_triad",
    "speedup_vs_iterative_stats",
    "speedup_vs_numpy",
    "bytes_per_cell",
    "numpy_ms",
    "iterative_stats_ms",
    "note",
}


def run_bench(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *arguments],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    output_dir = tmp_path_factory.mktemp("bench")
    completed = run_bench("kernels", "--quick", "--output-dir", str(output_dir))
    assert completed.returncode == 0, completed.stderr
    return completed.stdout, json.loads((output_dir / "kernels.json").read_text())


def test_one_record_per_kernel_with_the_required_keys(quick_run: tuple[str, dict]) -> None:
    _, results = quick_run
    records = results["records"]
    assert sorted(record["name"] for record in records) == sorted(KERNELS)
    for record in records:
        assert RECORD_KEYS <= set(record), record["name"]
        assert record["cells"] == records[0]["cells"] > 0
        assert record["bytes_per_cell"] == BYTES_PER_CELL[record["name"]]


def test_derived_numbers_follow_from_the_measured_ones(quick_run: tuple[str, dict]) -> None:
    _, results = quick_run
    triad = results["triad"]["gbps"]
    assert math.isfinite(triad) and triad > 0
    assert triad == max(results["triad"]["measurements_gbps"])
    assert len(results["triad"]["measurements_gbps"]) == 2  # before and after the one pass
    assert results["triad"]["scaled_add_gbps"] > 0
    for record in results["records"]:
        seconds = record["ms"] / 1e3
        assert math.isfinite(seconds) and seconds > 0
        assert record["gbps"] == pytest.approx(
            record["bytes_per_cell"] * record["cells"] / seconds / 1e9, rel=1e-9
        )
        assert record["fraction_of_triad"] == pytest.approx(record["gbps"] / triad, rel=1e-9)
        assert record["numpy_ms"] > 0
        assert record["speedup_vs_numpy"] == pytest.approx(
            record["numpy_ms"] / record["ms"], rel=1e-9
        )


def test_iterative_stats_is_timed_when_installed(quick_run: tuple[str, dict]) -> None:
    _, results = quick_run
    installed = importlib.util.find_spec("iterative_stats") is not None
    for record in results["records"]:
        if installed:
            assert record["iterative_stats_ms"] > 0, record["name"]
            assert record["speedup_vs_iterative_stats"] == pytest.approx(
                record["iterative_stats_ms"] / record["ms"], rel=1e-9
            )
        else:
            assert record["iterative_stats_ms"] is None
            assert record["speedup_vs_iterative_stats"] is None
            assert "not installed" in record["note"]


def test_numpy_baselines_compute_the_same_statistics(quick_run: tuple[str, dict]) -> None:
    _, results = quick_run
    assert set(results["numpy_disagreement"]) == KERNELS
    for name, difference in results["numpy_disagreement"].items():
        assert 0 <= difference <= 1e-10, name


def test_header_describes_the_machine_and_import_times(quick_run: tuple[str, dict]) -> None:
    _, results = quick_run
    machine = results["machine"]
    assert machine["cpu_count"] >= 1
    assert 1 <= machine["numba_threads"] <= numba.config.NUMBA_NUM_THREADS
    assert machine["numpy"] == np.__version__
    assert machine["numba"] == numba.__version__
    measured = datetime.datetime.fromisoformat(machine["date_utc"])
    assert abs(datetime.datetime.now(datetime.timezone.utc) - measured) < datetime.timedelta(
        hours=1
    )
    warm = results["import_time"]["warm_cache"]
    assert warm["import_s"] > 0 and warm["first_call_s"] > 0
    assert warm["total_s"] == pytest.approx(warm["import_s"] + warm["first_call_s"], rel=1e-6)
    assert results["import_time"]["cold_cache"] is None  # --quick skips the cold compile
    import_target = [t for t in results["targets"] if t["target"].startswith("import")]
    assert import_target == [
        {
            "target": import_target[0]["target"],
            "value": warm["total_s"],
            "pass": warm["total_s"] < 1.0,
        }
    ]


def test_table_is_printed(quick_run: tuple[str, dict]) -> None:
    stdout, _ = quick_run
    assert "melissa_nb kernels" in stdout
    for name in KERNELS:
        assert name in stdout


def test_unknown_benchmark_is_rejected() -> None:
    completed = run_bench("no_such_benchmark")
    assert completed.returncode == 2
    assert "unknown benchmark 'no_such_benchmark'" in completed.stderr


def test_auth_benchmark_moves_the_same_frames_both_ways(tmp_path: Path) -> None:
    """`python -m bench auth --quick`: NULL and CURVE runs of the same frames, both timed."""
    completed = run_bench("auth", "--quick", "--output-dir", str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    records = json.loads((tmp_path / "auth.json").read_text())["records"]
    assert [record["cells"] for record in records] == [1_000]
    for record in records:
        null, curve = record["runs"]["null"][0], record["runs"]["curve"][0]
        assert null["frames"] == curve["frames"] >= 10
        assert record["curve_over_null"] == pytest.approx(
            record["curve_gbps"] / record["null_gbps"]
        )


def test_sensitivity_benchmark_times_each_call_against_the_triad(tmp_path: Path) -> None:
    """`python -m bench sensitivity --quick`: every call timed, its rate from its byte count."""
    completed = run_bench("sensitivity", "--quick", "--output-dir", str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    records = json.loads((tmp_path / "sensitivity.json").read_text())["records"]
    assert {record["call"] for record in records} == {
        "correlation_p5",
        "sobol_aggregate_sums_p5",
        "sobol_update_p5",
    }
    for record in records:
        rate = record["bytes_per_cell"] * record["cells"] / record["best_s"] / 1e9
        assert record["gbps"] == pytest.approx(rate)
        assert record["fraction_of_triad"] == pytest.approx(rate / record["triad_gbps"])


def test_chaos_benchmark_times_the_update_against_the_matrix_product(tmp_path: Path) -> None:
    """`python -m bench chaos --quick`: the update, the BLAS product and its accumulating form,
    each against the product of the same run."""
    completed = run_bench("chaos", "--quick", "--output-dir", str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    records = json.loads((tmp_path / "chaos.json").read_text())["records"]
    calls = {record["call"]: record for record in records}
    assert set(calls) == {"chaos_update", "blas_matmul", "blas_matmul_accumulate"}
    assert calls["blas_matmul"]["throughput_over_blas_matmul"] == 1.0
    for record in records:
        product = calls["blas_matmul"]["best_s"]
        assert record["throughput_over_blas_matmul"] == pytest.approx(product / record["best_s"])


def test_chaos_worth_benchmark_compares_both_estimators_on_ishigami(tmp_path: Path) -> None:
    """`python -m bench chaos_worth --quick`: at 400 simulations the chaos's indices are already
    closer to Ishigami's closed forms than Martinez's on the same budget, and it draws the
    comparison."""
    completed = run_bench("chaos_worth", "--quick", "--output-dir", str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    records = json.loads((tmp_path / "chaos_worth.json").read_text())["records"]
    assert [record["simulations"] for record in records] == [100, 400]
    assert records[1]["pce_rms_error"] < records[1]["martinez_rms_error"] / 10
    assert (tmp_path / "chaos_worth.png").stat().st_size > 10_000


def test_chaos_heat_benchmark_compares_both_estimators_on_the_heat_maps(tmp_path: Path) -> None:
    """`python -m bench chaos_heat --quick`: the heat solver is linear in its temperatures, so
    the chaos's index maps equal the closed forms to rounding at 56 simulations, where
    Martinez's 8 groups are off by more than 0.01 somewhere; it draws the comparison."""
    completed = run_bench("chaos_heat", "--quick", "--output-dir", str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    records = json.loads((tmp_path / "chaos_heat.json").read_text())["records"]
    assert [(record["timestep"], record["simulations"]) for record in records] == [
        (9, 56),
        (9, 224),
        (99, 56),
        (99, 224),
    ]
    for record in records:
        assert record["pce_worst_rms"] < 1e-8
        assert record["martinez_worst_rms"] > 0.01
    assert (tmp_path / "chaos_heat.png").stat().st_size > 10_000
