"""The benchmarks' figures: error against simulations, on log-log axes (matplotlib, Agg)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

Curve = tuple[str, str, Sequence[float], Sequence[float]]  # label, style, simulations, errors


def error_figure(curves: Sequence[Curve], ylabel: str, title: str, path: Path) -> None:
    """One log-log panel of error against simulations, one line per curve, saved as `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.6))
    for label, style, simulations, errors in curves:
        axes.loglog(simulations, errors, style, label=label)
    axes.set_xlabel("simulations")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.savefig(path, dpi=100, bbox_inches="tight")
