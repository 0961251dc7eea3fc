"""Start-up benchmark: seconds from launching ``melissa-nb server`` to a connection handshake.

The clock starts just before the process is launched and stops when the reply to a connection
request arrives (the REQ socket reconnects every 10 ms, so the reply comes within ~10 ms of the
server binding). The server warms every kernel of the study before it binds, so this is the
wait a simulation sees. The study uses every operation (the most kernels to load). Warm cache:
the Numba cache melissa_nb uses normally, filled by one untimed launch first; cold cache:
``NUMBA_CACHE_DIR`` set to a fresh empty directory, so every kernel is compiled. Each run also
reads the ranks' resident memory once ready (the idle baseline of a rank). Results go to
``startup.json``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.live_server import LiveServer, Study, memory_status, write_json
from bench.timing import machine_info

STUDY = Study(
    operations="mean:variance:skewness:kurtosis:min:max:threshold:quantile:sobol",
    cells=1,
    timesteps=1,
    samples=1,
    parameters=5,
    thresholds=(0.5, 1.5),
    quantiles=(0.05, 0.5, 0.95),
)
WARM_RUNS = 3
TARGET_WARM_S = 2.0


def measure_start(
    ranks: int, workdir: Path, environment: Mapping[str, str] | None = None, cache: str = "warm"
) -> dict[str, object]:
    """Launch, handshake, read the ranks' memory, stop (SIGTERM); one record."""
    load = os.getloadavg()[0]
    with LiveServer.launch(STUDY, ranks, workdir, dict(environment or os.environ)) as server:
        _, seconds = server.connect()
        memory = [memory_status(pid) for pid in server.rank_pids()]
        ended = server.stop()
        leftovers = server.close()
    if leftovers:
        raise RuntimeError(f"shared-memory blocks left after SIGTERM: {leftovers}")
    return {
        "ranks": ranks,
        "cache": cache,
        "seconds": seconds,
        "idle_rss_bytes": [m["VmRSS"] if m else None for m in memory],
        "exit_code_after_sigterm": ended.returncode,
        "load_1min_before": load,
    }


def run(*, quick: bool = False, progress: Callable[[str], None] = print) -> dict[str, object]:
    """Warm runs (M = 1 several times, M = 2 once) and one cold M = 1 run; quick: one warm
    M = 1 run."""
    records = []
    with tempfile.TemporaryDirectory(prefix="melissa_nb_startup_") as workdir:
        work = Path(workdir)
        if not quick:
            measure_start(1, work, cache="untimed")  # fills the cache if a kernel changed
        for ranks, repeats in ((1, 1),) if quick else ((1, WARM_RUNS), (2, 1)):
            for _ in range(repeats):
                records.append(measure_start(ranks, work))
                progress(f"warm start, {ranks} rank(s): {records[-1]['seconds']:.2f} s")
        if not quick:
            with tempfile.TemporaryDirectory(prefix="melissa_nb_numba_cache_") as cache_dir:
                environment = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
                records.append(measure_start(1, work, environment, cache="cold"))
                progress(f"cold start, 1 rank: {records[-1]['seconds']:.2f} s")
    warm = [r["seconds"] for r in records if r["cache"] == "warm" and r["ranks"] == 1]
    median_warm = statistics.median(warm)
    return {
        "benchmark": "startup",
        "quick": quick,
        "machine": machine_info(),
        "settings": {
            "options": STUDY.options(),
            "timing": "time.monotonic from Popen to the connection reply; warm cache "
            "after one untimed launch, cold cache with a fresh "
            "NUMBA_CACHE_DIR",
        },
        "records": records,
        "targets": [
            {
                "target": f"start-up, warm cache, 1 rank (median) < {TARGET_WARM_S:g} s",
                "value": median_warm,
                "pass": median_warm < TARGET_WARM_S,
            }
        ],
    }


def print_table(results: Mapping[str, object]) -> None:
    """Print the runs and the target."""
    for record in results["records"]:
        rss = ", ".join(f"{value / 2**20:.0f}" for value in record["idle_rss_bytes"] if value)
        print(
            f"{record['cache']:>5} cache, {record['ranks']} rank(s): {record['seconds']:.2f} s "
            f"to the first handshake; idle RSS per rank {rss} MiB"
        )
    for target in results["targets"]:
        print(f"{'pass' if target['pass'] else 'FAIL'} {target['target']}: {target['value']:.2f}")


def main(*, quick: bool, output_dir: Path) -> Path:
    """Run the benchmark, print it, write ``startup.json``."""
    results = run(quick=quick, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print_table(results)
    return write_json(results, output_dir, "startup")
