"""95 % confidence intervals by resampling test images.

Per-image metrics (means and ratios over images): the percentile bootstrap. Statistics of a
whole set that resampling with replacement biases, as a Frechet distance (duplicated images make
the two sets' covariances noisier, which inflates the distance, so that every bootstrap replicate
can lie above the value): half-sampling, `half_sample_ci`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

CI_LEVEL = 0.95
# How the tables and metrics JSONs name the intervals.
CI_METHODS = (
    "percentile bootstrap for per-image metrics; half-sampling (N/2 images without replacement, "
    "centred on the value) for Frechet distances"
)


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


def half_samples(n_items: int, n_draws: int, seed: int) -> np.ndarray:
    """(n_draws, n_items // 2) indices, each row drawn without replacement."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(n_items)[: n_items // 2] for _ in range(n_draws)])


def half_sample_ci(statistic: Callable[[np.ndarray], float], n_items: int, n_draws: int, seed: int) -> dict:
    """A statistic of a whole set of paired images (a Frechet distance: statistic(indices) of
    the chosen pairs) with a half-sampling 95 % interval: the statistic of ``n_draws`` halves of
    the images, drawn without replacement, centred on its value.

    A half without replacement duplicates no image, and the spread of a half's statistic about
    the full set's equals the spread of the full set's statistic over draws of N images (exactly
    for a mean: var = s^2 (1/m - 1/N) = s^2 / N at m = N/2). The halves' own finite-sample bias
    (a Frechet distance of N/2 images exceeds that of N) is removed by centring the halves'
    percentiles on their mean, so the interval describes how the N-image value varies with the
    test images and contains it.
    """
    value = float(statistic(np.arange(n_items)))
    replicates = np.array([statistic(idx) for idx in half_samples(n_items, n_draws, seed)], dtype=np.float64)
    lo, hi = percentile_ci(replicates - replicates.mean())
    return {"value": value, "ci95": [value + lo, value + hi]}
