"""CLIP embeddings of the stimulus images and the paper's regression targets.

Images arrive as uint8 batches straight from the stimulus brick (`NSD.iter_images`), are turned
into float tensors once per batch and preprocessed on tensors, never one PIL image at a time.
Each image is embedded once, keyed by its nsdId, however many subjects saw it.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Sequence

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


def cutout(
    image: torch.Tensor,  # (C, H, W)
    centre: Sequence[float],  # (row, column) of the square's centre, as fractions of the height and width
    fraction: float,  # side of the square as a fraction of the image's side
) -> torch.Tensor:
    """``image`` with a square of zeros, the original's random mask: rows round((r -/+ fraction / 2) H),
    clipped to the image, its last row and column never zeroed (the original's bound); columns alike."""
    height, width = image.shape[-2:]
    half = fraction / 2
    top, bottom = max(0, round((centre[0] - half) * height)), min(height - 1, round((centre[0] + half) * height))
    left, right = max(0, round((centre[1] - half) * width)), min(width - 1, round((centre[1] + half) * width))
    out = image.clone()
    out[..., top:bottom, left:right] = 0
    return out


class TargetAugmentation:
    """Random views of the stimuli as the original computes its CLIP image targets
    (`nsd_utils.get_img_trans`, method.md "CLIP targets"): every image resized (squashed) to
    ``size``; then, with probability ``p``, a random resized crop, a horizontal flip, colour
    jitter, grayscale and Gaussian blur (each with its own probability, in this order), and always
    a cutout. On float (3, size, size) images in [0, 1], any device; every draw comes from torch's
    global RNG, so a seeded run makes the same views."""

    def __init__(
        self,
        size: int,  # side the images are resized to first (the original: 256); blur and cutout act at this size
        p: float,  # probability that a view is augmented at all; otherwise it is only resized
        crop_scale: Sequence[float],  # (min, max) area fraction of the random resized crop (aspect 3/4 to 4/3)
        flip_p: float,  # probability of a horizontal flip
        color_jitter_p: float,  # probability of colour jitter
        color_jitter: Sequence[float],  # its strengths: brightness, contrast, saturation, hue
        grayscale_p: float,  # probability of grayscale (kept as 3 channels)
        blur_p: float,  # probability of Gaussian blur
        blur_kernel: int,  # its kernel side in pixels at ``size`` (odd)
        blur_sigma: Sequence[float],  # (min, max) of its sigma, drawn per view
        cutout: float,  # side of the zeroed square as a fraction of the image side, centre uniform (0: none)
    ):
        self.size = size
        self.p = p
        self.color_jitter_p = color_jitter_p
        self.grayscale_p = grayscale_p
        self.blur_p = blur_p
        self.cutout_fraction = cutout
        self.crop = v2.RandomResizedCrop(size, scale=tuple(crop_scale), antialias=True)
        self.flip = v2.RandomHorizontalFlip(flip_p)
        self.jitter = v2.ColorJitter(*color_jitter)
        self.grayscale = v2.Grayscale(num_output_channels=3)
        self.blur = v2.GaussianBlur(blur_kernel, sigma=tuple(blur_sigma))

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """float (B, 3, H, W) -> (B, 3, size, size), antialiased."""
        return v2.functional.resize(images, [self.size, self.size], antialias=True)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """One random view of a resized float image (3, size, size)."""
        if image.shape[-2:] != (self.size, self.size):
            raise ValueError(f"expected an image resized to {self.size} x {self.size}, got {tuple(image.shape)}")
        if not _happens(self.p):
            return image
        image = self.flip(self.crop(image))
        if _happens(self.color_jitter_p):
            image = self.jitter(image)
        if _happens(self.grayscale_p):
            image = self.grayscale(image)
        if _happens(self.blur_p):
            image = self.blur(image)
        centre = torch.rand(2).tolist()
        return cutout(image, centre, self.cutout_fraction) if self.cutout_fraction > 0 else image


def _happens(p: float) -> bool:
    """True with probability ``p``; always one draw from torch's RNG, so views stay aligned whatever ``p``."""
    return bool(torch.rand(()) < p)


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
    augmentation: TargetAugmentation | None = None,  # how the views are made (needed when n_aug > 0)
) -> dict[str, np.ndarray]:
    """Raw embeddings of every image (and of K augmented views): nsd_id, raw, aug_raw (if K > 0)."""
    if n_aug > 0 and augmentation is None:
        raise ValueError(f"n_aug = {n_aug} augmented views need an augmentation (clip.augment)")
    ids, raw, aug_raw = [], [], []
    with torch.inference_mode(), tqdm(total=n_images, desc="embed images", unit="img") as bar:
        for batch_ids, images in batches:
            x = to_float_images(images, clip.device)
            raw.append(clip.encode_images(x).float().cpu().numpy())
            if n_aug > 0:
                aug_raw.append(_embed_augmented(clip, x, augmentation, n_aug))
            ids.append(np.asarray(batch_ids, dtype=np.int64))
            bar.update(len(batch_ids))
    out = {"nsd_id": np.concatenate(ids), "raw": np.concatenate(raw).astype(np.float32)}
    if n_aug > 0:
        out["aug_raw"] = np.concatenate(aug_raw).astype(np.float32)
    return out


def _embed_augmented(
    clip: FrozenClip, images: torch.Tensor, augmentation: TargetAugmentation, n_aug: int
) -> np.ndarray:
    """(B, K, D) embeddings of K random views of each float image (B, 3, H, W) (parameters drawn per view).

    The B * K views are made and embedded B at a time, in image-major order: a CLIP forward holds
    the batch's B images whatever K (all B * K at once needed ~41 GB at the paper's 256 x 40), and
    the views are drawn in the same order as when they were made all at once."""
    resized = augmentation.resize(images)
    n = len(images)
    emb = []
    for start in range(0, n * n_aug, n):
        views = torch.stack([augmentation(resized[view // n_aug]) for view in range(start, min(start + n, n * n_aug))])
        emb.append(clip.encode_images(views).float().cpu().numpy())
    return np.concatenate(emb).reshape(n, n_aug, -1)


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
