"""95 % confidence intervals by resampling test images (percentile bootstrap)."""

from __future__ import annotations

from typing import Callable

import numpy as np

CI_LEVEL = 0.95


def resamples(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_items) indices drawn with replacement; the same seed gives the same draws."""
    return np.random.default_rng(seed).integers(0, n_items, size=(n_boot, n_items))


def percentile_ci(values: np.ndarray) -> list[float]:
    """The central CI_LEVEL interval of bootstrap replicates."""
    tail = (1.0 - CI_LEVEL) / 2.0 * 100.0
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), [tail, 100.0 - tail])
    return [float(lo), float(hi)]


def mean_ci(per_image: np.ndarray, n_boot: int, seed: int) -> dict:
    """Mean of per-image scores with its bootstrap CI over test images."""
    per_image = np.asarray(per_image, dtype=np.float64)
    replicates = per_image[resamples(len(per_image), n_boot, seed)].mean(axis=1)
    return {"value": float(per_image.mean()), "ci95": percentile_ci(replicates)}


def ratio_ci(numerator: np.ndarray, denominator: np.ndarray, n_boot: int, seed: int) -> dict:
    """sum(numerator) / sum(denominator) over test images, with its bootstrap CI (e.g. retrieval
    hits over pool appearances)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    idx = resamples(len(numerator), n_boot, seed)
    replicates = numerator[idx].sum(axis=1) / np.maximum(denominator[idx].sum(axis=1), 1.0)
    return {"value": float(numerator.sum() / max(denominator.sum(), 1.0)), "ci95": percentile_ci(replicates)}


def statistic_ci(statistic: Callable[[np.ndarray], float], n_items: int, n_boot: int, seed: int) -> dict:
    """A statistic of a whole set of paired images (FID: statistic(indices) on the resampled
    pairs), with its bootstrap CI."""
    value = statistic(np.arange(n_items))
    replicates = [statistic(idx) for idx in resamples(n_items, n_boot, seed)]
    return {"value": float(value), "ci95": percentile_ci(replicates)}
