"""Independent numpy/scipy references for the kernels (two-pass, batch, closed forms).

``FIELD_REFERENCES`` maps each result property of ``FieldStatistics`` to the batch computation
it must match; tests are parametrized over it, so a new property needs a reference here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import scipy.stats

# Settings the FieldStatistics references are computed for.
THRESHOLDS = (-0.5, 0.0, 1.25)


def _quiet(function: Callable[[], np.ndarray]) -> np.ndarray:
    """Evaluate a scipy reference where it may warn about constant cells (it returns NaN)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return function()


FIELD_REFERENCES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "mean": lambda samples, ids: samples.mean(axis=0),
    "variance": lambda samples, ids: samples.var(axis=0, ddof=1),
    "skewness": lambda samples, ids: _quiet(lambda: scipy.stats.skew(samples, bias=False)),
    "kurtosis": lambda samples, ids: _quiet(lambda: scipy.stats.kurtosis(samples, bias=False)),
    "min": lambda samples, ids: samples.min(axis=0),
    "max": lambda samples, ids: samples.max(axis=0),
    "min_simulation": lambda samples, ids: ids[samples.argmin(axis=0)],
    "max_simulation": lambda samples, ids: ids[samples.argmax(axis=0)],
    "threshold_exceedance": lambda samples, ids: exceedances(samples, THRESHOLDS),
    "exceedance_probability": lambda samples, ids: (
        exceedances(samples, THRESHOLDS) / samples.shape[0]
    ),
}


def exceedances(samples: np.ndarray, thresholds: tuple[float, ...]) -> np.ndarray:
    """Count of samples strictly above each threshold, (thresholds, cells)."""
    return (samples[None, :, :] > np.asarray(thresholds)[:, None, None]).sum(axis=1)


