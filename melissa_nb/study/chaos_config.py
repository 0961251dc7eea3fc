"""`[study] chaos = { degree = d, fields = [...], timesteps = [...], max_gb = G }`: the study's
polynomial chaos, read and checked before anything starts: the design holds more points than
coefficients, and the state of the fields and timesteps it covers fits the memory budget."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from melissa_nb.kernels.api.chaos import MAX_TERMS
from melissa_nb.study.toml_table import TomlTable

KEYS = ("degree", "fields", "timesteps", "max_gb")


@dataclass(frozen=True)
class ChaosConfig:
    """The study's polynomial chaos: its degree and what it covers."""

    degree: int
    terms: int  # coefficients per cell and timestep, C(p + d, d)
    fields: tuple[str, ...]  # the fields it is fitted on (every field by default)
    timesteps: tuple[int, ...]  # the timesteps it is fitted at, increasing (every by default)
    max_gb: float  # the budget its state may take, GiB

    @property
    def bytes_per_cell(self) -> int:
        """State per cell and timestep: the P projections, the sum of squares, the shift."""
        return 8 * (self.terms + 2)

    def state_bytes(self, cells: int) -> int:
        """The whole state for `cells` cells per field, over the server's ranks."""
        return self.bytes_per_cell * cells * len(self.timesteps) * len(self.fields)


def default_budget_gb(server_nodes: int) -> float:
    """Half the memory of this machine per server node (the server runs here, or on nodes
    assumed alike: `max_gb` says otherwise)."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return memory / 2 / 2**30 * server_nodes


def read_chaos(
    study: TomlTable,
    parameters: int,
    fields: tuple[str, ...],
    timesteps: int,
    server_nodes: int,
) -> ChaosConfig | None:
    """The `chaos` table of [study], None without one."""
    raw = study.get("chaos", None)
    if raw is None:
        return None
    if not isinstance(raw, dict) or "degree" not in raw or set(raw) - set(KEYS):
        raise study.fail(
            "chaos", "a table { degree = d } (optional fields, timesteps, max_gb)", raw
        )
    table = TomlTable(raw, "study.chaos")
    degree = table.integer("degree", minimum=1)
    terms = math.comb(parameters + degree, degree)
    if terms > MAX_TERMS:
        raise study.fail("chaos", f"at most {MAX_TERMS:,} terms: a lower degree", raw)
    chosen = table.array("fields", list(fields))
    if not chosen or any(field not in fields for field in chosen) or len(set(chosen)) < len(chosen):
        raise table.fail("fields", f"distinct fields among {list(fields)}", chosen)
    steps = table.array("timesteps", list(range(timesteps)))
    if (
        not steps
        or any(isinstance(step, bool) or not isinstance(step, int) for step in steps)
        or any(not -timesteps <= step < timesteps for step in steps)
        or len({step % timesteps for step in steps}) < len(steps)
    ):
        raise table.fail(
            "timesteps",
            f"distinct timesteps in 0..{timesteps - 1} (or from the end: -1 is the last)",
            steps,
        )
    budget = table.number("max_gb", default_budget_gb(server_nodes), minimum=0, exclusive=True)
    return ChaosConfig(
        degree, terms, tuple(chosen), tuple(sorted(step % timesteps for step in steps)), budget
    )


def chaos_refusal(
    chaos: ChaosConfig, design_points: int, group_size: int, parameters: int, cells: int | None
) -> tuple[str, str] | None:
    """(key, what it needs) when the chaos cannot run: fewer design points than coefficients
    (with Sobol every member is one), or a state past the budget (known when the study file
    gives grid_shape); None when it can."""
    if design_points < chaos.terms:
        needed = -(-chaos.terms // group_size)
        return "sample_size", (
            f"at least {needed} for a chaos of degree {chaos.degree} in {parameters} parameters "
            f"({chaos.terms} coefficients per cell"
            + (f", {group_size} design points per group" if group_size > 1 else "")
            + "; two to three times that for a sound fit)"
        )
    if cells is not None and chaos.state_bytes(cells) > chaos.max_gb * 2**30:
        return "chaos", (
            f"a state within max_gb = {chaos.max_gb:g} (default: half this machine's memory "
            f"per server node); it would take {chaos.state_bytes(cells) / 2**30:,.1f} GiB "
            f"({cells:,} cells x {len(chaos.timesteps)} timesteps x {len(chaos.fields)} fields x "
            f"{chaos.bytes_per_cell} bytes): fewer timesteps or fields (chaos.timesteps, "
            "chaos.fields), a lower degree, or a larger max_gb"
        )
    return None
