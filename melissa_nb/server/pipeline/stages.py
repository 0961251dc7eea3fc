"""User processing: stages called with every accepted message, and listeners of the same stream.

A stage is a function (a Numba `@njit` function is the intended case) called on the loop's
thread as `function(values, timestep, simulation_id, *state)` for every message the server
accepted, after duplicates were dropped and after the built-in statistics saw it:

- `values`: a read-only float64 view of the received frame, `(vect_size,)` for one vector,
  `(p + 2, vect_size)` for a whole Sobol group; valid only during the call (copy what you keep);
- `state`: the stage's arrays for this (field, client slice), in the order they were declared,
  each with the declared leading shape and the slice's cells last. They live in one named
  shared-memory block per (rank, stage, field, client slice), created when that slice first
  sends (`melissa_nb_<study>_r<rank>_stage_<stage>_<field>_c<client rank>`), zero-filled.

A stage that raises is counted (`stage_errors`) and logged at most once per stage every
`progress.LOG_INTERVAL` seconds (the shared `LogThrottle`); the server goes on. Listeners (the
forwarder, an embedded server's inbox) are plain callables taking the decoded `DataMessage`,
called after the stages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from melissa_nb.errors import ConfigurationError
from melissa_nb.protocol import DataMessage
from melissa_nb.server.config import ServerConfig
from melissa_nb.server.live.progress import LogThrottle
from melissa_nb.server.live.state import StateBlock

STAGE_KIND = "stage"  # `kind` in a stage block's metadata: status and checkpoints tell them apart
STAGE_PREFIX = "stage."  # checkpoints name a stage array `stage.<stage>.<array>` in its slice


def stage_block_name(study_id: str, rank: int, stage: str, field: str, client_rank: int) -> str:
    """Name of the state block of one stage for one (server rank, field, client slice)."""
    return f"melissa_nb_{study_id}_r{rank}_stage_{stage}_{field}_c{client_rank}"


def read_only_view(message: DataMessage) -> np.ndarray:
    """The message's values as user code sees them: `(vect_size,)` for one vector, else
    `(nb_vectors, vect_size)`; read-only, since the frame may also be forwarded."""
    values = (message.values[0] if message.nb_vectors == 1 else message.values).view()
    values.flags.writeable = False
    return values


def _normalise_state(
    name: str, state: Mapping[str, Any] | None
) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """`{array: leading shape}` or `{array: (leading shape, dtype)}` -> shapes and dtypes."""
    arrays = {}
    for array, spec in (state or {}).items():
        if not array.isidentifier() or array == "count":
            raise ConfigurationError(
                f"stage {name!r}: state array name {array!r} is not a name (or is 'count', "
                "reserved for per-timestep sample counts in checkpoints)"
            )
        if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], tuple):
            shape, dtype = spec
        else:
            shape, dtype = spec, np.float64
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if any(not isinstance(n, int) or n < 1 for n in shape):
            raise ConfigurationError(
                f"stage {name!r}: state array {array!r} has leading shape {shape}, "
                "expected positive integers"
            )
        arrays[array] = (shape, np.dtype(dtype))
    return arrays


@dataclass(frozen=True)
class Stage:
    """One registered stage: its function, its state layout and the fields it watches."""

    name: str
    function: Callable[..., object]
    state: dict[str, tuple[tuple[int, ...], np.dtype]]
    fields: tuple[str, ...]

    def layout(self, cells: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """The state arrays of one slice of `cells` cells (cells last)."""
        return {array: ((*shape, cells), dtype) for array, (shape, dtype) in self.state.items()}


class Processing:
    """Everything that runs on an accepted message besides the built-in statistics."""

    def __init__(
        self, config: ServerConfig, rank: int, counts: dict[str, int], log: logging.Logger
    ) -> None:
        self.config = config
        self.rank = rank
        self.counts = counts  # the rank's progress counters (stage_ns, stage_errors)
        self.log = log
        self.stages: list[Stage] = []
        self.listeners: list[Callable[[DataMessage], None]] = []
        self.finishers: list[Callable[[bool], None]] = []
        self.hold = False  # True: finishers wait for release_finish()
        self._aborted: bool | None = None  # set when the study ended
        self._blocks: dict[tuple[str, str, int], StateBlock] = {}
        self._states: dict[tuple[str, str, int], tuple[np.ndarray, ...]] = {}
        self._errors: dict[str, int] = {}
        self._restored: dict[tuple[str, str, int], dict[str, np.ndarray]] = {}
        self._throttle = LogThrottle()

    def add_stage(
        self,
        function: Callable[..., object],
        *,
        name: str | None = None,
        state: Mapping[str, Any] | None = None,
        fields: tuple[str, ...] | list[str] | None = None,
    ) -> Stage:
        """Register `function` for every accepted message of `fields` (default: all fields).

        `state` maps array names to a leading shape (`(T,)`, `()` or an int) or to a
        `(leading shape, dtype)` pair; the cells of the slice are appended as the last axis.
        """
        name = name or getattr(function, "__name__", "")
        if not name.replace("_", "").isalnum() or not name.isascii():
            raise ConfigurationError(f"stage name {name!r}: letters, digits and _ only")
        if any(stage.name == name for stage in self.stages):
            raise ConfigurationError(f"stage name {name!r} is already registered")
        watched = tuple(self.config.field_names if fields is None else fields)
        for field in watched:
            if field not in self.config.field_names:
                raise ConfigurationError(
                    f"stage {name!r}: unknown field {field!r} (fields: "
                    f"{':'.join(self.config.field_names)})"
                )
        stage = Stage(name, function, _normalise_state(name, state), watched)
        self.stages.append(stage)
        for stage_name, field, client_rank in list(self._restored):  # state from a restart
            if stage_name == name:
                cells = next(iter(self._restored[(name, field, client_rank)].values())).shape[-1]
                self.stage_state(stage, field, client_rank, cells)
        return stage

    def listen(self, listener: Callable[[DataMessage], None]) -> None:
        """Call `listener(message)` for every accepted message, after the stages."""
        self.listeners.append(listener)

    def on_finish(self, finisher: Callable[[bool], None]) -> None:
        """Call `finisher(aborted)` once the study has ended and results are written."""
        self.finishers.append(finisher)

    def stage_state(
        self, stage: Stage, field: str, client_rank: int, cells: int
    ) -> dict[str, np.ndarray]:
        """The writable state arrays of `stage` for one slice (its block is created if new).

        A restart can fill them from a checkpoint before data flows.
        """
        key = (stage.name, field, client_rank)
        block = self._blocks.get(key)
        if block is None:
            block = StateBlock.create(
                stage_block_name(self.config.study_id, self.rank, stage.name, field, client_rank),
                stage.layout(cells),
                {
                    "kind": STAGE_KIND,
                    "study_id": self.config.study_id,
                    "rank": self.rank,
                    "stage": stage.name,
                    "field": field,
                    "client_rank": client_rank,
                    "cells": cells,
                },
            )
            self._blocks[key] = block
            self._states[key] = tuple(block.arrays[array] for array in stage.state)
            for array, values in self._restored.pop(key, {}).items():
                if array not in block.arrays or block.arrays[array].shape != values.shape:
                    raise ConfigurationError(
                        f"stage {stage.name}: checkpointed array {array!r} {values.shape} does "
                        f"not fit its state {stage.layout(cells).get(array, 'none')}"
                    )
                block.arrays[array][...] = values
            self.log.info(
                "stage %s: state of field %s, client rank %d: %d cells (%.1f MiB)",
                stage.name,
                field,
                client_rank,
                cells,
                block.size / 2**20,
            )
        return block.arrays

    def restore_state(self, field: str, client_rank: int, arrays: dict[str, np.ndarray]) -> None:
        """Keep checkpointed stage arrays (`stage.<stage>.<array>`) of one slice: they fill the
        stage's block when it is created (stages register after a restart has loaded)."""
        for name, values in arrays.items():
            stage, array = name[len(STAGE_PREFIX) :].split(".", 1)
            self._restored.setdefault((stage, field, client_rank), {})[array] = values

    def state_blocks(self) -> list[StateBlock]:
        """Every stage state block of this rank (their metadata say stage, field, slice)."""
        return list(self._blocks.values())

    def accept(self, message: DataMessage) -> None:
        """Run every stage watching the message's field, then every listener."""
        if self.stages:
            values = read_only_view(message)
            for stage in self.stages:
                if message.field_name in stage.fields:
                    self._run(stage, message, values)
        for listener in self.listeners:
            listener(message)

    def _run(self, stage: Stage, message: DataMessage, values: np.ndarray) -> None:
        key = (stage.name, message.field_name, message.client_rank)
        started = time.perf_counter_ns()
        try:
            if key not in self._states:  # no room for its block fails the stage, not the server
                self.stage_state(stage, message.field_name, message.client_rank, message.vect_size)
            stage.function(values, message.time_stamp, message.simu_id, *self._states[key])
        except Exception as error:  # a user stage must never take the server down
            # only text leaves this block: a kept exception would keep the loop's frames alive
            self._failed(stage, message, f"{type(error).__name__}: {error}")
        self.counts["stage_ns"] += time.perf_counter_ns() - started

    def _failed(self, stage: Stage, message: DataMessage, error: str) -> None:
        self.counts["stage_errors"] += 1
        self._errors[stage.name] = self._errors.get(stage.name, 0) + 1
        unlogged = self._throttle.count(stage.name, time.monotonic())
        if unlogged:
            self.log.error(
                "stage %s failed %d time(s) since the last report (%d in all), latest on field %s, "
                "simulation %d, timestep %d: %s",
                stage.name,
                unlogged,
                self._errors[stage.name],
                message.field_name,
                message.simu_id,
                message.time_stamp,
                error,
            )

    def finish(self, aborted: bool) -> None:
        """The study ended (results written): run the finishers (end of stream, ...), now or,
        when `hold` is set (an embedded server with messages still in its inbox), at
        `release_finish()`."""
        self._aborted = aborted
        if not self.hold:
            self.release_finish()

    def release_finish(self) -> None:
        """Run the finishers once, after `finish` (nothing before it, nothing twice)."""
        if self._aborted is None:
            return
        finishers, self.finishers = self.finishers, []
        for finisher in finishers:
            finisher(self._aborted)

    def release(self) -> None:
        """Remove every stage state block of this rank."""
        self._states.clear()
        for block in self._blocks.values():
            block.release()
        self._blocks.clear()
