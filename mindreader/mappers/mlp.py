"""A MindEye-style residual MLP mapper (Scotti et al. 2023), a baseline beyond the paper:
Linear -> LayerNorm -> GELU -> Dropout, then residual blocks of the same, then a linear output."""

from __future__ import annotations

import torch
from torch import nn


def dense(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, out_features),
        nn.LayerNorm(out_features),
        nn.GELU(),
        nn.Dropout(dropout),
    )


class ResidualMLP(nn.Module):
    """(B, n_voxels) betas -> (B, embed_dim)."""

    def __init__(
        self,
        n_voxels: int,  # voxels in the input
        embed_dim: int = 512,  # CLIP embedding size
        hidden: int = 4096,  # width of every hidden layer
        blocks: int = 4,  # residual blocks after the input layer
        dropout_in: float = 0.5,  # dropout after the input layer
        dropout: float = 0.15,  # dropout in each residual block
    ):
        super().__init__()
        self.n_voxels = n_voxels
        self.embed_dim = embed_dim
        self.input = dense(n_voxels, hidden, dropout_in)
        self.blocks = nn.ModuleList([dense(hidden, hidden, dropout) for _ in range(blocks)])
        self.output = nn.Linear(hidden, embed_dim)

    def forward(self, betas: torch.Tensor) -> torch.Tensor:
        if betas.ndim != 2 or betas.shape[1] != self.n_voxels:
            raise ValueError(f"ResidualMLP: expected betas (B, {self.n_voxels}), got {tuple(betas.shape)}")
        x = self.input(betas)  # (B, hidden)
        for block in self.blocks:
            x = x + block(x)
        return self.output(x)  # (B, D)
