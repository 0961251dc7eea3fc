"""A live ``melissa-nb server`` for the server benchmarks, and the processes that feed it.

`LiveServer` launches the server (one plain process, or M ranks under the ``mpiexec`` beside the
interpreter) on free ports of 127.0.0.1 with ``--data_port 0``, does the connection handshake,
watches its shared-memory state, samples its ranks' memory, waits for its exit (with the peak
resident memory of the whole process tree from ``wait4``) and always leaves nothing behind: no
process, no block in ``/dev/shm``.

`send_study` is the body of a sender process (started with ``spawn``): it streams data frames
from a small ring of prebuilt frames, rewriting only the 144-byte header of a frame once ZeroMQ
has released it, so a sender costs one ``send`` per message and no copy; the raw baseline uses
the same senders, so the two runs differ only in who receives. `receive_raw` is the receiver of
that baseline: a PULL socket that only receives.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from melissa_nb.partition import overlaps
from melissa_nb.ports import free_port
from melissa_nb.protocol import (
    DATA_HEADER_SIZE,
    ConnectionReply,
    ConnectionRequest,
    encode_data_frame,
    encode_data_header,
)
from melissa_nb.server.live.state import SHM_DIRECTORY, attach_block, block_name, list_blocks
from melissa_nb.server.results.status import read_progress

BIN = Path(sys.executable).parent
MELISSA = BIN / "melissa-nb"
MPIEXEC = BIN / "mpiexec"
FIELD = "u"
RCVHWM = 32  # the server's data socket (docs/server.md); the raw receiver uses the same
SENDER_RING = 4  # prebuilt frames per destination: at most this many in flight per sender
LINGER_MS = 5000
WAIT_S = 120.0  # longest any single wait of a benchmark may take before it is an error
POLL_S = 0.0005  # shared-memory polling period: the resolution of "processed" times
_SUMMARY = re.compile(
    r"r(\d+) INFO study (complete|aborted): (\d+) messages, (\d+) accepted, "
    r"(\d+) duplicates, (\d+) rejected"
)


def write_json(results: Mapping[str, object], output_dir: Path, name: str) -> Path:
    """Write a benchmark's results as ``<output_dir>/<name>.json``; returns the path."""
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / f"{name}.json"
    path.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return path


@dataclass(frozen=True)
class Study:
    """What the server computes and what each sender sends.

    ``cells`` is the size of one data frame's vector(s): with M ranks the field has M x cells
    cells, so every rank receives frames of ``cells`` cells. With ``parameters`` > 0 the study
    is Sobol-only and each frame is a whole group of p + 2 vectors.
    """

    operations: str
    cells: int
    timesteps: int
    samples: int
    parameters: int = 0
    thresholds: tuple[float, ...] = ()
    quantiles: tuple[float, ...] = ()
    member_buffer_mb: float | None = None
    batch_mb: float | None = None  # --batch-mb (None: the server's default)
    members: bool = False  # Sobol data sent member by member (one vector per frame)
    # samples the server expects but nobody sends: the study cannot end by itself, so the
    # benchmark reads the live counters and then stops the server
    unsent: int = 0

    @property
    def vectors(self) -> int:
        """Vectors per frame: p + 2 for a Sobol group, else 1."""
        return self.parameters + 2 if self.parameters and not self.members else 1

    @property
    def simulation_ids(self) -> range:
        """Ids on the wire: simulations, Sobol groups, or Sobol members (group (p+2) + k)."""
        return range(self.samples * (self.parameters + 2 if self.members else 1))

    @property
    def messages_per_rank(self) -> int:
        """Data frames each server rank receives in the whole study."""
        return len(self.simulation_ids) * self.timesteps

    @property
    def frame_bytes(self) -> int:
        """Bytes of one data frame."""
        return DATA_HEADER_SIZE + 8 * self.vectors * self.cells

    def options(self) -> list[str]:
        """The server's command-line options for this study."""
        options = [
            "-s",
            str(self.samples + self.unsent),
            "-t",
            str(self.timesteps),
            "-f",
            FIELD,
            "-o",
            self.operations,
        ]
        if self.parameters:
            options += ["-p", str(self.parameters)]
        if self.thresholds:
            options += ["-e", ":".join(f"{value:g}" for value in self.thresholds)]
        if self.quantiles:
            options += ["-q", ":".join(f"{value:g}" for value in self.quantiles)]
        if self.member_buffer_mb is not None:
            options += ["--member-buffer-mb", f"{self.member_buffer_mb:g}"]
        if self.batch_mb is not None:
            options += ["--batch-mb", f"{self.batch_mb:g}"]
        return options


