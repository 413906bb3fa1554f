"""Training sets of the generator stages, held in memory: stimulus images resized once to the
generator's resolution (uint8), and per sample either condition embeddings or, for the
end-to-end variant, betas and CLIP targets.

Memory: images take N x 3 x R^2 bytes (about 200 kB each at 256 px: ~2 GB for a subject's 9,000
training images, ~14 GB for every NSD image at once in pre-training).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from mindreader.generator.conditioning import combine_targets
from mindreader.nsd import NSD

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """Samples of one stage; every array has the sample axis first except ``images``."""

    images: torch.Tensor  # (M, 3, R, R) uint8, each stimulus once
    image_index: torch.Tensor  # (N,) int64 row of each sample's image in ``images``
    nsd_id: np.ndarray  # (N,) int64 nsdId of each sample
    cond: torch.Tensor | None = None  # (N, A, K, D) float32: A alternative embeddings of K conditions
    betas: torch.Tensor | None = None  # (N, V) float32 (end-to-end only)
    target: torch.Tensor | None = None  # (N, K, D) float32 CLIP targets (end-to-end only)

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def batch(
        self, indices: torch.Tensor, device: torch.device, flip: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """The samples ``indices`` as the loss expects them; real images in [-1, 1], mirrored
        left-right where ``flip`` (bool, one per sample) is true; their conditions unchanged (as
        StyleGAN2-ADA's x-flipped dataset, with Lafite's features, gives them)."""
        real = self.images[self.image_index[indices]]
        if flip is not None:
            real = torch.where(flip.view(-1, 1, 1, 1), real.flip(-1), real)
        out = {"real": real.to(device).float() / 127.5 - 1}
        for name in ("cond", "betas", "target"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value[indices].to(device)
        return out


def load_images(nsd_root: str | Path, nsd_ids: np.ndarray, resolution: int, batch_size: int = 256) -> torch.Tensor:
    """Stimuli ``nsd_ids`` from the NSD brick, resized (antialiased bilinear) to (N, 3, R, R) uint8."""
    nsd = NSD(nsd_root)
    out = torch.empty(len(nsd_ids), 3, resolution, resolution, dtype=torch.uint8)
    row = 0
    with tqdm(total=len(nsd_ids), desc="stimuli", unit="img", mininterval=5) as bar:
        for _, batch in nsd.iter_images(np.asarray(nsd_ids), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
            if x.shape[-1] != resolution or x.shape[-2] != resolution:
                x = F.interpolate(
                    x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
                )
            out[row : row + len(x)] = x.round().clamp(0, 255).to(torch.uint8)
            row += len(x)
            bar.update(len(x))
    return out


def read_rows(path: str | Path, nsd_ids: np.ndarray, datasets: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Rows of ``datasets`` for ``nsd_ids`` from an embeddings file indexed by its ``nsd_id``."""
    with h5py.File(path, "r") as f:
        for name in ("nsd_id", *datasets):
            if name not in f:
                raise ValueError(f"{path}: dataset '{name}' missing (expected nsd_id and {', '.join(datasets)})")
        ids = f["nsd_id"][:]
        position = {int(i): r for r, i in enumerate(ids)}
        missing = [int(i) for i in nsd_ids if int(i) not in position]
        if missing:
            raise ValueError(f"{path}: no embedding for {len(missing)} nsdId(s), e.g. {missing[:5]}")
        rows = np.array([position[int(i)] for i in nsd_ids], dtype=np.int64)
        return {name: f[name][:][rows].astype(np.float32) for name in datasets}


def read_split_ids(prepared: str | Path, split: str) -> np.ndarray:
    with h5py.File(prepared, "r") as f:
        key = f"{split}/nsd_id"
        if key not in f:
            raise ValueError(f"{prepared}: dataset '{key}' missing (expected a prepared subject file)")
        return f[key][:].astype(np.int64)


def read_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(nsd_id (N,), pred (N, D)) from a mapper's pred_train.h5 / pred_test.h5."""
    with h5py.File(path, "r") as f:
        for name in ("nsd_id", "pred"):
            if name not in f:
                raise ValueError(f"{path}: dataset '{name}' missing (expected a mapper prediction file)")
        ids, pred = f["nsd_id"][:].astype(np.int64), f["pred"][:].astype(np.float32)
    if pred.ndim not in (2, 3) or len(pred) != len(ids):
        raise ValueError(
            f"{path}: pred must be (N, D) or (N, K, D) with N = len(nsd_id) = {len(ids)}, got {pred.shape}"
        )
    return ids, pred


