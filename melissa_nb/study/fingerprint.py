"""What makes two runs the same study: the design's description (parameters and their
distributions, seed, sampling, sample size, Sobol, fields, statistics, timesteps, command), its
fingerprint, and `<output>/design.json`.

The runner writes design.json before it starts the server and gives the server the fingerprint
(`--study-fingerprint`), which every checkpoint keeps: a server refuses to restart from a
checkpoint of another design, and `--resume` compares the checkpoint's fingerprint with the study
file's before anything runs, naming what changed when design.json says it. This holds whatever
killed the earlier run (parameters.csv is written only by a runner that ends normally).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from melissa_nb.errors import ConfigurationError
from melissa_nb.study.config import StudyConfig

DESIGN_FILE = "design.json"
DESIGN_LIMIT = 1 << 20  # bytes: a description is a few hundred


def describe(config: StudyConfig) -> dict[str, Any]:
    """Everything that decides which data the study's server folds, as JSON-ready values."""
    return {
        "parameters": [
            [parameter.name, parameter.distribution, list(parameter.arguments)]
            for parameter in config.parameters
        ],
        "seed": config.seed,
        "sampling": config.sampling,
        "sample_size": config.sample_size,
        "sobol": config.sobol,
        "fields": list(config.fields),
        "statistics": list(config.statistics),
        "thresholds": list(config.thresholds),
        "quantiles": list(config.quantiles),
        "confidence": config.confidence,
        "timesteps": config.timesteps,
        "command": list(config.command),
        **(
            {
                "chaos_degree": config.chaos.degree,
                "chaos_fields": list(config.chaos.fields),
                "chaos_timesteps": list(config.chaos.timesteps),
            }
            if config.chaos
            else {}
        ),
    }


def fingerprint(description: dict[str, Any]) -> str:
    """A short hex digest of a description (key order and spacing do not matter)."""
    canonical = json.dumps(description, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def write_design(config: StudyConfig) -> str:
    """Write `<output>/design.json` atomically; the design's fingerprint."""
    description = describe(config)
    path = config.output_dir / DESIGN_FILE
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"fingerprint": fingerprint(description), **description}))
    os.replace(temporary, path)
    return fingerprint(description)


def _recorded(output_dir: Path, wanted: str) -> dict[str, Any] | None:
    """The description design.json holds, if it is the one of fingerprint `wanted`."""
    try:
        recorded = json.loads((output_dir / DESIGN_FILE).read_text()[:DESIGN_LIMIT])
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or recorded.pop("fingerprint", None) != wanted:
        return None
    return recorded if fingerprint(recorded) == wanted else None


def check_same_design(config: StudyConfig, theirs: object, where: Path) -> None:
    """ConfigurationError unless the checkpoint fingerprint `theirs` is this study's design."""
    mine = describe(config)
    if theirs == fingerprint(mine):
        return
    if not isinstance(theirs, str):
        raise ConfigurationError(
            f"--resume: the checkpoint in {where} records no study design (written by a bare "
            "server or an older melissa_nb): run without --resume"
        )
    recorded = _recorded(config.output_dir, theirs)
    changed = ""
    if recorded is not None:
        keys = sorted(
            key for key in mine.keys() | recorded.keys() if mine.get(key) != recorded.get(key)
        )
        changed = ": " + "; ".join(
            f"{key} was {recorded.get(key)!r}, is {mine.get(key)!r}" for key in keys
        )
    raise ConfigurationError(
        f"--resume: the checkpoint in {where} is of another design than {config.path}"
        f"{changed or ' (another study, or a changed study file)'}: run without --resume"
    )
