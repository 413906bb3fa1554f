"""CLIP embeddings of the stimulus images and the paper's regression targets.

Images arrive as uint8 batches straight from the stimulus brick (`NSD.iter_images`), are turned
into float tensors once per batch and preprocessed on tensors, never one PIL image at a time.
Each image is embedded once, keyed by its nsdId, however many subjects saw it.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable

import h5py
import numpy as np
import torch
from torchvision.transforms import v2
from tqdm import tqdm

from mindreader.clip.models import FrozenClip
from mindreader.io import atomic_path

log = logging.getLogger(__name__)


def clip_targets(
    raw: np.ndarray | torch.Tensor,  # (..., D) raw CLIP embeddings
    clamp: float = 1.5,  # clip every component to [-clamp, clamp] ("remove spikes"); 0: off
    normalize: bool = True,  # then scale each vector to unit L2 norm
) -> np.ndarray:
    """The paper's CLIP targets: clamp to [-1.5, 1.5], then L2-normalise (float32)."""
    x = torch.as_tensor(np.asarray(raw), dtype=torch.float32)
    if clamp < 0:
        raise ValueError(f"clamp must be positive (or 0 to switch it off), got {clamp}")
    if clamp > 0:
        x = x.clamp(-clamp, clamp)
    if normalize:
        x = torch.nn.functional.normalize(x, dim=-1)
    return x.numpy()


def image_augmentation(side: int) -> v2.Compose:
    """The augmentations of the original's image targets (method.md), on uint8 (3, H, W) tensors.

    Drawn from torch's global RNG: seed it once and the K views of every image are reproducible.
    """
    return v2.Compose(
        [
            v2.RandomResizedCrop(side, scale=(0.8, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)], p=0.8),
            v2.RandomGrayscale(p=0.2),
            v2.RandomApply([v2.GaussianBlur(kernel_size=max(3, (side // 20) | 1), sigma=(0.1, 2.0))], p=0.5),
        ]
    )


def to_float_images(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [0, 1] on ``device``."""
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (B, H, W, 3), got {batch.dtype} {batch.shape}")
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2)
    return x.float().div_(255.0)


def embed_image_batches(
    clip: FrozenClip,  # the CLIP to embed with
    batches: Iterable[tuple[np.ndarray, np.ndarray]],  # (nsd_ids, uint8 (B, H, W, 3)) in order
    n_images: int,  # total images, for the progress bar
    n_aug: int = 0,  # augmented views per image (0: none)
) -> dict[str, np.ndarray]:
    """Raw embeddings of every image (and of K augmented views): nsd_id, raw, aug_raw (if K > 0)."""
    ids, raw, aug_raw = [], [], []
    with torch.inference_mode(), tqdm(total=n_images, desc="embed images", unit="img") as bar:
        for batch_ids, images in batches:
            x = to_float_images(images, clip.device)
            raw.append(clip.encode_images(x).float().cpu().numpy())
            if n_aug > 0:
                aug_raw.append(_embed_augmented(clip, images, n_aug))
            ids.append(np.asarray(batch_ids, dtype=np.int64))
            bar.update(len(batch_ids))
    out = {"nsd_id": np.concatenate(ids), "raw": np.concatenate(raw).astype(np.float32)}
    if n_aug > 0:
        out["aug_raw"] = np.concatenate(aug_raw).astype(np.float32)
    return out


def _embed_augmented(clip: FrozenClip, images: np.ndarray, n_aug: int) -> np.ndarray:
    """(B, K, D) embeddings of K random views of each image (parameters drawn per view)."""
    augment = image_augmentation(images.shape[1])
    chw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    views = torch.stack([torch.stack([augment(img) for _ in range(n_aug)]) for img in chw])  # (B, K, 3, H, W)
    flat = views.flatten(0, 1).to(clip.device).float().div_(255.0)
    emb = clip.encode_images(flat).float().cpu().numpy()
    return emb.reshape(len(images), n_aug, -1)


def write_image_embeddings(
    path: str | os.PathLike,
    embeddings: dict[str, np.ndarray],  # from embed_image_batches
    clip: FrozenClip,
    clamp: float,
    normalize: bool,
) -> None:
    """results/clip/images.h5: nsd_id ascending, raw, target (+ aug_raw, aug_target), attrs."""
    ids = embeddings["nsd_id"]
    if len(ids) > 1 and not np.all(np.diff(ids) > 0):
        raise ValueError("image embeddings must be keyed by unique nsdIds in ascending order")
    n_aug = embeddings["aug_raw"].shape[1] if "aug_raw" in embeddings else 0
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f["nsd_id"] = ids
        f["raw"] = embeddings["raw"]
        f["target"] = clip_targets(embeddings["raw"], clamp, normalize)
        if n_aug:
            f["aug_raw"] = embeddings["aug_raw"]
            f["aug_target"] = clip_targets(embeddings["aug_raw"], clamp, normalize)
        f.attrs.update(
            model=clip.name,
            weights=clip.weights,
            embed_dim=clip.embed_dim,
            clamp=float(clamp),
            normalize=bool(normalize),
            n_aug=int(n_aug),
        )
    log.info("wrote %d image embeddings (D=%d, %d augmented views each) to %s", len(ids), clip.embed_dim, n_aug, path)
