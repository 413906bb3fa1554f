"""Simulated brains of the synthetic NSD: anatomy, voxel tuning, and single-trial betas.

Each subject has a brain (an ellipsoid in the volume) with an `nsdgeneral` ROI at its back. An
ROI voxel responds to a fixed random mix of
- low-level features: the image pooled on a GRID x GRID retinotopic grid per colour channel,
  seen through the voxel's Gaussian population receptive field (its centre follows the voxel's
  place in the ROI, as retinotopic maps do) and a colour tuning;
- high-level features of the scene: counts of each shape kind and colour and the shape count.
Posterior voxels lean low-level with small receptive fields, anterior ones high-level with large
ones. Responses are in units of trial noise x sqrt(snr): each trial adds noise of variance 1/snr
(part of it shared across voxels, as real fMRI noise is) to a stimulus-driven signal whose
variance over the subject's images is the voxel's reliability (mean 1), so a voxel's SNR is
snr x reliability. Each session shifts every voxel's mean and gain. Voxels outside the ROI
carry noise only. Betas are percent signal change x 300 as int16, 0 outside the brain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.ndimage import gaussian_filter

from mindreader.synth.scenes import COLOURS, KINDS, MAX_SHAPES, Scene

# Side of the retinotopic grid the images are pooled on.
GRID = 8
# Fraction of the noise variance carried by a few whole-brain components (the rest is per voxel).
SHARED_NOISE_FRACTION = 0.3
SHARED_NOISE_COMPONENTS = 4
# Per-session, per-voxel shift of the mean and multiplicative gain (in signal units).
SESSION_OFFSET_SD = 0.5
SESSION_GAIN_SD = 0.1
# Voxel mean response (signal units) and amplitude (percent signal change per signal unit).
MEAN_RESPONSE = (0.5, 0.5)
AMPLITUDE_PSC = 1.0
AMPLITUDE_LOG_SD = 0.3
# ROI voxels differ in how reliably they respond: a voxel's SNR is snr times a Gamma draw of mean 1
# with this shape (1: exponential, many weak voxels and a few strong ones, as in NSD's ncsnr maps).
RELIABILITY_SHAPE = 1.0
# Share of high-level features a voxel is tuned to.
HIGH_LEVEL_DENSITY = 0.4
# NSD stores percent signal change x 300 as int16.
BETA_SCALE = 300


def scene_features(scenes: list[Scene]) -> np.ndarray:
    """High-level features (N, F): count of each kind, count of each shape colour, one-hot shape count."""
    kinds = {k: i for i, k in enumerate(KINDS)}
    colours = {c: len(KINDS) + i for i, c in enumerate(COLOURS)}
    count_base = len(KINDS) + len(COLOURS)
    features = np.zeros((len(scenes), count_base + MAX_SHAPES), dtype=np.float64)
    for n, scene in enumerate(scenes):
        for shape in scene.shapes:
            features[n, kinds[shape.kind]] += 1
            features[n, colours[shape.colour]] += 1
        features[n, count_base + len(scene.shapes) - 1] = 1
    return features


def pooled_pixels(images: np.ndarray) -> np.ndarray:
    """Low-level features (N, GRID * GRID * 3): mean of each colour channel in each grid cell, in [0, 1].

    Cells split the side as evenly as it allows, so any side of at least GRID pixels works.
    """
    n, side = images.shape[0], images.shape[1]
    if images.ndim != 4 or images.shape[2] != side or images.shape[3] != 3 or side < GRID:
        raise ValueError(f"images must be (N, side, side, 3) with side >= {GRID}, got {images.shape}")
    starts = np.linspace(0, side, GRID + 1).round().astype(int)
    widths = np.diff(starts)
    sums = np.add.reduceat(np.add.reduceat(images.astype(np.float64), starts[:-1], axis=1), starts[:-1], axis=2)
    pooled = sums / (widths[:, None] * widths[None, :])[None, :, :, None] / 255.0
    return pooled.reshape(n, GRID * GRID * 3)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    field = gaussian_filter(rng.standard_normal(shape), sigma)
    return field / field.std()


def make_anatomy(rng: np.random.Generator, volume_shape: tuple[int, int, int], roi_voxels: int) -> np.ndarray:
    """The nsdgeneral mask (X, Y, Z) int16: -1 outside the brain, 0 in the brain, 1 in the ROI.

    The brain is a slightly irregular ellipsoid filling most of the volume; the ROI, about
    ``roi_voxels`` voxels (within 8%), is the irregular blob of brain voxels nearest the back (low Y).
    """
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in volume_shape], indexing="ij")
    axes = 0.95 * rng.uniform(0.92, 1.0, size=3)
    shift = rng.uniform(-0.04, 0.04, size=3)
    radius = np.sqrt(sum(((g - s) / a) ** 2 for g, s, a in zip(grids, shift, axes)))
    brain = radius + 0.05 * _smooth_field(rng, volume_shape, 2.0) <= 1.0
    n_roi = int(round(roi_voxels * rng.uniform(0.92, 1.08)))
    n_brain = int(brain.sum())
    if n_brain <= n_roi:
        raise ValueError(
            f"synthetic: volume_shape {list(volume_shape)} holds a brain of {n_brain} voxels, too few for an ROI "
            f"of {n_roi}; enlarge volume_shape or lower roi_voxels"
        )
    x, y, z = grids
    closeness = -np.sqrt(x**2 + 2 * (y + 0.8) ** 2 + (z + 0.1) ** 2) + 0.3 * _smooth_field(rng, volume_shape, 1.5)
    closeness[~brain] = -np.inf
    roi_flat = np.argsort(-closeness, axis=None, kind="stable")[:n_roi]
    mask = np.where(brain, 0, -1).astype(np.int16)
    mask.flat[roi_flat] = 1
    return mask


@dataclass(frozen=True)
class VoxelTuning:
    """What each ROI voxel (canonical order) responds to."""

    low_weights: np.ndarray  # (GRID * GRID * 3, n_roi): pRF x colour tuning on pooled pixels
    high_weights: np.ndarray  # (F, n_roi): weights on scene_features
    low_share: np.ndarray  # (n_roi,) share of signal variance from low-level features
    reliability: np.ndarray  # (n_roi,) the voxel's SNR relative to the configured snr (mean 1)
    prf_centre: np.ndarray  # (n_roi, 2) receptive field centre (x, y) in image fractions
    prf_size: np.ndarray  # (n_roi,) receptive field sd in image fractions


def make_tuning(rng: np.random.Generator, mask: np.ndarray, n_high: int) -> VoxelTuning:
    """Random tuning of the ROI voxels of ``mask``, smooth over the ROI like a visual cortex map."""
    coords = np.argwhere(mask > 0).astype(np.float64)
    span = np.ptp(coords, axis=0)
    rel = (coords - coords.min(axis=0)) / np.where(span > 0, span, 1)
    n_roi = len(coords)
    # posterior (low Y) voxels are low-level; anterior ones high-level
    low_share = np.clip(1.0 - rel[:, 1] + rng.normal(0, 0.15, n_roi), 0.1, 0.9)
    # retinotopy: X maps to the horizontal and Z (upside down) to the vertical visual field
    prf_centre = np.clip(np.stack([rel[:, 0], 1.0 - rel[:, 2]], axis=1) + rng.normal(0, 0.08, (n_roi, 2)), 0, 1)
    prf_size = 0.08 + 0.2 * (1.0 - low_share) * rng.uniform(0.7, 1.3, n_roi)
    cell_centres = (np.arange(GRID) + 0.5) / GRID
    cx, cy = np.meshgrid(cell_centres, cell_centres, indexing="xy")  # (GRID rows = y, GRID cols = x)
    dist2 = (cx.reshape(-1, 1) - prf_centre[:, 0]) ** 2 + (cy.reshape(-1, 1) - prf_centre[:, 1]) ** 2
    prf = np.exp(-dist2 / (2 * prf_size**2))
    prf /= prf.sum(axis=0)
    colour_tuning = rng.normal(0, 1, (3, n_roi)) + 0.5
    low_weights = (prf[:, None, :] * colour_tuning[None, :, :]).reshape(GRID * GRID * 3, n_roi)
    high_weights = rng.normal(0, 1, (n_high, n_roi)) * (rng.random((n_high, n_roi)) < HIGH_LEVEL_DENSITY)
    reliability = rng.gamma(RELIABILITY_SHAPE, 1 / RELIABILITY_SHAPE, n_roi)
    return VoxelTuning(low_weights, high_weights, low_share, reliability, prf_centre, prf_size)


def _standardise(x: np.ndarray) -> np.ndarray:
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1)


def stimulus_signal(tuning: VoxelTuning, low_features: np.ndarray, high_features: np.ndarray) -> np.ndarray:
    """(N, n_roi) stimulus-driven responses: variance over the N images = each voxel's reliability."""
    low = _standardise(low_features @ tuning.low_weights)
    high = _standardise(high_features @ tuning.high_weights)
    mixed = _standardise(np.sqrt(tuning.low_share) * low + np.sqrt(1 - tuning.low_share) * high)
    return mixed * np.sqrt(tuning.reliability)


