"""Memory benchmark: peak resident memory of server ranks against what their study needs.

Budget of a rank (docs/server.md, "Memory"): its statistic state (the sizes of its shared-memory
blocks, read from /dev/shm while it runs) plus its documented bounded buffers: RCVHWM (32) data
frames per connected sender in the ZeroMQ queue, the fold batch (``--batch-mb``, default 64 MiB,
plus one message: received frames held to be folded in one pass), and with Sobol members the
member buffer (``--member-buffer-mb``, set here to what the study's send order needs). Issue 6's
target: peak <= 1.1 x budget + 100 MB. Peaks: each rank's VmHWM (/proc/<pid>/status, sampled
every 20 ms) when every sample is folded in ("ingest") and just before exit (after the netCDF
output), and the exact peak of the whole process tree from ``wait4`` (for M = 1 that is the rank
itself). The idle RSS of each rank (after its handshake, before data: interpreter, numpy, Numba,
compiled kernels, MPI) is reported too, so the growth beyond it can be compared with the budget,
and so is its file-backed part (shared libraries' code, mostly LLVM's and numpy's: the same
pages for every rank of a node).
Results go to ``memory.json``.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.live_server import (
    RCVHWM,
    LiveServer,
    Study,
    join,
    memory_status,
    sender_times,
    start_senders,
    write_json,
)
from bench.timing import machine_info
from melissa_nb.server.config import ServerConfig

MEMBER_BUFFER_MB = 96  # holds 16 timesteps x 7 members x 1e5 cells (85.4 MiB)
CASES = (
    (
        "general",
        Study(
            operations="mean:variance:min:max:threshold",
            cells=1_000_000,
            timesteps=16,
            samples=4,
            thresholds=(0.5, 1.5),
        ),
        1,
    ),
    (
        "general",
        Study(
            operations="mean:variance:min:max:threshold",
            cells=1_000_000,
            timesteps=16,
            samples=4,
            thresholds=(0.5, 1.5),
        ),
        2,
    ),
    (
        "sobol_p5_members",
        Study(
            operations="mean:variance:sobol",
            cells=100_000,
            timesteps=16,
            samples=4,
            parameters=5,
            members=True,
            member_buffer_mb=MEMBER_BUFFER_MB,
        ),
        1,
    ),
)
QUICK_CASES = (
    (
        "sobol_p5_members",
        Study(
            operations="mean:variance:sobol",
            cells=2_000,
            timesteps=4,
            samples=2,
            parameters=5,
            members=True,
            member_buffer_mb=1,
        ),
        2,
    ),
)
SENDERS = 1
BATCH_MB = next(f.default for f in dataclasses.fields(ServerConfig) if f.name == "batch_mb")
TARGET_RELATIVE = 0.10
TARGET_ABSOLUTE_BYTES = 100 * 10**6


class PeakSampler:
    """Highest VmHWM seen per process id (VmHWM only grows, so sampling misses only the end)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peaks = dict.fromkeys(pids, 0)

    def __call__(self) -> None:
        for pid in self.pids:
            status = memory_status(pid)
            if status is not None:
                self.peaks[pid] = max(self.peaks[pid], status["VmHWM"])

    def snapshot(self) -> list[int]:
        """Current peaks in rank order."""
        self()
        return [self.peaks[pid] for pid in self.pids]


