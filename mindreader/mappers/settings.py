"""The ``mappers`` config section as typed dataclasses (config/schema.yaml holds the defaults).

Each block is read strictly: a missing or unknown key fails with its name, so a typo in a config
file never silently falls back to something else.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping


def read_section(cfg: Mapping[str, Any], name: str, cls):
    """``cls(**cfg[name])`` after checking the keys against the dataclass fields."""
    if name not in cfg:
        raise KeyError(f"mappers config: missing section '{name}' (have {sorted(cfg)})")
    block = dict(cfg[name])
    expected = {f.name for f in fields(cls)}
    missing, unknown = expected - set(block), set(block) - expected
    if missing or unknown:
        raise KeyError(f"mappers.{name}: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
    return cls(**block)


@dataclass(frozen=True)
class CnnConfig:
    hidden: int  # channels of the stem and residual blocks (paper: 64)
    blocks: int  # residual blocks (paper: 4)
    head_hidden: int  # width of the pooling head's hidden layer (paper: 128)
    pad_multiple: int  # input zero-padded, centred, to a multiple of this (32: subj01's 15,744)
    voxel_order: str  # voxel order the convolutions run over: zyx (x fastest, the original's) | xyz (the file's)


@dataclass(frozen=True)
class MlpConfig:
    hidden: int  # width of every hidden layer (MindEye: 4096)
    blocks: int  # residual blocks after the input layer (MindEye: 4)
    dropout_in: float  # dropout after the input layer (MindEye: 0.5)
    dropout: float  # dropout inside each residual block (MindEye: 0.15)


@dataclass(frozen=True)
class RidgeConfig:
    alphas: tuple[float, ...]  # penalties tried; the one with the lowest validation MSE is kept
    dtype: str  # float32 | float64: precision of the Gram matrix and its decomposition


@dataclass(frozen=True)
class LossConfig:
    cos_weight: float  # w: mse_cos = (1 - w) * MSE + w * (1 - cos)
    temperature: float  # tau: the cosine-similarity matrix is divided by it
    row_weight: float  # lambda: contrastive = lambda * CE(rows) + (1 - lambda) * CE(columns)
    contrastive_weight: float  # p: mse_cos_contrastive = (1 - p) * mse_cos + p * contrastive


@dataclass(frozen=True)
class TrainConfig:
    epochs: int  # passes over the training samples
    lr: float  # Adam learning rate
    weight_decay: float  # Adam (L2) weight decay
    batch_size: int  # batch with a contrastive term in the loss
    batch_size_plain: int  # batch without one
    lr_step_epochs: int  # the learning rate is multiplied by lr_gamma every this many epochs
    lr_gamma: float  # factor of each learning-rate step
    reset_optimizer_on_decay: bool  # each lr step starts Adam afresh (zero moments), as the original re-creates it
    val_fraction: float  # fraction of the training images (all their samples) held out for validation
    checkpoint_every: int  # optimiser steps between checkpoints (one is also written on SIGTERM)
    augmented_targets: bool  # draw one of the CLIP file's augmented targets per sample and epoch
    augmented_validation: bool  # validate against augmented targets too, drawn per epoch, as the original does
    view_draw: str  # random: a stored view drawn with replacement | fresh: one not read in an earlier epoch


@dataclass(frozen=True)
class RetrievalConfig:
    pool: int  # test samples per retrieval pool (Mind Reader, MindEye: 300)
    draws: int  # random pools averaged (30)
