"""What `--auth` costs on the wire: PUSH -> PULL over loopback TCP with CURVE (melissa_nb.auth:
the study's key pair, a gatekeeper admitting it) against the same sockets without (NULL), for
data frames of several sizes, in the same run.

A sender process pushes N frames; the receiver (this process) times from the moment it tells
the sender to start (the handshake is done before) to the last frame received: encryption and
decryption are inside. Runs alternate NULL and
CURVE, REPEATS times each; the best of each counts (the machine is shared). Results, with the
ratio CURVE / NULL in throughput, go to ``auth.json``.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import zmq

from bench.live_server import write_json
from bench.timing import machine_info
from melissa_nb.auth import Gatekeeper, LinkKey, connect_with, serve_with

CELLS = (10_000, 100_000, 1_000_000)
QUICK_CELLS = (1_000,)
VOLUME_BYTES = 1e9  # per run
QUICK_VOLUME_BYTES = 1e6
REPEATS = 3
HWM = 32  # as the server's data socket (RCVHWM)


def _send(address: str, key: LinkKey | None, frames: int, size: int, go: object) -> None:
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, HWM)
    push.setsockopt(zmq.LINGER, 60_000)
    if key is not None:
        connect_with(push, key)
    push.connect(address)
    push.send(b"hello")  # the handshake is done before the clock starts
    go.wait()  # type: ignore[attr-defined]
    payload = bytes(size)
    for _ in range(frames):
        push.send(payload, copy=False)
    push.close()
    context.term()


def one_run(cells: int, curve: bool, volume: float) -> dict[str, float]:
    """Seconds and GB/s of one sender's frames of `cells` doubles, with or without CURVE."""
    size = 8 * cells
    frames = max(int(volume // size), 10)
    context = zmq.Context()
    key = LinkKey(*zmq.curve_keypair()) if curve else None
    gatekeeper = Gatekeeper(context, key, lambda _: None) if key is not None else None
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, HWM)
    pull.setsockopt(zmq.LINGER, 0)
    if key is not None:
        serve_with(pull, key)
    pull.bind("tcp://127.0.0.1:*")
    address = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    go = multiprocessing.Event()
    sender = multiprocessing.Process(target=_send, args=(address, key, frames, size, go))
    sender.start()
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    if gatekeeper is not None:
        poller.register(gatekeeper.socket, zmq.POLLIN)
    while True:  # the hello frame, with the gatekeeper answered meanwhile
        events = dict(poller.poll(60_000))
        if not events:
            raise TimeoutError("the sender never connected")
        if gatekeeper is not None and gatekeeper.socket in events:
            gatekeeper.answer()
        if pull in events:
            pull.recv()
            break
    started = time.perf_counter()
    go.set()
    for _ in range(frames):
        pull.recv(copy=False)
    seconds = time.perf_counter() - started
    sender.join(60)
    if gatekeeper is not None:
        gatekeeper.close()
    context.destroy(linger=0)
    return {"seconds": seconds, "gbps": frames * size / seconds / 1e9, "frames": frames}


def main(*, quick: bool = False, output_dir: Path) -> Path:
    """Measure every size both ways; write auth.json."""
    volume = QUICK_VOLUME_BYTES if quick else VOLUME_BYTES
    records = []
    for cells in QUICK_CELLS if quick else CELLS:
        runs: dict[str, list[dict[str, float]]] = {"null": [], "curve": []}
        for _ in range(1 if quick else REPEATS):
            for mode in runs:
                runs[mode].append(one_run(cells, mode == "curve", volume))
        best = {mode: max(run["gbps"] for run in rounds) for mode, rounds in runs.items()}
        records.append(
            {
                "cells": cells,
                "null_gbps": best["null"],
                "curve_gbps": best["curve"],
                "curve_over_null": best["curve"] / best["null"],
                "runs": runs,
            }
        )
        print(
            f"{cells} cells: NULL {best['null']:.2f} GB/s, CURVE {best['curve']:.2f} GB/s "
            f"({best['curve'] / best['null']:.0%})"
        )
    results = {
        "benchmark": "auth",
        "method": __doc__,
        "machine": machine_info(),
        "quick": quick,
        "records": records,
    }
    return write_json(results, output_dir, "auth")
