"""The metric battery as data, and its computation on one set of paired images.

Each metric names the features it needs (from a feature network, or pixels, or the mapper's
predicted embeddings) and how they are scored. `evaluate_images` computes every metric of the
paired images whose features are available and reports the others as missing with the reason;
the FID of generated samples needs the generator and comes from `mindreader.evaluation.generated_fid`.

Each image is resized once, from its own size straight to the size each metric takes: PixCorr
and SSIM resize to `image_side`, each network resizes its input itself (pytorch-fid's Inception
to 299, as pytorch-fid does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from tqdm import tqdm

from mindreader import metrics
from mindreader.evaluation.bootstrap import half_sample_ci, mean_ci, ratio_ci

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    key: str  # name in the per-run JSON and the tables' CSV
    label: str  # column header in the tables
    kind: str  # frechet | generated_frechet | two_way | corr_distance | pixcorr | ssim | retrieval
    feature: str  # feature name a network gives ("fid", "clip", "alex2", ...); for retrieval the
    # mapper target and direction ("img:image"); empty for pixel metrics
    higher_is_better: bool  # the tables mark the direction
    percent: bool = False  # shown x100 in the tables (identification, retrieval)


METRICS: tuple[Metric, ...] = (
    # FID of the N reconstructions vs their N ground-truth images (ours), and StyleGAN2-ADA's
    # fid50k_full protocol that Mind Reader reports (generated samples vs the test images).
    Metric("fid_paired", "FID (paired)", "frechet", "fid", higher_is_better=False),
    Metric("fid_generated", "FID (generated)", "generated_frechet", "fid", higher_is_better=False),
    Metric("fd_clip", "FD_CLIP", "frechet", "clip", higher_is_better=False),
    Metric("pixcorr", "PixCorr", "pixcorr", "", higher_is_better=True),
    Metric("ssim", "SSIM", "ssim", "", higher_is_better=True),
    Metric("alex2", "Alex2", "two_way", "alex2", higher_is_better=True, percent=True),
    Metric("alex5", "Alex5", "two_way", "alex5", higher_is_better=True, percent=True),
    Metric("incep", "Incep", "two_way", "incep", higher_is_better=True, percent=True),
    Metric("clip", "CLIP", "two_way", "clip", higher_is_better=True, percent=True),
    Metric("eff", "Eff", "corr_distance", "eff", higher_is_better=False),
    Metric("swav", "SwAV", "corr_distance", "swav", higher_is_better=False),
    Metric("img_ret", "img ret", "retrieval", "img:image", higher_is_better=True, percent=True),
    Metric("brain_ret", "brain ret", "retrieval", "img:brain", higher_is_better=True, percent=True),
    Metric("cap_ret", "cap ret", "retrieval", "cap:image", higher_is_better=True, percent=True),
    Metric("cap_brain_ret", "cap brain ret", "retrieval", "cap:brain", higher_is_better=True, percent=True),
)
METRIC_BY_KEY = {m.key: m for m in METRICS}
# evaluation.fid_protocols: which FIDs a run reports (metric key of each).
FID_PROTOCOLS = {"paired": "fid_paired", "generated": "fid_generated"}

# A feature source: float images (B, 3, H, W) in [0, 1] -> {feature name: (B, D)}.
FeatureSource = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class BatteryConfig:
    n_boot: int  # bootstrap resamples for the per-image metrics
    n_boot_fd: int  # half-samples for the Frechet distances' intervals (each a full FD)
    batch_size: int  # images per batch through a network
    image_side: int  # side of the pixel comparison (PixCorr, SSIM); networks resize to their own
    retrieval_pool: int  # images per retrieval pool
    retrieval_draws: int  # retrieval pools drawn
    seed: int  # seed of the bootstrap and the retrieval pools
    fid_protocols: tuple[str, ...]  # FIDs to report: paired and/or generated (FID_PROTOCOLS)
    pixel_resize_via: tuple[int, ...] = ()  # sides PixCorr/SSIM's images pass through before image_side


def extract_features(
    sources: Mapping[str, FeatureSource],  # name -> feature source
    images: np.ndarray,  # (N, H, W, 3) uint8 or float in [0, 1]
    cfg: BatteryConfig,
    device: torch.device,
    what: str,  # "ground truth" / "reconstructions", for the progress bar
) -> dict[str, np.ndarray]:
    """Every feature every source gives, as float32 (N, D) arrays (the Frechet distance computes
    in float64 itself; correlations are exact enough in float32). Images go to each source at
    their own size: the source resizes them once, to its input size."""
    chunks: dict[str, list[np.ndarray]] = {}
    starts = range(0, len(images), cfg.batch_size)
    for start in tqdm(starts, desc=f"features of {what}", unit="batch", disable=not sources):
        batch = metrics.unit_float_images(images[start : start + cfg.batch_size])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(device)
        for source in sources.values():
            with torch.no_grad():
                for name, feats in source(x).items():
                    chunks.setdefault(name, []).append(feats.flatten(1).float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def evaluate_images(
    gt: np.ndarray,  # (N, H, W, 3) ground-truth test images
    rec: np.ndarray,  # (N, H, W, 3) reconstructions of the same images, same order
    sources: Mapping[str, FeatureSource],  # loaded feature sources
    unavailable: Mapping[str, str],  # feature name -> why its source is missing
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray] | str],  # target -> (pred, true) or why missing
    cfg: BatteryConfig,
    device: torch.device,
) -> dict[str, dict]:
    """Every metric of METRICS but the generated-sample FID: {"value", "ci95", "per_image"?} or
    {"missing": reason}."""
    if gt.shape[0] != rec.shape[0]:
        raise ValueError(f"{gt.shape[0]} ground-truth images but {rec.shape[0]} reconstructions")
    n = gt.shape[0]
    gt_feats = extract_features(sources, gt, cfg, device, "ground truth")
    rec_feats = extract_features(sources, rec, cfg, device, "reconstructions")
    results: dict[str, dict] = {}
    for metric in METRICS:
        if metric.kind == "generated_frechet":
            continue
        if metric.key == FID_PROTOCOLS["paired"] and "paired" not in cfg.fid_protocols:
            results[metric.key] = {"missing": not_requested("paired")}
            continue
        if metric.kind == "retrieval":
            results[metric.key] = _retrieval(metric, predictions, cfg)
            continue
        if metric.kind in ("pixcorr", "ssim"):
            per_image = (metrics.pixcorr_per_image if metric.kind == "pixcorr" else metrics.ssim_per_image)(
                gt, rec, cfg.image_side, cfg.pixel_resize_via
            )
            results[metric.key] = {**mean_ci(per_image, cfg.n_boot, cfg.seed), "per_image": per_image}
            continue
        if metric.feature not in gt_feats:
            results[metric.key] = {"missing": unavailable.get(metric.feature, f"no network gives '{metric.feature}'")}
            continue
        a, b = gt_feats[metric.feature], rec_feats[metric.feature]
        if metric.kind == "frechet":
            results[metric.key] = half_sample_ci(
                lambda idx: metrics.frechet_distance_features(a[idx], b[idx]), n, cfg.n_boot_fd, cfg.seed
            )
            continue
        scorer = metrics.two_way_per_image if metric.kind == "two_way" else metrics.correlation_distance_per_image
        per_image = scorer(a, b)
        results[metric.key] = {**mean_ci(per_image, cfg.n_boot, cfg.seed), "per_image": per_image}
    return results


def not_requested(protocol: str) -> str:
    return f"not requested (evaluation.fid_protocols has no '{protocol}')"


def _retrieval(metric: Metric, predictions: Mapping[str, tuple[np.ndarray, np.ndarray] | str], cfg: BatteryConfig) -> dict:
    target, direction = metric.feature.split(":")
    pair = predictions.get(target, f"no predictions of the '{target}' mapper")
    if isinstance(pair, str):
        return {"missing": pair}
    hits = metrics.retrieval_hits(*pair, pool_size=cfg.retrieval_pool, draws=cfg.retrieval_draws, seed=cfg.seed)
    pool = min(cfg.retrieval_pool, len(pair[0]))
    return {
        **ratio_ci(hits[direction], hits["appearances"], cfg.n_boot, cfg.seed),
        "chance": 1.0 / pool,
        "pool": pool,
        "draws": cfg.retrieval_draws,
    }