@dataclass(frozen=True)
class Brain:
    """A subject's simulated brain, ready to produce one session of betas at a time."""

    mask: np.ndarray  # (X, Y, Z) int16 nsdgeneral
    tuning: VoxelTuning
    amplitude: np.ndarray  # (n_brain,) percent signal change per signal unit
    mean: np.ndarray  # (n_brain,) mean response, signal units
    noise_loadings: np.ndarray  # (n_brain, SHARED_NOISE_COMPONENTS), unit rows

    @property
    def brain_flat(self) -> np.ndarray:
        """Flat (C-order) indices of the brain voxels: canonical order, as boolean indexing gives."""
        return np.flatnonzero(self.mask.ravel() >= 0)

    @property
    def roi_in_brain(self) -> np.ndarray:
        """Positions of the ROI voxels among the brain voxels."""
        return np.flatnonzero(self.mask.ravel()[self.brain_flat] > 0)

    def voxel_table(self) -> pd.DataFrame:
        """One row per ROI voxel in canonical order: its (x, y, z) and what it responds to."""
        xyz = np.argwhere(self.mask > 0)
        t = self.tuning
        return pd.DataFrame(
            {
                "x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
                "low_share": t.low_share, "reliability": t.reliability,
                "prf_x": t.prf_centre[:, 0], "prf_y": t.prf_centre[:, 1], "prf_size": t.prf_size,
                "amplitude_psc": self.amplitude[self.roi_in_brain],
            }
        )


