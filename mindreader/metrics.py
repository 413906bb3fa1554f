"""Image-reconstruction metrics of the field (../shared/docs/evaluation.md), as plain array functions.

Everything here works on NumPy arrays and knows nothing about networks or files:
- distribution distances: `frechet_distance` (FID, FD_CLIP) from means and covariances, and
  `frechet_distance_features` straight from two feature sets; `FeatureMoments` accumulates a
  mean and covariance over batches (the generated-image FID);
- paired scores per test image, whose mean is the reported number: `two_way_per_image`
  (MindEye's two-way identification), `correlation_distance_per_image` (EffNet-B, SwAV),
  `pixcorr_per_image`, `ssim_per_image`;
- embedding retrieval (Mind Reader's protocol: top-1 among random pools of 300, 30 draws).

Images are (N, H, W, 3), uint8 or float in [0, 1]. PixCorr and SSIM compare them at 425 x 425 as
the field does (NSD's stimulus size), resizing bilinearly when they are not.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.linalg
import scipy.ndimage
import torch
import torch.nn.functional as F

# Side at which the field compares pixels (NSD stimuli are 425 x 425).
EVAL_SIDE = 425
# Luminance weights of skimage.color.rgb2gray (ITU-R 709), which Brain-Diffuser and MindEye used.
GRAY_WEIGHTS = np.array([0.2125, 0.7154, 0.0721])
# SSIM as Wang et al. (2004): Gaussian window, sigma 1.5 truncated at 3.5 sigma (11 x 11).
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
# Images per chunk in the pixel metrics: bounds memory at 425 x 425 in float64.
PIXEL_CHUNK = 32


# --- Frechet distance ---------------------------------------------------------------------------


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), exactly.

    tr(sqrtm(S1 S2)) equals the trace of the square root of the symmetric PSD matrix
    S1^1/2 S2 S1^1/2 (the two are similar), so two symmetric eigen-decompositions give it exactly,
    also when the covariances are singular (fewer samples than dimensions), where
    `scipy.linalg.sqrtm` returns complex noise or fails.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    for name, arr, shape in (("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d)), ("sigma2", sigma2, (d, d))):
        if arr.shape != shape:
            raise ValueError(f"frechet_distance: {name} has shape {arr.shape}, expected {shape}")
    evals1, evecs1 = scipy.linalg.eigh(_symmetric(sigma1))
    sqrt1 = (evecs1 * np.sqrt(_nonnegative(evals1))) @ evecs1.T
    middle = scipy.linalg.eigh(_symmetric(sqrt1 @ sigma2 @ sqrt1), eigvals_only=True)
    tr_covmean = np.sqrt(_nonnegative(middle)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample covariance (ddof 1, as pytorch-fid) of (N, D) features."""
    features = _features(features, "features")
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


class FeatureMoments:
    """Mean and covariance of feature vectors that arrive batch by batch, from float64 running sums
    of x and x x^T (as StyleGAN2-ADA's FeatureStats), so that the features of 50k generated images
    are never held together."""

    def __init__(self, dim: int):  # feature width
        self.n = 0
        self.total = np.zeros(dim)
        self.outer = np.zeros((dim, dim))

    def add(self, features: np.ndarray) -> None:
        """Add (B, dim) feature vectors."""
        x = _features(features, "features")
        if x.shape[1] != self.total.shape[0]:
            raise ValueError(f"features of width {x.shape[1]} added to moments of width {self.total.shape[0]}")
        self.n += x.shape[0]
        self.total += x.sum(axis=0)
        self.outer += x.T @ x

    def mean_cov(self, ddof: int) -> tuple[np.ndarray, np.ndarray]:
        """Mean and covariance with ``ddof`` (0: population, StyleGAN2-ADA; 1: sample, pytorch-fid)."""
        if self.n < 2:
            raise ValueError(f"need at least 2 feature vectors for a covariance, got {self.n}")
        mean = self.total / self.n
        return mean, (self.outer - self.n * np.outer(mean, mean)) / (self.n - ddof)