def measure(name: str, study: Study, ranks: int, workdir: Path) -> dict[str, object]:
    """One study through a live server; its memory record."""
    context = multiprocessing.get_context("spawn")
    with LiveServer.launch(study, ranks, workdir) as server:
        reply = server.announce()
        pids = server.rank_pids()
        idle_status = [memory_status(pid) for pid in pids]
        sampler = PeakSampler(pids)
        senders, gos, results = start_senders(context, study, SENDERS, reply.data_addresses)
        try:
            gos[0].set()
            processed_at = server.wait_folded(study.samples * study.timesteps, sample=sampler)
            at_ingest = sampler.snapshot()
            state = [server.state_bytes(rank) for rank in range(ranks)]
            server.detach()
            sender_times(results, SENDERS)
        finally:
            join(senders)
        ended = server.wait_exit(sample=sampler)
        final = [sampler.peaks[pid] for pid in pids]
        summaries = server.summaries()
        leftovers = server.close()
    messages = study.messages_per_rank
    expected = {"messages": messages, "accepted": messages, "duplicates": 0, "rejected": 0}
    if ended.returncode != 0 or leftovers or summaries != dict.fromkeys(range(ranks), expected):
        raise RuntimeError(
            f"server exit code {ended.returncode}, counters {summaries}, blocks "
            f"left {leftovers}:\n{server.text()}"
        )
    queue = RCVHWM * SENDERS * study.frame_bytes
    members = int((study.member_buffer_mb or 0) * 2**20) if study.members else 0
    batch = int(BATCH_MB * 2**20) + study.frame_bytes
    budgets = [s + queue + members + batch for s in state]
    idle = [status["VmRSS"] for status in idle_status]
    peak = max(max(final), ended.tree_peak_rss_bytes)
    allowed = (1 + TARGET_RELATIVE) * max(budgets) + TARGET_ABSOLUTE_BYTES
    return {
        "case": name,
        "operations": study.operations,
        "ranks": ranks,
        "senders": SENDERS,
        "cells_per_message": study.cells,
        "timesteps": study.timesteps,
        "samples": study.samples,
        "message_bytes": study.frame_bytes,
        "state_bytes": state,
        "queue_bytes": queue,
        "member_buffer_bytes": members,
        "batch_bytes": batch,
        "budget_bytes": budgets,
        "idle_rss_bytes": idle,
        "idle_rss_file_bytes": [status["RssFile"] for status in idle_status],
        "peak_at_ingest_bytes": at_ingest,
        "peak_final_bytes": final,
        "tree_peak_rss_bytes": ended.tree_peak_rss_bytes,
        "peak_bytes": peak,
        "allowed_bytes": allowed,
        "excess_over_budget_bytes": peak - max(budgets),
        "growth_over_idle_bytes": [p - i for p, i in zip(final, idle, strict=True)],
        # from the last sample folded in to the exit: end vote, netCDF output, shutdown
        "end_seconds": server.launched_at + ended.exited_at - processed_at,
    }


def run(*, quick: bool = False, progress: Callable[[str], None] = print) -> dict[str, object]:
    """Every case; what ``memory.json`` holds."""
    records = []
    with tempfile.TemporaryDirectory(prefix="melissa_nb_memory_") as workdir:
        for name, study, ranks in QUICK_CASES if quick else CASES:
            records.append(measure(name, study, ranks, Path(workdir)))
            progress(
                f"{name}, {ranks} rank(s): peak {records[-1]['peak_bytes'] / 2**20:.0f} "
                f"MiB, budget {max(records[-1]['budget_bytes']) / 2**20:.0f} MiB"
            )
    return {
        "benchmark": "memory",
        "quick": quick,
        "machine": machine_info(),
        "settings": {
            "senders": SENDERS,
            "rcvhwm": RCVHWM,
            "target": "peak <= 1.1 x (state + RCVHWM x message x senders + fold "
            "batch + member buffer) + 100 MB",
            "measured": "VmHWM of each rank sampled every 20 ms; wait4 ru_maxrss of "
            "the process tree at exit",
        },
        "records": records,
        "targets": [
            {
                "target": f"{r['case']} M={r['ranks']}: peak RSS <= 1.1 x budget + 100 MB",
                "value": r["peak_bytes"] / r["allowed_bytes"],
                "pass": r["peak_bytes"] <= r["allowed_bytes"],
            }
            for r in records
        ],
    }


def print_table(results: Mapping[str, object]) -> None:
    """Print one line per case (MiB) and the targets."""
    mib = 2**20
    for r in results["records"]:
        print(
            f"{r['case']} M={r['ranks']}: state {max(r['state_bytes']) / mib:.0f} + queue "
            f"{r['queue_bytes'] / mib:.0f} + batch {r['batch_bytes'] / mib:.0f} + members "
            f"{r['member_buffer_bytes'] / mib:.0f} = budget {max(r['budget_bytes']) / mib:.0f} "
            f"MiB; idle {max(r['idle_rss_bytes']) / mib:.0f} (file-backed "
            f"{max(r['idle_rss_file_bytes']) / mib:.0f}), peak at ingest "
            f"{max(r['peak_at_ingest_bytes']) / mib:.0f}, peak {r['peak_bytes'] / mib:.0f} MiB; "
            f"{r['end_seconds']:.1f} s from the last sample to the exit"
        )
    for target in results["targets"]:
        print(
            f"{'pass' if target['pass'] else 'FAIL'} {target['target']}: "
            f"{target['value']:.2f} of allowed"
        )


def main(*, quick: bool, output_dir: Path) -> Path:
    """Run the benchmark, print it, write ``memory.json``."""
    results = run(quick=quick, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print_table(results)
    return write_json(results, output_dir, "memory")
