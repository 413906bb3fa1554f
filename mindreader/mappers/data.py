"""Inputs of a mapper: a prepared subject (results/prepared/{subject}.h5) and a CLIP target file
(results/clip/images.h5 or captions.h5), checked and aligned by nsdId."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np


# Attributes of the prepared file that the mapper's metrics.json repeats (how the test set was made).
RECORDED_ATTRS = ("subject", "split", "test_repeats", "train_repeats", "zscore")


@dataclass
class PreparedSplit:
    betas: np.ndarray  # float32 (N, V)
    nsd_id: np.ndarray  # int64 (N,)


@dataclass
class ClipTargets:
    nsd_id: np.ndarray  # int64 (M,) ascending
    target: np.ndarray  # float32 (M, D)
    aug_target: np.ndarray | None  # float32 (M, K, D) or None
    path: Path

    @property
    def embed_dim(self) -> int:
        return self.target.shape[1]

    def rows(self, nsd_id: np.ndarray) -> np.ndarray:
        """Row of each nsdId in this file; a missing one is an error that names the file."""
        rows = np.searchsorted(self.nsd_id, nsd_id)
        rows = np.minimum(rows, len(self.nsd_id) - 1)
        missing = self.nsd_id[rows] != nsd_id
        if missing.any():
            raise ValueError(f"{self.path}: no CLIP target for nsdIds {np.unique(nsd_id[missing])[:10].tolist()} "
                             f"({int(missing.sum())} samples); was it made for the same subjects and sessions?")
        return rows


def _dataset(f: h5py.File, path: Path, name: str, ndim: int) -> np.ndarray:
    if name not in f:
        raise ValueError(f"{path}: missing dataset '{name}'")
    data = f[name][()]
    if data.ndim != ndim:
        raise ValueError(f"{path}: dataset '{name}' should have {ndim} dimensions, has shape {data.shape}")
    return data


def read_prepared(path: str | os.PathLike) -> tuple[PreparedSplit, PreparedSplit, np.ndarray, dict]:
    """(train, test, voxel_xyz (V, 3), the RECORDED_ATTRS present) of a prepared subject file."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        splits = []
        for split in ("train", "test"):
            betas = _dataset(f, path, f"{split}/betas", 2).astype(np.float32, copy=False)
            nsd_id = _dataset(f, path, f"{split}/nsd_id", 1).astype(np.int64, copy=False)
            if len(betas) != len(nsd_id) or len(betas) == 0:
                raise ValueError(f"{path}: {split}/betas has {len(betas)} rows and {split}/nsd_id {len(nsd_id)}")
            if not np.isfinite(betas).all():
                raise ValueError(f"{path}: {split}/betas holds NaN or infinite values")
            splits.append(PreparedSplit(betas, nsd_id))
        voxel_xyz = _dataset(f, path, "voxel_xyz", 2).astype(np.int64, copy=False)
        attrs = {k: str(f.attrs[k]) for k in RECORDED_ATTRS if k in f.attrs}
    if splits[0].betas.shape[1] != splits[1].betas.shape[1]:
        raise ValueError(f"{path}: train and test betas have different voxel counts")
    n_voxels = splits[0].betas.shape[1]
    if voxel_xyz.shape != (n_voxels, 3):
        raise ValueError(f"{path}: voxel_xyz has shape {voxel_xyz.shape}, expected ({n_voxels}, 3), a row per betas column")
    return splits[0], splits[1], voxel_xyz, attrs


def read_clip_targets(path: str | os.PathLike) -> ClipTargets:
    """``nsd_id``, ``target`` and, when present, ``aug_target`` of a CLIP embedding file."""
    path = Path(path)
    with h5py.File(path, "r") as f:
        nsd_id = _dataset(f, path, "nsd_id", 1).astype(np.int64, copy=False)
        target = _dataset(f, path, "target", 2).astype(np.float32, copy=False)
        aug = _dataset(f, path, "aug_target", 3).astype(np.float32, copy=False) if "aug_target" in f else None
    if len(target) != len(nsd_id) or (aug is not None and aug.shape[0] != len(nsd_id)):
        raise ValueError(f"{path}: nsd_id, target and aug_target disagree on the number of images")
    if np.any(np.diff(nsd_id) <= 0):
        raise ValueError(f"{path}: nsd_id must be strictly ascending")
    if aug is not None and aug.shape[1] == 0:
        aug = None
    return ClipTargets(nsd_id, target, aug, path)


def validation_mask(nsd_id: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Bool (N,): the samples of a random ``fraction`` of the distinct images (all repeats of an
    image on the same side), for choosing the checkpoint or the ridge penalty."""
    images = np.unique(nsd_id)
    n_val = int(round(fraction * len(images)))
    if fraction > 0:
        n_val = min(max(n_val, 1), len(images) - 1)
    held_out = np.random.default_rng(seed).choice(images, size=n_val, replace=False)
    return np.isin(nsd_id, held_out)