def stack_predictions(paths: list[str | Path]) -> tuple[np.ndarray, np.ndarray]:
    """(nsd_id (N,), pred (N, K, D)) from K prediction files of the same samples in the same order,
    or from one file whose pred is already (N, K, D) (the end-to-end run's e2e_pred_test.h5)."""
    ids, preds = None, []
    for path in paths:
        these, pred = read_predictions(path)
        if pred.ndim == 3 and len(paths) == 1:
            return these, pred
        if ids is not None and not np.array_equal(ids, these):
            raise ValueError(
                f"{path}: samples differ from {paths[0]} (the mappers must predict the same samples in order)"
            )
        ids = these
        preds.append(pred)
    return ids, np.stack(preds, axis=1)


def _image_rows(nsd_id: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    unique, inverse = np.unique(nsd_id, return_inverse=True)
    return unique, torch.from_numpy(inverse.astype(np.int64))


def pretraining_set(
    nsd_root, images_h5, prepared_files: list, resolution: int, use_augmented: bool = True
) -> TrainingSet:
    """Every embedded stimulus except the test images of every prepared subject, conditioned on its
    CLIP image target (and its augmented targets as alternatives when the file has them)."""
    with h5py.File(images_h5, "r") as f:
        if "nsd_id" not in f:
            raise ValueError(f"{images_h5}: dataset 'nsd_id' missing (expected the CLIP image embeddings)")
        all_ids = f["nsd_id"][:].astype(np.int64)
        has_aug = "aug_target" in f and f["aug_target"].shape[1] > 0
    test = np.unique(np.concatenate([read_split_ids(p, "test") for p in prepared_files]))
    ids = np.setdiff1d(all_ids, test)
    if len(ids) == 0:
        raise ValueError(f"{images_h5}: no image left for pre-training after removing {len(test)} test images")
    log.info(
        "pre-training on %d images (%d test images of %d subjects held out)", len(ids), len(test), len(prepared_files)
    )
    datasets = ("target", "aug_target") if (use_augmented and has_aug) else ("target",)
    rows = read_rows(images_h5, ids, datasets)
    bank = rows["target"][:, None]
    if "aug_target" in rows:
        bank = np.concatenate([bank, rows["aug_target"]], axis=1)
    return TrainingSet(
        images=load_images(nsd_root, ids, resolution),
        image_index=torch.arange(len(ids)),
        nsd_id=ids,
        cond=torch.from_numpy(bank[:, :, None, :].copy()),
    )


def finetuning_set(nsd_root, pred_train_files: list, resolution: int, n_conditions: int) -> TrainingSet:
    """Training samples of a subject, conditioned on the frozen mappers' predictions (one file per
    target), combined into ``n_conditions`` conditions (``combine_targets``)."""
    nsd_id, pred = stack_predictions(pred_train_files)
    pred = combine_targets(torch.from_numpy(pred), n_conditions).numpy()
    unique, index = _image_rows(nsd_id)
    return TrainingSet(
        images=load_images(nsd_root, unique, resolution),
        image_index=index,
        nsd_id=nsd_id,
        cond=torch.from_numpy(pred[:, None].copy()),
    )


def read_betas(prepared: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(nsd_id (N,), betas (N, V) float32) of one split of a prepared subject file."""
    with h5py.File(prepared, "r") as f:
        key = f"{split}/betas"
        if key not in f:
            raise ValueError(f"{prepared}: dataset '{key}' missing (expected a prepared subject file)")
        return f[f"{split}/nsd_id"][:].astype(np.int64), f[key][:].astype(np.float32)


def end_to_end_set(nsd_root, prepared, target_files: list, resolution: int) -> TrainingSet:
    """Training samples of a subject with betas and the CLIP targets of each condition."""
    nsd_id, betas = read_betas(prepared, "train")
    target = np.stack([read_rows(path, nsd_id, ("target",))["target"] for path in target_files], axis=1)
    unique, index = _image_rows(nsd_id)
    return TrainingSet(
        images=load_images(nsd_root, unique, resolution),
        image_index=index,
        nsd_id=nsd_id,
        betas=torch.from_numpy(betas),
        target=torch.from_numpy(target),
    )