def handshake(endpoint: str, simu_id: int = 0, timeout: float = WAIT_S) -> ConnectionReply:
    """One connection request (client communicator of 1); the reply, or TimeoutError.

    The REQ socket reconnects every 10 ms, so a reply comes within ~10 ms of the server binding.
    """
    context = zmq.Context.instance()
    request = context.socket(zmq.REQ)
    request.setsockopt(zmq.LINGER, 0)
    request.setsockopt(zmq.RECONNECT_IVL, 10)
    try:
        request.connect(endpoint)
        request.send(ConnectionRequest(1, simu_id).encode())
        if not request.poll(int(timeout * 1000)):
            raise TimeoutError(f"no connection reply from {endpoint} within {timeout:g} s")
        return ConnectionReply.decode(request.recv(), entry_width=None)
    finally:
        request.close()


def memory_status(pid: int) -> dict[str, int] | None:
    """VmHWM, VmRSS, RssFile and RssShmem of a live process in bytes (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            lines = status.read().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    values = {}
    for line in lines:
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssFile", "RssShmem"):
            values[key] = int(rest.split()[0]) * 1024
    return values if "VmHWM" in values else None  # a zombie has no memory lines


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a live process, all its threads (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # fields[11], fields[12]: utime, stime (fields 14 and 15 of proc(5), counted after the name)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class ServerExit:
    """How the server ended: exit code, seconds from launch, peak RSS of the process tree."""

    returncode: int
    exited_at: float
    tree_peak_rss_bytes: int


@dataclass
class LiveServer:
    """One running ``melissa-nb server`` (see the module docstring)."""

    process: subprocess.Popen
    ranks: int
    study: Study
    study_id: str
    port: int
    output: Path
    log: Path
    launched_at: float
    exit: ServerExit | None = None
    _blocks: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def launch(
        cls,
        study: Study,
        ranks: int,
        workdir: Path,
        environment: dict[str, str] | None = None,
        cpus: Sequence[int] | None = None,
    ) -> LiveServer:
        """Start the server (on `cpus` only, if given); returns at once (see `connect`)."""
        study_id = f"b{uuid.uuid4().hex[:8]}"
        port = free_port()
        output = workdir / study_id
        command = [
            str(MELISSA),
            "server",
            *study.options(),
            "--connection-port",
            str(port),
            "--data_port",
            "0",
            "--output-dir",
            str(output),
            "--study-id",
            study_id,
            "-v",
            "1",
        ]
        if ranks > 1:
            command = [str(MPIEXEC), "-n", str(ranks), *command]
        env = dict(os.environ if environment is None else environment)
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        log = workdir / f"{study_id}.log"
        with log.open("w") as sink:
            launched_at = time.monotonic()
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        if cpus is not None:
            # Set while the interpreter starts, before any thread exists: all inherit it.
            os.sched_setaffinity(process.pid, cpus)
        return cls(process, ranks, study, study_id, port, output, log, launched_at)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def endpoint(self) -> str:
        """The connection endpoint (rank 0's REP socket)."""
        return f"tcp://127.0.0.1:{self.port}"

    def connect(self, timeout: float = WAIT_S) -> tuple[ConnectionReply, float]:
        """Handshake as simulation 0; returns the reply and the seconds since launch."""
        reply = handshake(self.endpoint, 0, timeout)
        return reply, time.monotonic() - self.launched_at

    def announce(self, timeout: float = WAIT_S) -> ConnectionReply:
        """Handshake as every sample of the study, as their simulations would (the server takes
        data only from simulations whose handshake it answered); the last reply."""
        group = self.study.parameters + 2 if self.study.parameters else 1
        for sample in range(self.study.samples):
            reply = handshake(self.endpoint, sample * group, timeout)
        return reply

    def rank_pids(self, timeout: float = WAIT_S) -> list[int]:
        """Process ids of the ranks, from ``server.json`` (written by rank 0 once all started)."""
        path = self.output / "server.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            self._check_alive("server.json")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} not written within {timeout:g} s")
            time.sleep(0.01)
        return [int(pid) for pid in json.loads(path.read_text())["pids"]]

    def state_blocks(self) -> list[str]:
        """Names of the live state blocks of this study (progress blocks excluded)."""
        return [
            name
            for name in list_blocks(f"melissa_nb_{self.study_id}_")
            if not name.endswith("_progress")
        ]

    def wait_counters(self, messages: int, timeout: float = 10.0) -> dict[int, dict[str, int]]:
        """Poll the ranks' progress blocks (refreshed every 0.5 s) until each counted `messages`
        data frames; returns their counters (messages, accepted, duplicates, rejected,
        kernel_passes)."""
        deadline = time.monotonic() + timeout
        while True:
            ranks = read_progress(self.output).ranks
            counters = {
                rank: {
                    name: int(ranks[rank][name])
                    for name in ("messages", "accepted", "duplicates", "rejected", "kernel_passes")
                }
                for rank in ranks
            }
            if len(counters) == self.ranks and all(
                c["messages"] >= messages for c in counters.values()
            ):
                return counters
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"progress counters {counters}, expected {messages} "
                    f"messages on each of {self.ranks} ranks"
                )
            time.sleep(0.05)

    def state_bytes(self, rank: int) -> int:
        """Bytes of rank's live state blocks (their sizes in /dev/shm)."""
        return sum(
            os.stat(Path(SHM_DIRECTORY) / name).st_size
            for name in self.state_blocks()
            if name.startswith(f"melissa_nb_{self.study_id}_r{rank}_")
        )

    def folded(self, rank: int) -> int | None:
        """Samples (groups with Sobol) folded into rank's state, all timesteps; None before the
        rank's block exists. Read from the ``*count`` arrays of its live shared memory."""
        block = self._blocks.get(rank)
        if block is None:
            try:
                block = attach_block(block_name(self.study_id, rank, FIELD, 0))
            except (FileNotFoundError, ValueError):  # not created yet, or header not written
                return None
            self._blocks[rank] = block
        name = "sobol.count" if self.study.parameters else "general.count"
        return int(block.arrays[name].sum())

    def detach(self) -> None:
        """Release every attached state block (the server may then free its memory)."""
        for block in self._blocks.values():
            block.release()
        self._blocks.clear()

    def wait_folded(
        self, expected: int, timeout: float = WAIT_S, sample: Callable[[], None] | None = None
    ) -> float:
        """Poll until every rank folded `expected` samples; returns when (time.monotonic).

        `sample` is called about every 20 ms meanwhile (memory sampling).
        """
        deadline = time.monotonic() + timeout
        next_sample = 0.0
        waiting = set(range(self.ranks))
        while waiting:
            now = time.monotonic()
            for rank in list(waiting):
                if (self.folded(rank) or 0) >= expected:
                    waiting.discard(rank)
            if not waiting:
                return now
            if sample is not None and now >= next_sample:
                sample()
                next_sample = now + 0.02
            if now > deadline:
                raise TimeoutError(
                    f"ranks {sorted(waiting)} did not fold {expected} samples "
                    f"within {timeout:g} s:\n{self.text()}"
                )
            self._check_alive("the statistics")
            time.sleep(POLL_S)
        return time.monotonic()

    def wait_exit(
        self, timeout: float = WAIT_S, sample: Callable[[], None] | None = None
    ) -> ServerExit:
        """Wait for the process (tree) to end; `wait4` gives the peak RSS of the whole tree."""
        deadline = time.monotonic() + timeout
        while self.exit is None:
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            now = time.monotonic()
            if pid:
                self.process.returncode = os.waitstatus_to_exitcode(status)
                # ru_maxrss is in KiB on Linux; wait4 includes reaped descendants (the ranks)
                self.exit = ServerExit(
                    self.process.returncode, now - self.launched_at, usage.ru_maxrss * 1024
                )
                break
            if now > deadline:
                raise TimeoutError(f"server did not exit within {timeout:g} s:\n{self.text()}")
            if sample is not None:
                sample()
            time.sleep(0.005)
        return self.exit

    def stop(self, timeout: float = 30.0) -> ServerExit:
        """SIGTERM (a clean shutdown that removes the blocks), then wait for the exit."""
        if self.exit is None:
            os.killpg(self.process.pid, signal.SIGTERM)
        return self.wait_exit(timeout)

    def summaries(self) -> dict[int, dict[str, int]]:
        """Per rank, the end-of-study counters the server logged (messages, accepted, ...)."""
        found = {}
        for match in _SUMMARY.finditer(self.text()):
            rank, _, messages, accepted, duplicates, rejected = match.groups()
            found[int(rank)] = {
                "messages": int(messages),
                "accepted": int(accepted),
                "duplicates": int(duplicates),
                "rejected": int(rejected),
            }
        return found

    def text(self) -> str:
        """The server's combined output so far."""
        return self.log.read_text(errors="replace")

    def close(self) -> list[str]:
        """Kill what is left of the process group, remove leftover blocks; returns their names."""
        self.detach()
        if self.exit is None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(30)
        leftovers = list_blocks(f"melissa_nb_{self.study_id}_")
        for name in leftovers:
            try:
                shared_memory.SharedMemory(name).unlink()
            except FileNotFoundError:
                pass
        return leftovers

    def _check_alive(self, waiting_for: str) -> None:
        if self.exit is None and self.process.poll() is not None:
            raise RuntimeError(
                f"server exited ({self.process.returncode}) while waiting for "
                f"{waiting_for}:\n{self.text()}"
            )


