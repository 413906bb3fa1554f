"""The paper's mapper ``fmri_clip_res`` (method.md "Mapper"): voxels as a 1-D signal, a strided
Conv1d stem, residual blocks, a 1x1 projection to the embedding, and a learned pooling head."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Orders of the voxels along the 1-D signal, slowest axis first: xyz is the prepared file's own
# (C order over X, Y, Z); zyx the original's (NSD's HDF5 betas (trial, Z, Y, X) indexed with the
# transposed mask, so x varies fastest).
VOXEL_ORDERS = ("xyz", "zyx")


def voxel_order_index(voxel_xyz: np.ndarray, order: str) -> np.ndarray:
    """int64 (V,): the betas column at each position of the 1-D signal, for voxels at
    ``voxel_xyz`` (V, 3) laid out in ``order`` (its last axis varying fastest)."""
    if order not in VOXEL_ORDERS:
        raise ValueError(f"voxel order must be one of {', '.join(VOXEL_ORDERS)}, got {order!r}")
    voxel_xyz = np.asarray(voxel_xyz)
    if voxel_xyz.ndim != 2 or voxel_xyz.shape[1] != 3:
        raise ValueError(f"expected voxel coordinates (voxels, 3), got shape {voxel_xyz.shape}")
    # np.lexsort sorts by its last key first: give it the fastest axis first.
    keys = [voxel_xyz[:, "xyz".index(axis)] for axis in reversed(order)]
    return np.lexsort(keys).astype(np.int64)


def padded_length(n_voxels: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that holds ``n_voxels``."""
    return -(-n_voxels // multiple) * multiple


class ResBlock1d(nn.Module):
    """conv3 - ReLU - conv3 - ReLU - conv1, plus the identity, then ReLU (no normalisation)."""

    def __init__(
        self,
        channels: int,  # input = output channels
    ):
        super().__init__()
        self.conv0 = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C, L)
        y = self.conv2(F.relu(self.conv1(F.relu(self.conv0(x)))))
        return F.relu(x + y)


class PoolingHead(nn.Module):
    """Learned weighted pooling over positions, shared by every embedding channel:
    ReLU - Conv1d(positions -> hidden, k1) - ReLU - Conv1d(hidden -> 1, k1), no final activation."""

    def __init__(
        self,
        positions: int,  # sequence length L/2 after the stem, used as the conv's channels
        hidden: int,  # hidden width (paper: 128)
    ):
        super().__init__()
        self.fc0 = nn.Conv1d(positions, hidden, kernel_size=1)
        self.fc1 = nn.Conv1d(hidden, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, positions, D) -> (B, D)
        return self.fc1(F.relu(self.fc0(F.relu(x)))).squeeze(1)


class FmriClipRes(nn.Module):
    """(B, n_voxels) betas -> (B, embed_dim) CLIP embedding. 1,156,929 parameters at 15,724 voxels,
    512 dimensions and the paper's widths.

    The input columns are first put in the order the convolutions run over (``voxel_index``, a
    buffer: saved and loaded with the weights, so a loaded model reads the betas as the trained
    one did), then zero-padded, centred, to a multiple of ``pad_multiple``. The original
    hard-codes 15,744 (= 984 x 16) for subj01's 15,724 voxels, which is the next multiple of 32,
    not of 16 (15,728); 32 is therefore the default, and it reproduces the paper's parameter count."""

    def __init__(
        self,
        n_voxels: int,  # voxels in the input (before padding)
        embed_dim: int = 512,  # CLIP embedding size
        hidden: int = 64,  # channels of the stem and residual blocks
        blocks: int = 4,  # residual blocks
        head_hidden: int = 128,  # hidden width of the pooling head
        pad_multiple: int = 32,  # the padded input length is a multiple of this (even: the stem halves it)
        voxel_index: np.ndarray | None = None,  # (n_voxels,) betas column at each signal position; None: as given
    ):
        super().__init__()
        self.n_voxels = n_voxels
        self.embed_dim = embed_dim
        if pad_multiple < 2 or pad_multiple % 2:
            raise ValueError(f"FmriClipRes: pad_multiple must be even and >= 2, got {pad_multiple}")
        index = np.arange(n_voxels) if voxel_index is None else np.asarray(voxel_index)
        if index.shape != (n_voxels,) or not np.array_equal(np.sort(index), np.arange(n_voxels)):
            raise ValueError(f"FmriClipRes: voxel_index must be a permutation of the {n_voxels} input columns")
        self.register_buffer("voxel_index", torch.from_numpy(index.astype(np.int64)))
        length = padded_length(n_voxels, pad_multiple)
        self.pad_left = (length - n_voxels) // 2
        self.pad_right = length - n_voxels - self.pad_left
        self.stem = nn.Conv1d(1, hidden, kernel_size=4, stride=2, padding=1)  # L -> L/2
        self.blocks = nn.Sequential(*[ResBlock1d(hidden) for _ in range(blocks)])
        self.proj = nn.Conv1d(hidden, embed_dim, kernel_size=1)
        self.head = PoolingHead(length // 2, head_hidden)

    def forward(self, betas: torch.Tensor) -> torch.Tensor:
        if betas.ndim != 2 or betas.shape[1] != self.n_voxels:
            raise ValueError(f"FmriClipRes: expected betas (B, {self.n_voxels}), got {tuple(betas.shape)}")
        x = betas.index_select(1, self.voxel_index)  # (B, n_voxels) in the signal's order
        x = F.pad(x, (self.pad_left, self.pad_right)).unsqueeze(1)  # (B, 1, L)
        x = F.relu(self.stem(x))  # (B, hidden, L/2)
        x = self.blocks(x)  # (B, hidden, L/2)
        x = self.proj(x).transpose(1, 2)  # (B, L/2, D)
        return self.head(x)  # (B, D)
