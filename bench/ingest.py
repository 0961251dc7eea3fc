"""Ingest benchmark: a live server of M ranks fed by S sender processes, against raw pyzmq.

For each case (statistics, cells per message, S senders, M server ranks) two runs, back to back
so both see the same machine load:

- raw: S senders (`bench.live_server.send_study`) -> M PULL receivers that only receive
  (`receive_raw`): the wire's ceiling for these messages and this topology;
- melissa_nb: the same senders -> ``melissa-nb server`` of M ranks (plain process for M = 1,
  ``mpiexec -n M`` otherwise) computing the statistics;
- unbatched: the same server with ``--batch-mb 0`` (every message folded on arrival): what
  folding the messages of one timestep together gains.

Each run streams its messages in ROUNDS rounds (the same senders, the same server). The first
WARMUP_ROUNDS are not timed: the server's state pages are touched for the first time there (a
once-per-study cost, not an ingest rate). The best of the timed rounds counts: the machine is
shared, and a round disturbed by other work says nothing about the code. Times are
``time.monotonic`` (one system-wide clock on Linux) from a round's first send of any sender to:
its last frame received (raw); every sample of the round folded into the server's state
(melissa_nb "processed": the ``count`` arrays of its shared-memory blocks, polled every 0.5 ms).
The server receives and computes in one thread, so its receive rate is its processing rate; its
progress counters confirm every message was received and accepted. The
server is then stopped: its end (vote, netCDF output) is timed by the memory benchmark. CPU
seconds per GB (senders, receivers, server ranks; ZeroMQ I/O threads included) show where the
cores go. Results go to ``ingest.json``.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.live_server import (
    WAIT_S,
    LiveServer,
    Study,
    cpu_seconds,
    join,
    receive_raw,
    sender_times,
    start_senders,
    write_json,
)
from bench.timing import machine_info

CELLS = (100_000, 1_000_000)
QUICK_CELLS = (2_000,)
SENDERS = (1, 2)
RANKS = (1, 2)
TIMESTEPS = 2
THRESHOLDS = (0.5, 1.5)
SOBOL_PARAMETERS = 5
# Bytes each server rank receives per run (first-touch page faults of the state are included,
# so runs must be long enough to amortise them), within bounds on the message count.
VOLUME_BYTES = 1.5e9
ROUNDS = 5  # each run streams its messages in this many rounds
WARMUP_ROUNDS = 1  # first rounds not timed (first touch of the state); the best later one counts
MIN_MESSAGES, MAX_MESSAGES = 2 * TIMESTEPS * ROUNDS, 2000  # multiples of 2 x TIMESTEPS x ROUNDS
QUICK_MESSAGES = MIN_MESSAGES
TARGET_FRACTION_OF_RAW = 0.85

STATISTICS = {
    "general": {"operations": "mean:variance:min:max:threshold", "thresholds": THRESHOLDS},
    "sobol_p5": {"operations": "sobol", "parameters": SOBOL_PARAMETERS},
}
# Pinned cases (S = 1, M = 1): the senders on one CPU, the receiver or the server (one Numba
# thread) on the other, so the server no longer shares its core with the wire's producer.
SENDER_CPUS, SERVER_CPUS = (0,), (1,)


@dataclass(frozen=True)
class IngestCase:
    """One point of the benchmark."""

    statistics: str
    cells: int
    senders: int
    ranks: int
    messages: int  # frames each server rank receives (multiple of TIMESTEPS x 2 x ROUNDS)
    pinned: bool = False  # senders on SENDER_CPUS, receivers or server on SERVER_CPUS

    def cpus(self) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
        """(sender CPUs, receiver or server CPUs), None for either where not pinned."""
        return (SENDER_CPUS, SERVER_CPUS) if self.pinned else (None, None)

    def study(self, batch_mb: float | None = None) -> Study:
        """The server's study: messages / TIMESTEPS samples (groups with Sobol) sent, one more
        expected (the server stays up until stopped); `batch_mb` sets --batch-mb."""
        return Study(
            cells=self.cells,
            timesteps=TIMESTEPS,
            samples=self.messages // TIMESTEPS,
            unsent=1,
            batch_mb=batch_mb,
            **STATISTICS[self.statistics],
        )


def message_count(frame_bytes: int, quick: bool) -> int:
    """Frames per server rank for a case: about VOLUME_BYTES, a multiple of 2 x TIMESTEPS x
    ROUNDS."""
    if quick:
        return QUICK_MESSAGES
    step = 2 * TIMESTEPS * ROUNDS  # 1 and 2 senders get equal shares of every round
    count = round(VOLUME_BYTES / frame_bytes / step) * step
    return max(MIN_MESSAGES, min(MAX_MESSAGES, count))


def ingest_cases(quick: bool) -> list[IngestCase]:
    """Every case of issue 6, then the pinned ones where CPUs 0 and 1 are usable (quick: one
    small pinned plain case and one small Sobol mpiexec case)."""
    pinnable = set(SENDER_CPUS + SERVER_CPUS) <= os.sched_getaffinity(0)
    if quick:
        return [
            IngestCase("general", QUICK_CELLS[0], 1, 1, QUICK_MESSAGES, pinned=pinnable),
            IngestCase("sobol_p5", QUICK_CELLS[0], 2, 2, QUICK_MESSAGES),
        ]
    cases, pinned = [], []
    for statistics in STATISTICS:
        for cells in CELLS:
            frame_bytes = Study(
                cells=cells, timesteps=TIMESTEPS, samples=1, **STATISTICS[statistics]
            ).frame_bytes
            messages = message_count(frame_bytes, quick)
            for ranks in RANKS:
                for senders in SENDERS:
                    cases.append(IngestCase(statistics, cells, senders, ranks, messages))
            if pinnable:
                pinned.append(IngestCase(statistics, cells, 1, 1, messages, pinned=True))
    return cases + pinned


def run_raw(case: IngestCase) -> list[dict[str, float]]:
    """The wire's ceiling: the same senders to M receivers that only receive; per round."""
    context = multiprocessing.get_context("spawn")
    address_queue = context.Queue()
    receipts = context.Queue()
    sender_cpus, receiver_cpus = case.cpus()
    receivers = [
        context.Process(
            target=receive_raw,
            args=(case.messages // ROUNDS, ROUNDS, address_queue, receipts, receiver_cpus),
            daemon=True,
        )
        for _ in range(case.ranks)
    ]
    for receiver in receivers:
        receiver.start()
    rounds = []
    try:
        addresses = [address_queue.get(timeout=WAIT_S) for _ in receivers]
        senders, gos, results = start_senders(
            context, case.study(), case.senders, addresses, ROUNDS, sender_cpus
        )
        try:
            for go in gos:
                go.set()
                first_send, _, sender_cpu = sender_times(results, case.senders)
                received = [receipts.get(timeout=WAIT_S) for _ in receivers]
                rounds.append(
                    {
                        "seconds": max(r["last_receive"] for r in received) - first_send,
                        "bytes": sum(r["bytes"] for r in received),
                        "sender_cpu_seconds": sender_cpu,
                        "receiver_cpu_seconds": sum(r["cpu_seconds"] for r in received),
                    }
                )
        finally:
            join(senders)
    finally:
        join(receivers)
    return rounds


def run_melissa(
    case: IngestCase, workdir: Path, batch_mb: float | None = None
) -> tuple[list[dict[str, float]], dict, dict[int, int]]:
    """The same senders to a live ``melissa-nb server``: per round, the seconds until every
    sample was folded in; then the ranks' counters and kernel passes. The server is stopped
    (SIGTERM) once they show every message: its output phase is the memory benchmark's
    business."""
    context = multiprocessing.get_context("spawn")
    study = case.study(batch_mb)
    per_round = study.samples * study.timesteps // ROUNDS
    rounds = []
    sender_cpus, server_cpus = case.cpus()
    # A pinned server has one core: one Numba thread.
    environment = dict(os.environ, NUMBA_NUM_THREADS="1") if case.pinned else None
    with LiveServer.launch(study, case.ranks, workdir, environment, server_cpus) as server:
        reply = server.announce()
        pids = server.rank_pids()
        senders, gos, results = start_senders(
            context, study, case.senders, reply.data_addresses, ROUNDS, sender_cpus
        )
        try:
            for number, go in enumerate(gos, start=1):
                cpu_before = [cpu_seconds(pid) for pid in pids]
                go.set()
                processed_at = server.wait_folded(per_round * number)
                cpu_after = [cpu_seconds(pid) for pid in pids]
                first_send, _, sender_cpu = sender_times(results, case.senders)
                rounds.append(
                    {
                        "seconds": processed_at - first_send,
                        "bytes": case.messages // ROUNDS * case.ranks * study.frame_bytes,
                        "sender_cpu_seconds": sender_cpu,
                        "server_cpu_seconds": sum(
                            after - before
                            for before, after in zip(cpu_before, cpu_after, strict=True)
                        ),
                    }
                )
            server.detach()
        finally:
            join(senders)
        counters = server.wait_counters(case.messages)
        server.stop()
        leftovers = server.close()
    expected = {
        "messages": case.messages,
        "accepted": case.messages,
        "duplicates": 0,
        "rejected": 0,
    }
    passes = {rank: counts.pop("kernel_passes") for rank, counts in counters.items()}
    if leftovers or counters != {rank: expected for rank in range(case.ranks)}:
        raise RuntimeError(
            f"server counters {counters} (expected {expected} on every rank), "
            f"blocks left {leftovers}:\n{server.text()}"
        )
    return rounds, counters, passes


def _per_gb(rounds: Sequence[Mapping[str, float]], key: str) -> float:
    return sum(r[key] for r in rounds) / sum(r["bytes"] for r in rounds) * 1e9


def measure_case(case: IngestCase, workdir: Path) -> dict[str, object]:
    """Raw, melissa_nb, then melissa_nb with ``--batch-mb 0`` for one case; the record of
    ``ingest.json`` (best rounds)."""
    load = os.getloadavg()[0]
    raw = run_raw(case)
    melissa, counters, passes = run_melissa(case, workdir)
    # The same server folding every message on arrival: what the fold batches gain.
    unbatched, _, _ = run_melissa(case, workdir, batch_mb=0)
    if [r["bytes"] for r in raw] != [r["bytes"] for r in melissa]:
        raise RuntimeError(f"raw rounds moved {raw}, melissa_nb rounds {melissa}")
    study = case.study()
    frames = case.messages // ROUNDS * case.ranks
    best_raw = min(r["seconds"] for r in raw[WARMUP_ROUNDS:])
    best = min(r["seconds"] for r in melissa[WARMUP_ROUNDS:])
    best_unbatched = min(r["seconds"] for r in unbatched[WARMUP_ROUNDS:])
    round_bytes = raw[0]["bytes"]
    record = {
        "statistics": case.statistics,
        "operations": study.operations,
        "cells_per_message": case.cells,
        "vectors_per_message": study.vectors,
        "message_bytes": study.frame_bytes,
        "senders": case.senders,
        "ranks": case.ranks,
        "pinned": case.pinned,
        "timesteps": TIMESTEPS,
        "messages_per_rank": case.messages,
        "rounds": ROUNDS,
        "warmup_rounds": WARMUP_ROUNDS,
        "bytes_per_round": round_bytes,
        "raw_seconds": best_raw,
        "raw_gbps": round_bytes / best_raw / 1e9,
        "raw_messages_per_s": frames / best_raw,
        "processed_seconds": best,
        "processed_gbps": round_bytes / best / 1e9,
        "processed_messages_per_s": frames / best,
        "raw_gbps_rounds": [r["bytes"] / r["seconds"] / 1e9 for r in raw],
        "processed_gbps_rounds": [r["bytes"] / r["seconds"] / 1e9 for r in melissa],
        "server_counters": counters,
        # samples (groups with Sobol) each pass over a (slice, timestep) state folded, per rank
        "samples_per_pass": {rank: case.messages / count for rank, count in passes.items()},
        # CPU seconds per GB moved in the timed rounds: where the cores go (ZeroMQ I/O threads
        # included)
        "raw_sender_cpu_s_per_gb": _per_gb(raw[WARMUP_ROUNDS:], "sender_cpu_seconds"),
        "raw_receiver_cpu_s_per_gb": _per_gb(raw[WARMUP_ROUNDS:], "receiver_cpu_seconds"),
        "sender_cpu_s_per_gb": _per_gb(melissa[WARMUP_ROUNDS:], "sender_cpu_seconds"),
        "server_cpu_s_per_gb": _per_gb(melissa[WARMUP_ROUNDS:], "server_cpu_seconds"),
        "unbatched_gbps": round_bytes / best_unbatched / 1e9,
        "unbatched_gbps_rounds": [r["bytes"] / r["seconds"] / 1e9 for r in unbatched],
        "unbatched_server_cpu_s_per_gb": _per_gb(unbatched[WARMUP_ROUNDS:], "server_cpu_seconds"),
        "load_1min_before": load,
    }
    record["fraction_of_raw"] = record["processed_gbps"] / record["raw_gbps"]
    record["batch_gain"] = record["processed_gbps"] / record["unbatched_gbps"]
    return record


def _targets(records: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    return [
        {
            "target": f"{r['statistics']} {r['cells_per_message']} cells S={r['senders']} "
            f"M={r['ranks']}{' pinned' if r['pinned'] else ''}: processed >= "
            f"{TARGET_FRACTION_OF_RAW:.0%} of raw",
            "value": r["fraction_of_raw"],
            "pass": r["fraction_of_raw"] >= TARGET_FRACTION_OF_RAW,
        }
        for r in records
    ]


def run(*, quick: bool = False, progress: Callable[[str], None] = print) -> dict[str, object]:
    """Run every case and return what ``ingest.json`` holds."""
    records = []
    with tempfile.TemporaryDirectory(prefix="melissa_nb_ingest_") as workdir:
        for case in ingest_cases(quick):
            record = measure_case(case, Path(workdir))
            records.append(record)
            progress(
                f"{case}: raw {record['raw_gbps']:.2f} GB/s, processed "
                f"{record['processed_gbps']:.2f} GB/s ({record['fraction_of_raw']:.0%})"
            )
    return {
        "benchmark": "ingest",
        "quick": quick,
        "machine": machine_info(),
        "settings": {
            "statistics": {
                name: dict(settings, thresholds=list(settings.get("thresholds", ())))
                for name, settings in STATISTICS.items()
            },
            "timesteps": TIMESTEPS,
            "volume_bytes_per_rank": VOLUME_BYTES,
            "transport": "tcp://127.0.0.1, data_port 0, RCVHWM 32, one PUSH per sender and "
            "server rank, senders spawned, 4 prebuilt frames in flight per socket",
            "rounds": ROUNDS,
            "warmup_rounds": WARMUP_ROUNDS,
            "timing": "best of the rounds after the warm-up ones; time.monotonic from a "
            "round's first send to: its last frame received (raw); every sample of "
            "the round folded in the shared-memory state (processed)",
        },
        "records": records,
        "targets": _targets(records),
    }


def print_table(results: Mapping[str, object]) -> None:
    """Print the records and the targets as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="melissa_nb server ingest vs raw pyzmq PUSH -> PULL")
    columns = (
        "statistics",
        "cells",
        "MB/msg",
        "S",
        "M",
        "msgs/rank",
        "raw GB/s",
        "raw msg/s",
        "GB/s",
        "msg/s",
        "of raw",
        "raw CPU s/GB",
        "CPU s/GB",
        "unbatched GB/s",
        "batch gain",
    )
    for column in columns:
        table.add_column(column, justify="left" if column == "statistics" else "right")
    for r in results["records"]:
        table.add_row(
            r["statistics"],
            f"{r['cells_per_message']:,}",
            f"{r['message_bytes'] / 1e6:.2f}",
            str(r["senders"]),
            f"{r['ranks']}{' pinned' if r['pinned'] else ''}",
            str(r["messages_per_rank"]),
            f"{r['raw_gbps']:.2f}",
            f"{r['raw_messages_per_s']:.0f}",
            f"{r['processed_gbps']:.2f}",
            f"{r['processed_messages_per_s']:.0f}",
            f"{r['fraction_of_raw']:.0%}",
            f"{r['raw_sender_cpu_s_per_gb'] + r['raw_receiver_cpu_s_per_gb']:.2f}",
            f"{r['sender_cpu_s_per_gb'] + r['server_cpu_s_per_gb']:.2f}",
            f"{r['unbatched_gbps']:.2f}",
            f"{r['batch_gain']:.2f}",
        )
    console = Console(width=max(Console().width, 160))
    console.print(table)
    for target in results["targets"]:
        verdict = "[green]pass[/green]" if target["pass"] else "[red]FAIL[/red]"
        console.print(f"{verdict} {target['target']}: {target['value']:.2f}")


def main(*, quick: bool, output_dir: Path) -> Path:
    """Run the benchmark (tiny if ``quick``), print it, write ``ingest.json``."""
    results = run(quick=quick, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print_table(results)
    return write_json(results, output_dir, "ingest")