def martinez_batch(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Martinez indices from all groups at once with np.corrcoef: (first, total), (p, cells).

    ``groups`` is (n, p + 2, cells) with rows Y_A, Y_B, Y_C1..Y_Cp.
    """
    n, rows, cells = groups.shape
    first = np.empty((rows - 2, cells))
    total = np.empty((rows - 2, cells))
    for cell in range(cells):
        correlations = np.corrcoef(groups[:, :, cell], rowvar=False)
        first[:, cell] = correlations[1, 2:]
        total[:, cell] = 1.0 - correlations[0, 2:]
    return first, total


def aggregated_batch(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aggregated indices of the whole field (Gamboa et al. 2014) from all groups at once with
    np.cov: (first, total), (p,). ``groups`` is (n, p + 2, cells)."""
    rows = groups.shape[1]
    covariances = np.array(
        [np.cov(groups[:, :, cell], rowvar=False) for cell in range(groups.shape[2])]
    )  # (cells, rows, rows), ddof = 1
    variances = np.diagonal(covariances, axis1=1, axis2=2)  # (cells, rows)
    first = np.array(
        [
            covariances[:, 1, k].sum() / ((variances[:, 1] + variances[:, k]) / 2).sum()
            for k in range(2, rows)
        ]
    )
    total = np.array(
        [
            1 - covariances[:, 0, k].sum() / ((variances[:, 0] + variances[:, k]) / 2).sum()
            for k in range(2, rows)
        ]
    )
    return first, total


def ishigami(inputs: np.ndarray, a: float = 7.0, b: float = 0.1) -> np.ndarray:
    """The Ishigami function of inputs (..., 3)."""
    x1, x2, x3 = inputs[..., 0], inputs[..., 1], inputs[..., 2]
    return np.sin(x1) + a * np.sin(x2) ** 2 + b * x3**4 * np.sin(x1)


def ishigami_indices(a: float = 7.0, b: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form (first, total) indices of Ishigami with inputs U(-pi, pi)."""
    pi4 = np.pi**4
    d1 = 0.5 * (1.0 + b * pi4 / 5.0) ** 2
    d2 = a * a / 8.0
    d13 = b * b * pi4 * pi4 * (1.0 / 18.0 - 1.0 / 50.0)
    total_variance = d1 + d2 + d13
    first = np.array([d1, d2, 0.0]) / total_variance
    total = np.array([d1 + d13, d2, d13]) / total_variance
    return first, total


def pick_freeze(
    function: Callable[[np.ndarray], np.ndarray], draw_a: np.ndarray, draw_b: np.ndarray
) -> np.ndarray:
    """Groups (n, p + 2, cells) from input draws A and B of shape (n, cells, p)."""
    p = draw_a.shape[-1]
    rows = [function(draw_a), function(draw_b)]
    for k in range(p):
        mixed = draw_a.copy()
        mixed[..., k] = draw_b[..., k]
        rows.append(function(mixed))
    return np.ascontiguousarray(np.stack(rows, axis=1))


def correlation_batch(
    parameters: np.ndarray, outputs: np.ndarray, confidence: float = 0.95
) -> dict[str, np.ndarray]:
    """Correlation results of (n, p) parameters and (n, cells) outputs, batch: np.corrcoef, its
    Fisher-z interval (scipy's normal quantile), and least squares on standardized data for
    SRC^2 and R^2."""
    n, p = parameters.shape
    r = np.array(
        [[np.corrcoef(parameters[:, k], column)[0, 1] for column in outputs.T] for k in range(p)]
    )
    h = scipy.stats.norm.ppf(0.5 + 0.5 * confidence) / np.sqrt(n - 3)
    standard_x = (parameters - parameters.mean(axis=0)) / parameters.std(axis=0, ddof=1)
    standard_y = (outputs - outputs.mean(axis=0)) / outputs.std(axis=0, ddof=1)
    beta = np.linalg.lstsq(standard_x, standard_y, rcond=None)[0]  # (p, cells)
    residual = standard_y - standard_x @ beta
    return {
        "correlation": r,
        "correlation_ci_low": np.tanh(np.arctanh(r) - h),
        "correlation_ci_high": np.tanh(np.arctanh(r) + h),
        "src_squared": beta**2,
        "regression_r2": 1.0 - (residual**2).sum(axis=0) / (standard_y**2).sum(axis=0),
    }


def correlation_aggregated_batch(
    parameters: np.ndarray, outputs: np.ndarray
) -> tuple[np.ndarray, float]:
    """The whole field's SRC^2 (p,) and R^2 of (n, p) parameters and (n, cells) outputs: the
    per-cell values of `correlation_batch` weighted by each cell's variance (ddof=1)."""
    batch = correlation_batch(parameters, outputs)
    variance = outputs.var(axis=0, ddof=1)
    return (
        (batch["src_squared"] * variance).sum(axis=1) / variance.sum(),
        float((batch["regression_r2"] * variance).sum() / variance.sum()),
    )


def aggregated_half_widths(groups: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Two-pass delta-method half widths of the aggregated (first, total), (p,): each group's
    terms centred on the final means, q_g = sum_cells (y_B - mean)(y_Ck - mean), d_g = half the
    sum of both squared deviations; z sqrt(sum (q - S d)^2) / sum d (total: rows A and C_k)."""
    z = scipy.stats.norm.ppf(0.5 + confidence / 2)
    centred = groups - groups.mean(axis=0)
    widths = []
    for other in (1, 0):
        row = []
        for k in range(groups.shape[1] - 2):
            q = (centred[:, other] * centred[:, k + 2]).sum(axis=-1)
            d = 0.5 * (
                (centred[:, other] ** 2).sum(axis=-1) + (centred[:, k + 2] ** 2).sum(axis=-1)
            )
            ratio = q.sum() / d.sum()
            row.append(z * np.sqrt(((q - ratio * d) ** 2).sum()) / d.sum())
        widths.append(np.array(row))
    return widths[0], widths[1]