def frechet_distance_features(x: np.ndarray, y: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to feature sets x (N1, D) and y (N2, D).

    When there are fewer samples than dimensions the covariances are low-rank: with centred
    A = x - mean, B = y - mean, the nonzero eigenvalues of S1 S2 are the squared singular values
    of A B^T / sqrt((N1 - 1)(N2 - 1)), so the trace term is a nuclear norm of an N1 x N2 matrix,
    exact and much cheaper than a D x D decomposition (this is what bootstraps use).
    """
    x, y = _features(x, "x"), _features(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature sets differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    if min(x.shape[0], y.shape[0]) >= x.shape[1]:
        return frechet_distance(*feature_stats(x), *feature_stats(y))
    if min(x.shape[0], y.shape[0]) < 2:
        raise ValueError("need at least 2 feature vectors per set for a covariance")
    a, b = x - x.mean(axis=0), y - y.mean(axis=0)
    scale = np.sqrt((x.shape[0] - 1) * (y.shape[0] - 1))
    tr_covmean = scipy.linalg.svdvals(a @ b.T).sum() / scale
    diff = x.mean(axis=0) - y.mean(axis=0)
    trace1 = (a * a).sum() / (x.shape[0] - 1)
    trace2 = (b * b).sum() / (y.shape[0] - 1)
    return float(diff @ diff + trace1 + trace2 - 2.0 * tr_covmean)


# --- Feature-based paired scores -------------------------------------------------------------


def two_way_per_image(gt_feats: np.ndarray, pred_feats: np.ndarray) -> np.ndarray:
    """MindEye's two-way identification, per reconstruction j: the fraction of the other N - 1
    ground-truth images i whose correlation with reconstruction j is below that of its own
    ground truth, r[i, j] < r[j, j] (r = Pearson correlation of flattened features)."""
    gt, pred = _paired_features(gt_feats, pred_feats)
    n = gt.shape[0]
    if n < 2:
        raise ValueError("two-way identification needs at least 2 images")
    r = _standardise(gt) @ _standardise(pred).T / gt.shape[1]  # r[i, j] = corr(gt_i, pred_j)
    wins = (r < np.diag(r)[None, :]).sum(axis=0)
    return wins / (n - 1)


def two_way_identification(gt_feats: np.ndarray, pred_feats: np.ndarray) -> float:
    """Mean two-way identification (a fraction; chance 0.5, perfect 1.0)."""
    return float(two_way_per_image(gt_feats, pred_feats).mean())


def correlation_distance_per_image(gt_feats: np.ndarray, pred_feats: np.ndarray) -> np.ndarray:
    """1 - Pearson r between each ground truth's features and its reconstruction's (EffNet-B, SwAV)."""
    gt, pred = _paired_features(gt_feats, pred_feats)
    return 1.0 - (_standardise(gt) * _standardise(pred)).sum(axis=1) / gt.shape[1]


# --- Pixel metrics ----------------------------------------------------------------------------


def pixcorr_per_image(
    gt: np.ndarray, rec: np.ndarray, side: int = EVAL_SIDE, via: Sequence[int] = ()
) -> np.ndarray:
    """Pearson r between the flattened RGB pixels of each pair, both at side x side (resized
    through the sides ``via`` first, if any)."""
    _check_pairs(gt, rec)
    scores = []
    for start in range(0, len(gt), PIXEL_CHUNK):
        a = resize_images(gt[start : start + PIXEL_CHUNK], side, via).reshape(-1, side * side * 3)
        b = resize_images(rec[start : start + PIXEL_CHUNK], side, via).reshape(-1, side * side * 3)
        # float32 pixels, float64 sums: exact enough (~1e-7) and half the memory traffic
        a -= a.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
        b -= b.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
        cross = np.einsum("ij,ij->i", a, b, dtype=np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64) * np.einsum("ij,ij->i", b, b, dtype=np.float64))
        scores.append(np.divide(cross, norms, out=np.zeros_like(cross), where=norms > 0))
    return np.concatenate(scores)


def pixcorr(gt: np.ndarray, rec: np.ndarray) -> float:
    """Mean PixCorr over image pairs."""
    return float(pixcorr_per_image(gt, rec).mean())


def ssim_per_image(gt: np.ndarray, rec: np.ndarray, side: int = EVAL_SIDE, via: Sequence[int] = ()) -> np.ndarray:
    """True 2-D SSIM of the grayscale images at side x side (through the sides ``via``, if any): Gaussian weights (sigma 1.5),
    population covariance, data range 1, mean over the map without its 5-pixel border (the
    definition of scikit-image >= 0.19 with gaussian_weights=True, use_sample_covariance=False)."""
    _check_pairs(gt, rec)
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    c1, c2 = SSIM_K1**2, SSIM_K2**2  # data range 1

    def smooth(maps: np.ndarray) -> np.ndarray:
        return scipy.ndimage.gaussian_filter(
            maps, sigma=(0, SSIM_SIGMA, SSIM_SIGMA), truncate=SSIM_TRUNCATE, mode="reflect"
        )

    scores = []
    for start in range(0, len(gt), PIXEL_CHUNK):
        x = resize_images(gt[start : start + PIXEL_CHUNK], side, via).astype(np.float64) @ GRAY_WEIGHTS
        y = resize_images(rec[start : start + PIXEL_CHUNK], side, via).astype(np.float64) @ GRAY_WEIGHTS
        ux, uy = smooth(x), smooth(y)
        vx, vy, vxy = smooth(x * x) - ux * ux, smooth(y * y) - uy * uy, smooth(x * y) - ux * uy
        ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
        scores.append(ssim_map[:, radius:-radius, radius:-radius].mean(axis=(1, 2)))
    return np.concatenate(scores)


def ssim(gt: np.ndarray, rec: np.ndarray) -> float:
    """Mean SSIM over image pairs."""
    return float(ssim_per_image(gt, rec).mean())


def unit_float_images(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 or float in [0, 1] -> float32 (N, H, W, 3) in [0, 1], at their own size."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape (N, H, W, 3), got {images.shape}")
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)


def resize_images(images: np.ndarray, side: int, via: Sequence[int] = ()) -> np.ndarray:
    """(N, H, W, 3) uint8 or float in [0, 1] -> float32 (N, side, side, 3) in [0, 1], bilinear
    with antialiasing, through each side of ``via`` in turn first (MindEye's evaluation: via
    256); each step is a no-op when the images already have its size."""
    x = unit_float_images(images)
    for step in (*via, side):
        if x.shape[1:3] != (step, step):
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2)
            t = F.interpolate(t, size=(step, step), mode="bilinear", align_corners=False, antialias=True)
            x = t.clamp(0.0, 1.0).permute(0, 2, 3, 1).numpy()
    return x


# --- Embedding retrieval -----------------------------------------------------------------------


def retrieval_hits(
    pred: np.ndarray,  # (N, D) predicted embeddings (brain side), in test order
    target: np.ndarray,  # (N, D) true embeddings of the same test images
    pool_size: int = 300,  # images per random pool (clipped to N)
    draws: int = 30,  # random pools
    seed: int = 0,  # seed of the pool draws
) -> dict[str, np.ndarray]:
    """Top-1 retrieval by cosine similarity in random pools (Mind Reader's protocol).

    Returns per test image how often it was in a pool (`appearances`) and how often it was
    retrieved top-1 in each direction: `image` (its brain -> its image among the pool's
    images) and `brain` (its image -> its brain among the pool's brains). The protocol's number
    is hits.sum() / appearances.sum(); per-image counts let a bootstrap resample test images.
    """
    pred, target = _paired_features(pred, target)
    n = pred.shape[0]
    pool_size = min(pool_size, n)
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True).clip(1e-12)
    t = target / np.linalg.norm(target, axis=1, keepdims=True).clip(1e-12)
    rng = np.random.default_rng(seed)
    appearances = np.zeros(n, dtype=np.int64)
    image_hits = np.zeros(n, dtype=np.int64)
    brain_hits = np.zeros(n, dtype=np.int64)
    for _ in range(draws):
        pool = rng.choice(n, size=pool_size, replace=False)
        sim = p[pool] @ t[pool].T  # sim[a, b] = cos(brain a, image b)
        own = np.arange(pool_size)
        appearances[pool] += 1
        image_hits[pool] += sim.argmax(axis=1) == own
        brain_hits[pool] += sim.argmax(axis=0) == own
    return {"appearances": appearances, "image": image_hits, "brain": brain_hits}


# --- helpers ------------------------------------------------------------------------------------


def _nonnegative(evals: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with rounding noise set to 0: those below the rank tolerance
    (size x machine epsilon x the largest), whose square roots would otherwise add up."""
    tol = evals.shape[0] * np.finfo(np.float64).eps * max(float(np.abs(evals).max(initial=0.0)), 1e-300)
    return np.where(evals > tol, evals, 0.0)


def _symmetric(matrix: np.ndarray) -> np.ndarray:
    return (matrix + matrix.T) / 2.0


def _features(features: np.ndarray, name: str) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"{name}: expected (N, D) features, got shape {features.shape}")
    return features


def _paired_features(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # float32 features stay float32 (AlexNet's conv2 maps of 1,000 images are ~0.7 GB that way)
    dtype = np.float32 if np.asarray(a).dtype == np.float32 and np.asarray(b).dtype == np.float32 else np.float64
    a = np.asarray(a, dtype=dtype).reshape(len(a), -1)
    b = np.asarray(b, dtype=dtype).reshape(len(b), -1)
    if a.shape != b.shape:
        raise ValueError(f"paired features differ in shape: {a.shape} vs {b.shape}")
    return a, b


def _standardise(rows: np.ndarray) -> np.ndarray:
    """Each row to mean 0, population std 1 (a constant row stays 0), so mean(x * y) is Pearson r."""
    rows = np.asarray(rows)
    rows = rows if rows.dtype in (np.float32, np.float64) else rows.astype(np.float64)
    centred = rows - rows.mean(axis=1, keepdims=True)
    std = centred.std(axis=1, keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 0)


def _check_pairs(gt: np.ndarray, rec: np.ndarray) -> None:
    if len(gt) != len(rec):
        raise ValueError(f"{len(gt)} ground-truth images but {len(rec)} reconstructions")
    if len(gt) == 0:
        raise ValueError("no images to compare")
