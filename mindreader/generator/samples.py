"""Sample grids written during training: real images above what G_ema draws from their conditions."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mindreader.generator.conditioning import combine_targets, mapper_predictions
from mindreader.generator.data import TrainingSet
from mindreader.generator.reconstruct import generate_images, write_png

# Grids of small images are enlarged (nearest neighbour, by an integer factor) to at least this
# many pixels per image, so that a 32 px demo grid is readable in an image viewer.
MIN_TILE_SIDE = 128


def tile(rows: list[np.ndarray]) -> np.ndarray:
    """Rows of (N, H, W, 3) uint8 images -> one (rows * H, N * W, 3) image."""
    return np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)


@torch.no_grad()
def save_grid(
    path, G, data: TrainingSet, z_policy: str, device, mappers=None, seed: int = 0, n: int = 8, draws: int = 2
) -> None:
    """Row 1: the first ``n`` training images; then ``draws`` rows of G(z, c) with their clean
    (unperturbed) conditions, z drawn per row from ``seed`` (or zero). Images smaller than
    MIN_TILE_SIDE are enlarged by the smallest integer factor that reaches it."""
    n = min(n, len(data))
    idx = torch.arange(n)
    if mappers is not None:
        mappers.eval()
        c = combine_targets(mapper_predictions(mappers, data.betas[idx].to(device)), G.n_conditions).float()
        mappers.train()
    else:
        c = data.cond[idx, 0].to(device)
    c = F.normalize(c, dim=-1)
    real = data.images[data.image_index[idx]].permute(0, 2, 3, 1).numpy()
    rows = [real] + [generate_images(G, c, z_policy, seed + r, device) for r in range(draws)]
    scale = -(-MIN_TILE_SIDE // real.shape[1])
    write_png(path, tile(rows).repeat(scale, axis=0).repeat(scale, axis=1))