def make_brain(rng: np.random.Generator, volume_shape: tuple[int, int, int], roi_voxels: int, n_high: int) -> Brain:
    mask = make_anatomy(rng, volume_shape, roi_voxels)
    tuning = make_tuning(rng, mask, n_high)
    n_brain = int((mask >= 0).sum())
    amplitude = AMPLITUDE_PSC * np.exp(rng.normal(0, AMPLITUDE_LOG_SD, n_brain))
    mean = rng.normal(*MEAN_RESPONSE, n_brain)
    loadings = rng.normal(0, 1, (n_brain, SHARED_NOISE_COMPONENTS))
    loadings /= np.linalg.norm(loadings, axis=1, keepdims=True)
    return Brain(mask, tuning, amplitude, mean, loadings)


def session_betas(rng: np.random.Generator, brain: Brain, signal: np.ndarray, snr: float) -> np.ndarray:
    """One session of int16 betas (X, Y, Z, T) given the (T, n_roi) stimulus signal of its trials."""
    n_trials = signal.shape[0]
    n_brain = len(brain.amplitude)
    offset = rng.normal(0, SESSION_OFFSET_SD, n_brain)
    gain = 1 + rng.normal(0, SESSION_GAIN_SD, n_brain)
    # float32 from here: the noise is most of the work, and int16 betas need no more precision
    shared = rng.standard_normal((n_trials, SHARED_NOISE_COMPONENTS), dtype=np.float32) @ brain.noise_loadings.T.astype(np.float32)
    response = rng.standard_normal((n_trials, n_brain), dtype=np.float32)
    response *= np.float32(np.sqrt((1 - SHARED_NOISE_FRACTION) / snr))
    response += np.float32(np.sqrt(SHARED_NOISE_FRACTION / snr)) * shared
    response += (brain.mean + offset).astype(np.float32)
    roi = brain.roi_in_brain
    response[:, roi] += (gain[roi] * signal).astype(np.float32)
    response *= (brain.amplitude * BETA_SCALE).astype(np.float32)
    betas = np.clip(np.rint(response), -32768, 32767).astype(np.int16)
    volume = np.zeros((brain.mask.size, n_trials), dtype=np.int16)
    volume[brain.brain_flat] = betas.T
    return volume.reshape(*brain.mask.shape, n_trials)