# --- sender and raw receiver processes (spawned: module-level functions) -----------------------


def _payload(vectors: int, cells: int, seed: int) -> np.ndarray:
    """Values with a realistic spread (thresholds 0.5 and 1.5 cut it), fixed per seed."""
    return np.random.default_rng(seed).normal(1.0, 0.5, (vectors, cells))


def _rounds(items: Sequence[int], rounds: int) -> list[Sequence[int]]:
    """`items` cut into `rounds` consecutive, nearly equal parts."""
    return [items[r * len(items) // rounds : (r + 1) * len(items) // rounds] for r in range(rounds)]


def send_study(
    addresses: Sequence[str],
    cells: int,
    vectors: int,
    simulations: Sequence[int],
    timesteps: int,
    ready: Any,
    gos: Sequence[Any],
    results: Any,
    cpus: Sequence[int] | None = None,
) -> None:
    """Sender process: stream every (simulation, timestep) of `simulations` to every address
    (on `cpus` only, ZeroMQ's I/O thread included, when given).

    Client rank 0 of a communicator of 1: each address (server rank) receives its overlap of
    the global vector of len(addresses) x cells cells. The simulations are sent in len(gos)
    rounds: sets `ready` once connected, then for each round waits for its go event, sends its
    share and waits until ZeroMQ released every frame; puts {"first_send", "last_sent"}
    (time.monotonic) and "cpu_seconds" (the process's, ZeroMQ I/O thread included) per round
    into `results`.
    """
    if cpus is not None:
        os.sched_setaffinity(0, cpus)  # before ZeroMQ starts its thread, which inherits it
    context = zmq.Context()
    sockets = []
    rings = []
    global_cells = cells * len(addresses)
    values = _payload(vectors, global_cells, seed=len(simulations) + simulations[0])
    pieces = overlaps(0, global_cells, global_cells, len(addresses))
    for server_rank, offset, size in pieces:
        socket = context.socket(zmq.PUSH)
        socket.setsockopt(zmq.LINGER, LINGER_MS)
        socket.setsockopt(zmq.SNDTIMEO, int(WAIT_S * 1000))
        socket.connect(addresses[server_rank])
        sockets.append(socket)
        piece = values[:, offset : offset + size]
        frames = [
            encode_data_frame(0, 0, 0, FIELD, piece if vectors > 1 else piece[0])
            for _ in range(SENDER_RING)
        ]
        rings.append([[frame, None] for frame in frames])
    ready.set()
    sent = 0
    for go, share in zip(gos, _rounds(simulations, len(gos)), strict=True):
        if not go.wait(WAIT_S):
            raise TimeoutError("no go signal")
        first_send = time.monotonic()
        cpu_start = time.process_time()
        for simulation in share:
            for timestep in range(timesteps):
                for socket, ring, (_, _, size) in zip(sockets, rings, pieces, strict=True):
                    slot = ring[sent % SENDER_RING]
                    if slot[1] is not None:
                        slot[1].wait(WAIT_S)  # ZeroMQ still holds this frame: keep it intact
                    slot[0][:DATA_HEADER_SIZE] = encode_data_header(
                        timestep, simulation, 0, size, FIELD
                    )
                    slot[1] = socket.send(slot[0], copy=False, track=True)
                sent += 1
        for ring in rings:
            for _, tracker in ring:
                if tracker is not None:
                    tracker.wait(WAIT_S)
        results.put(
            {
                "first_send": first_send,
                "last_sent": time.monotonic(),
                "cpu_seconds": time.process_time() - cpu_start,
            }
        )
    for socket in sockets:
        socket.close()
    context.term()


def start_senders(
    context: Any,
    study: Study,
    senders: int,
    addresses: Sequence[str],
    rounds: int = 1,
    cpus: Sequence[int] | None = None,
) -> tuple[list[Any], list[Any], Any]:
    """Spawn `senders` processes sharing the study's ids round robin (on `cpus` if given);
    wait until each is connected. Returns (processes, one go event per round, results queue):
    set a round's go event to start it, then collect its times with `sender_times`."""
    gos = [context.Event() for _ in range(rounds)]
    results = context.Queue()
    processes = []
    readies = []
    for sender in range(senders):
        ready = context.Event()
        process = context.Process(
            target=send_study,
            args=(
                list(addresses),
                study.cells,
                study.vectors,
                list(study.simulation_ids[sender::senders]),
                study.timesteps,
                ready,
                gos,
                results,
                cpus,
            ),
            daemon=True,
        )
        process.start()
        processes.append(process)
        readies.append(ready)
    for ready in readies:
        if not ready.wait(WAIT_S):
            join(processes)
            raise TimeoutError("a sender did not connect")
    return processes, gos, results


def sender_times(results: Any, senders: int) -> tuple[float, float, float]:
    """(first send of any sender, last frame released by any sender) in time.monotonic, and
    the senders' CPU seconds together."""
    times = [results.get(timeout=WAIT_S) for _ in range(senders)]
    return (
        min(t["first_send"] for t in times),
        max(t["last_sent"] for t in times),
        sum(t["cpu_seconds"] for t in times),
    )


def join(processes: Sequence[Any]) -> None:
    """Wait for benchmark processes (killed after WAIT_S); raise if one failed."""
    for process in processes:
        process.join(WAIT_S)
        if process.is_alive():
            process.kill()
            process.join(10)
    failed = [process.exitcode for process in processes if process.exitcode != 0]
    if failed:
        raise RuntimeError(f"benchmark processes failed with exit codes {failed}")


def receive_raw(
    per_round: int, rounds: int, addresses: Any, results: Any, cpus: Sequence[int] | None = None
) -> None:
    """Raw receiver process (on `cpus` if given): bind PULL (RCVHWM 32), put its address,
    receive `rounds` x `per_round` frames.

    Puts one {"last_receive", "bytes", "cpu_seconds"} per round into `results` (time.monotonic;
    the process's CPU seconds, ZeroMQ I/O thread included, from the round's first frame on).
    """
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, RCVHWM)
    pull.setsockopt(zmq.LINGER, 0)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    addresses.put(f"tcp://127.0.0.1:{port}")
    for _ in range(rounds):
        received = size = 0
        cpu_start = 0.0
        deadline = time.monotonic() + WAIT_S
        while received < per_round:
            if not pull.poll(100):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"raw receiver got {received} of {per_round} frames")
                continue
            frame = pull.recv(copy=False)
            if received == 0:
                cpu_start = time.process_time()
            size += len(frame)
            received += 1
        results.put(
            {
                "last_receive": time.monotonic(),
                "bytes": size,
                "cpu_seconds": time.process_time() - cpu_start,
            }
        )
    pull.close()
    context.term()
