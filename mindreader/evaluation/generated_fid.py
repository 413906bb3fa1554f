"""The FID that Mind Reader reports: StyleGAN2-ADA's `fid50k_full`, as the Mind Reader fork runs it.

What the fork's metric does (StyleGAN2/metrics/metric_utils.py, compute_feature_stats_for_generator
on the mapped test set; read from its source):
- G_ema draws one image per item of the test set, in the set's order, from a random z and random
  noise inputs (G's default), conditioned on that item's predicted embedding as the data loader
  gives it: normalised, not perturbed (the 0.9 / 0.1 perturbation is a training-time step).
- It generates min(test items, 30,000) images (the metric is still named fid50k_full).
- The real statistics come from every item of a dataset (the test set when run with
  `metric_only_test`) at the generator's resolution: the fork's dataset resizes the 425-px stimuli
  to 256 px.
- Inception pool features (2048-d) of the uint8 images, mean and population covariance
  (FeatureStats), Frechet distance.

Here: G_ema draws `n_generated` images, image i conditioned on test sample i mod N (so each test
sample's prediction is used equally often; with n_generated = N each exactly once, as the fork),
z and noise from one seeded generator; the real side is the N test samples' images (a repeated
image counts once per sample, as the dataset's items) at G's resolution, resized as the generator's
training images are; features from pytorch-fid's Inception, which resizes to 299 itself. The
generated images are streamed in batches: only running sums are kept.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from mindreader.evaluation.battery import FeatureSource
from mindreader.generator.data import load_images
from mindreader.generator.reconstruct import run_conditions, to_uint8
from mindreader.generator.store import load_generator
from mindreader.metrics import FeatureMoments, frechet_distance

log = logging.getLogger(__name__)

# evaluation.fid_generated_images: this value generates one image per test sample (the fork's count).
PER_TEST_SAMPLE = "test_set"
# Covariance of both sides: population (ddof 0), as StyleGAN2-ADA's FeatureStats.
DDOF = 0


def generated_image_count(setting: int | str, n_test: int) -> int:
    """The number of images to generate for ``evaluation.fid_generated_images``."""
    if setting == PER_TEST_SAMPLE:
        return n_test
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 2:
        raise ValueError(
            f"evaluation.fid_generated_images must be '{PER_TEST_SAMPLE}' or an integer >= 2, got {setting!r}"
        )
    return setting


@torch.no_grad()
def generated_moments(
    G: torch.nn.Module,  # G_ema, eval mode, on ``device``
    c: torch.Tensor,  # (N, K, D) conditions of the N test samples, as G takes them
    inception: FeatureSource,  # float (B, 3, H, W) in [0, 1] -> {"fid": (B, 2048)}
    n_generated: int,  # images to generate
    batch_size: int,  # images per generator and Inception batch
    seed: int,  # seed of z and the noise inputs
    device: torch.device,
) -> FeatureMoments:
    """Inception feature moments of ``n_generated`` images of G, image i conditioned on c[i mod N];
    deterministic for a given seed and batch size."""
    n_test = c.shape[0]
    if n_test == 0:
        raise ValueError("no test conditions to generate from")
    moments = None
    rng = torch.Generator(device=device).manual_seed(seed)
    noise_shapes = G.synthesis.noise_shapes()
    starts = range(0, n_generated, batch_size)
    for start in tqdm(starts, desc="generated FID", unit="batch", mininterval=10):
        rows = torch.arange(start, min(start + batch_size, n_generated)) % n_test
        z = torch.randn(len(rows), G.z_dim, generator=rng, device=device)
        noise = {
            name: torch.randn(len(rows), 1, res, res, generator=rng, device=device)
            for name, res in noise_shapes.items()
        }
        img = G(z, c[rows].to(device), noise=noise or None)
        features = inception(to_uint8(img).float() / 255.0)["fid"].double().cpu().numpy()
        if moments is None:
            moments = FeatureMoments(features.shape[1])
        moments.add(features)
    return moments


def generated_fid(
    G: torch.nn.Module,  # G_ema, eval mode, on ``device``
    c: torch.Tensor,  # (N, K, D) conditions of the N test samples, as G takes them
    real_features: np.ndarray,  # (N, 2048) Inception features of the N test samples' images
    inception: FeatureSource,  # float (B, 3, H, W) in [0, 1] -> {"fid": (B, 2048)}
    n_generated: int,  # images to generate
    batch_size: int,  # images per generator and Inception batch
    seed: int,  # seed of z and the noise inputs
    device: torch.device,
) -> float:
    """FID between ``n_generated`` images of G (``generated_moments``) and the real features."""
    real = FeatureMoments(real_features.shape[1])
    real.add(real_features)
    fake = generated_moments(G, c, inception, n_generated, batch_size, seed, device)
    return frechet_distance(*fake.mean_cov(DDOF), *real.mean_cov(DDOF))


@torch.no_grad()
def image_features(
    images: torch.Tensor,  # (M, 3, R, R) uint8
    inception: FeatureSource,
    batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """(M, 2048) float64 Inception features of uint8 images, in batches."""
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="test image features", unit="batch", mininterval=10):
        x = images[start : start + batch_size].to(device).float() / 255.0
        out.append(inception(x)["fid"].double().cpu().numpy())
    return np.concatenate(out)


def evaluate_generated_fid(
    run_folder: str | os.PathLike,  # generator run folder (network.json, G_ema.safetensors)
    prediction_files: Sequence[str | os.PathLike],  # the run's test conditions, as reconstruct reads them
    nsd_root: str | os.PathLike,  # NSD tree with the stimuli
    inception: FeatureSource,  # the FID network (mindreader.evaluation.networks.FID_NETWORK)
    n_generated: int | str,  # evaluation.fid_generated_images
    batch_size: int,
    seed: int,
    device: torch.device,
    true_targets: Mapping[str, str | os.PathLike] | None = None,  # the oracle's (reconstruct.run_conditions)
) -> Mapping:
    """The run's generated-sample FID and how it was measured (the metrics JSON's fid_generated);
    with ``true_targets``, of its oracle: conditioned on the test samples' true CLIP embeddings."""
    G, meta = load_generator(run_folder)
    G.to(device)
    nsd_id, c = run_conditions(G, meta, list(prediction_files), run_folder, true_targets)
    count = generated_image_count(n_generated, len(nsd_id))
    unique, inverse = np.unique(nsd_id, return_inverse=True)
    real_images = load_images(nsd_root, unique, G.img_resolution, batch_size)
    real_features = image_features(real_images, inception, batch_size, device)[inverse]
    value = generated_fid(G, c, real_features, inception, count, batch_size, seed, device)
    log.info("generated FID %.3f: %d generated vs %d test samples (%d images)", value, count, len(nsd_id), len(unique))
    return {
        "value": value,
        "n_generated": count,
        "n_real": int(len(nsd_id)),
        "n_real_images": int(len(unique)),
        "resolution": int(G.img_resolution),
        "seed": int(seed),
        "batch_size": int(batch_size),
        "protocol": (
            "StyleGAN2-ADA fid50k_full as the Mind Reader fork runs it: G_ema, random z and noise, image i "
            f"conditioned on test sample i mod N's normalised {'predicted' if true_targets is None else 'TRUE'} "
            "embedding, vs the N test samples' "
            "images at the generator's resolution; pytorch-fid Inception, population covariances"
        ),
    }
