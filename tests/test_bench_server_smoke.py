"""The server benchmarks at a tiny size, run as a user runs them (``python -m bench ingest
startup memory --quick``), so their code cannot rot: every record has its keys, derived numbers
follow from measured ones, the live servers saw every message, state sizes match the documented
formula, nothing is left in /dev/shm. Timings themselves are not checked."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from melissa_nb.server.live.state import list_blocks

REPOSITORY = Path(__file__).resolve().parents[1]
INGEST_KEYS = {
    "statistics",
    "operations",
    "cells_per_message",
    "vectors_per_message",
    "message_bytes",
    "senders",
    "ranks",
    "timesteps",
    "messages_per_rank",
    "rounds",
    "warmup_rounds",
    "bytes_per_round",
    "raw_seconds",
    "raw_gbps",
    "raw_messages_per_s",
    "processed_seconds",
    "processed_gbps",
    "processed_messages_per_s",
    "raw_gbps_rounds",
    "processed_gbps_rounds",
    "server_counters",
    "load_1min_before",
    "fraction_of_raw",
    "raw_sender_cpu_s_per_gb",
    "raw_receiver_cpu_s_per_gb",
    "sender_cpu_s_per_gb",
    "server_cpu_s_per_gb",
    "samples_per_pass",
    "unbatched_gbps",
    "unbatched_gbps_rounds",
    "unbatched_server_cpu_s_per_gb",
    "batch_gain",
    "pinned",
}
MEMORY_KEYS = {
    "case",
    "operations",
    "ranks",
    "senders",
    "cells_per_message",
    "timesteps",
    "samples",
    "message_bytes",
    "state_bytes",
    "queue_bytes",
    "member_buffer_bytes",
    "batch_bytes",
    "idle_rss_file_bytes",
    "budget_bytes",
    "idle_rss_bytes",
    "peak_at_ingest_bytes",
    "peak_final_bytes",
    "tree_peak_rss_bytes",
    "peak_bytes",
    "allowed_bytes",
    "excess_over_budget_bytes",
    "growth_over_idle_bytes",
    "end_seconds",
}
# Doubles per cell and timestep (docs/server.md, "Memory"): moments of order 2 (mean and
# variance) 1 + 2, Sobol with p = 5 parameters 4 + 4p; and per group and timestep of a slice,
# the Sobol increments 3p + 2.
MEAN_VARIANCE_SOBOL5_DOUBLES = 3 + 24
SOBOL5_GROUP_DOUBLES = 3 * 5 + 2
HEADER_SLACK_BYTES = 64 * 1024  # JSON header, count arrays and 64-byte alignment of a block


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, dict]]:
    before = set(list_blocks("melissa_nb_b"))
    output_dir = tmp_path_factory.mktemp("bench_server")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "ingest",
            "startup",
            "memory",
            "--quick",
            "--output-dir",
            str(output_dir),
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert set(list_blocks("melissa_nb_b")) <= before, "shared-memory blocks left behind"
    return completed.stdout, {
        name: json.loads((output_dir / f"{name}.json").read_text())
        for name in ("ingest", "startup", "memory")
    }


def test_ingest_records_are_consistent(quick_run: tuple[str, dict[str, dict]]) -> None:
    _, results = quick_run
    ingest = results["ingest"]
    records = ingest["records"]
    assert {(r["statistics"], r["ranks"]) for r in records} == {("general", 1), ("sobol_p5", 2)}
    # the small plain case runs pinned (senders on CPU 0, server on CPU 1) where both exist
    assert [r["pinned"] for r in records] == [{0, 1} <= os.sched_getaffinity(0), False]
    for r in records:
        assert set(r) == INGEST_KEYS
        assert r["message_bytes"] == 144 + 8 * r["vectors_per_message"] * r["cells_per_message"]
        assert r["vectors_per_message"] == (7 if r["statistics"] == "sobol_p5" else 1)
        frames = r["messages_per_rank"] // r["rounds"] * r["ranks"]
        assert r["bytes_per_round"] == frames * r["message_bytes"]
        for kind in ("raw", "processed"):
            seconds = r[f"{kind}_seconds"]
            assert math.isfinite(seconds) and seconds > 0
            assert r[f"{kind}_gbps"] == pytest.approx(r["bytes_per_round"] / seconds / 1e9)
            timed = r[f"{kind}_gbps_rounds"][r["warmup_rounds"] :]
            assert r[f"{kind}_gbps"] == max(timed)  # the best round after the warm-up
            assert len(r[f"{kind}_gbps_rounds"]) == r["rounds"]
            assert r[f"{kind}_messages_per_s"] == pytest.approx(frames / seconds)
        for kind in ("raw_sender", "raw_receiver", "sender", "server"):
            assert r[f"{kind}_cpu_s_per_gb"] >= 0
        assert r["fraction_of_raw"] == pytest.approx(r["processed_gbps"] / r["raw_gbps"])
        assert r["unbatched_gbps"] == max(r["unbatched_gbps_rounds"][r["warmup_rounds"] :])
        assert r["batch_gain"] == pytest.approx(r["processed_gbps"] / r["unbatched_gbps"])
        assert set(r["samples_per_pass"]) == {str(rank) for rank in range(r["ranks"])}
        assert all(value >= 1 for value in r["samples_per_pass"].values())
        assert r["server_counters"] == {
            str(rank): {
                "messages": r["messages_per_rank"],
                "accepted": r["messages_per_rank"],
                "duplicates": 0,
                "rejected": 0,
            }
            for rank in range(r["ranks"])
        }
    assert [t["pass"] for t in ingest["targets"]] == [r["fraction_of_raw"] >= 0.85 for r in records]


def test_startup_records(quick_run: tuple[str, dict[str, dict]]) -> None:
    _, results = quick_run
    startup = results["startup"]
    (record,) = startup["records"]
    assert record["ranks"] == 1 and record["cache"] == "warm"
    assert 0 < record["seconds"] < 120
    assert record["idle_rss_bytes"][0] > 0
    assert record["exit_code_after_sigterm"] == 143  # a clean SIGTERM shutdown
    (target,) = startup["targets"]
    assert target["value"] == record["seconds"] and target["pass"] == (record["seconds"] < 2)


def test_memory_budget_follows_the_documented_sizes(quick_run: tuple[str, dict[str, dict]]) -> None:
    _, results = quick_run
    (r,) = results["memory"]["records"]
    assert set(r) == MEMORY_KEYS
    assert r["case"] == "sobol_p5_members" and r["ranks"] == 2
    per_timestep = (
        r["cells_per_message"] * MEAN_VARIANCE_SOBOL5_DOUBLES + r["samples"] * SOBOL5_GROUP_DOUBLES
    )
    documented = 8 * r["timesteps"] * per_timestep
    for state in r["state_bytes"]:
        assert documented <= state <= documented + HEADER_SLACK_BYTES
    assert r["queue_bytes"] == 32 * r["senders"] * r["message_bytes"]
    assert r["member_buffer_bytes"] == 2**20  # --member-buffer-mb 1
    assert r["batch_bytes"] == 64 * 2**20 + r["message_bytes"]  # --batch-mb 64 + one message
    assert r["budget_bytes"] == [
        s + r["queue_bytes"] + r["member_buffer_bytes"] + r["batch_bytes"] for s in r["state_bytes"]
    ]
    for idle, at_ingest, final in zip(
        r["idle_rss_bytes"], r["peak_at_ingest_bytes"], r["peak_final_bytes"], strict=True
    ):
        assert 0 < idle <= at_ingest <= final <= r["peak_bytes"]
    assert all(
        0 < file <= idle
        for file, idle in zip(r["idle_rss_file_bytes"], r["idle_rss_bytes"], strict=True)
    )
    assert r["end_seconds"] > 0
    assert r["allowed_bytes"] == pytest.approx(1.1 * max(r["budget_bytes"]) + 100e6)
    (target,) = results["memory"]["targets"]
    assert target["pass"] == (r["peak_bytes"] <= r["allowed_bytes"])


def test_tables_are_printed(quick_run: tuple[str, dict[str, dict]]) -> None:
    stdout, _ = quick_run
    assert "melissa_nb server ingest vs raw pyzmq" in stdout
    assert "to the first handshake" in stdout
    assert "sobol_p5_members M=2" in stdout
