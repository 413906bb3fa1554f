"""Frechet distance at FID's 2048 dimensions: mindreader.metrics against pytorch-fid, same run.

Feature sets of the size of NSD's test set (982 images) have rank-deficient 2048 x 2048
covariances, the case FID meets in this field. Prints each implementation's time, the ratio and
the relative difference of the values. Targets: >= 3x faster, same value within 1e-6 relative.

    .venv/bin/python bench/metrics.py [--n 982] [--dim 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mindreader.evaluation.fid_reference import pytorch_fid_frechet_distance
from mindreader.metrics import feature_stats, frechet_distance, frechet_distance_features


def timed(fn, repeats: int) -> tuple[float, float]:
    """(best wall time in seconds, value) over ``repeats`` calls."""
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=982, help="feature vectors per set (NSD test set: 982)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (FID pool3: 2048)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per implementation (best kept)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    # Inception pool features are non-negative and correlated: rectified mixtures of Gaussians.
    mixing = rng.standard_normal((256, args.dim)) / 16.0
    x = np.maximum(rng.standard_normal((args.n, 256)) @ mixing, 0.0)
    y = np.maximum(rng.standard_normal((args.n, 256)) @ mixing + 0.05, 0.0)
    stats = (*feature_stats(x), *feature_stats(y))

    t_ours, ours = timed(lambda: frechet_distance(*stats), args.repeats)
    t_feat, ours_feat = timed(lambda: frechet_distance_features(x, y), args.repeats)
    t_ref, ref = timed(lambda: pytorch_fid_frechet_distance(*stats), args.repeats)

    print(f"Frechet distance, {args.n} x {args.dim} features per set (best of {args.repeats})")
    print(f"  pytorch-fid (scipy sqrtm)            {t_ref:8.3f} s   value {ref:.10g}")
    print(f"  mindreader frechet_distance (eigh)   {t_ours:8.3f} s   value {ours:.10g}")
    print(f"  mindreader from features (svd)       {t_feat:8.3f} s   value {ours_feat:.10g}")
    print(f"  speed-up eigh vs pytorch-fid: {t_ref / t_ours:.1f}x   (target >= 3x)")
    print(f"  speed-up features vs pytorch-fid: {t_ref / t_feat:.1f}x")
    print(f"  relative difference eigh vs pytorch-fid: {abs(ours - ref) / abs(ref):.2e}   (target <= 1e-6)")
    print(f"  relative difference features vs eigh:    {abs(ours_feat - ours) / abs(ours):.2e}")


if __name__ == "__main__":
    main()
