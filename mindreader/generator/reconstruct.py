"""Reconstructions: G_ema draws one image per test sample from its predicted embeddings, or (the
oracle, the generator's ceiling) from the test images' true CLIP embeddings.

Deterministic: noise inputs use their stored constants, and z is either zero or drawn for the
whole test set at once from a fixed seed (so an image does not depend on the batch size, and a
run's oracle and brain-driven reconstructions of a test sample differ only in the condition).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Mapping

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mindreader.generator.conditioning import combine_targets
from mindreader.generator.data import read_rows, stack_predictions
from mindreader.generator.loss import Z_POLICIES
from mindreader.generator.store import load_generator
from mindreader.io import atomic_path

log = logging.getLogger(__name__)


def latents(n: int, z_dim: int, z_policy: str, seed: int) -> torch.Tensor:
    if z_policy not in Z_POLICIES:
        raise ValueError(f"unknown z policy '{z_policy}'; choose one of {Z_POLICIES}")
    if z_policy == "zero":
        return torch.zeros(n, z_dim)
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


# noise inputs of the reconstructions: G's learned constant maps, or (the fork's metrics) random
# maps, drawn image by image from the seed so that an image does not depend on batching
NOISE_MODES = ("const", "random")


def noise_maps(G, count: int, generator: torch.Generator, device) -> dict[str, torch.Tensor]:
    """Random noise maps of ``count`` images, image after image from ``generator``'s stream."""
    shapes = G.synthesis.noise_shapes()
    per_image = [{name: torch.randn(1, 1, res, res, generator=generator) for name, res in shapes.items()} for _ in range(count)]
    return {name: torch.cat([maps[name] for maps in per_image]).to(device) for name in shapes}


@torch.no_grad()
def generate_images(
    G, c: torch.Tensor, z_policy: str, seed: int, device, batch_size: int = 64, noise_mode: str = "const"
) -> np.ndarray:
    """uint8 (N, R, R, 3) images of G for conditions c (N, K, D), in the order of c."""
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"unknown noise mode '{noise_mode}'; choose one of {NOISE_MODES}")
    z = latents(c.shape[0], G.z_dim, z_policy, seed)
    noise_stream = torch.Generator().manual_seed(seed + 1)  # not z's stream
    was_training = G.training
    G.eval()
    out = []
    for start in range(0, c.shape[0], batch_size):
        zb, cb = z[start : start + batch_size].to(device), c[start : start + batch_size].to(device)
        if noise_mode == "random":
            img = G(zb, cb, noise=noise_maps(G, len(zb), noise_stream, device))
        else:
            img = G(zb, cb, noise_mode="const")
        out.append(to_uint8(img).permute(0, 2, 3, 1).cpu().numpy())
    G.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, G.img_resolution, G.img_resolution, 3), np.uint8)


def to_uint8(img: torch.Tensor) -> torch.Tensor:
    """G's output (B, 3, R, R) in [-1, 1] -> uint8, rounded as StyleGAN2-ADA saves and measures images."""
    return (img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def as_conditions(G, embeddings: np.ndarray, run_folder, origin) -> torch.Tensor:
    """c (N, K, D) as G takes them from one embedding per condition target (N, M, D): normalised,
    and averaged into the one condition of the `avg` variant (``origin`` names them in errors)."""
    counts_fit = embeddings.shape[1] == G.n_conditions or G.n_conditions == 1
    if not counts_fit or embeddings.shape[2] != G.c_dim:
        raise ValueError(
            f"{run_folder}: generator takes {G.n_conditions} condition(s) of width {G.c_dim}, "
            f"got {embeddings.shape[1]} x {embeddings.shape[2]} from {origin}"
        )
    return F.normalize(combine_targets(torch.from_numpy(embeddings), G.n_conditions), dim=-1)


def predicted_conditions(G, pred_test_files: list, run_folder) -> tuple[np.ndarray, torch.Tensor]:
    """(nsd_id (N,), c (N, K, D)): each test sample's conditions as G takes them at test time, the
    normalised predictions of each condition's mapper (``run_folder`` names G in errors)."""
    nsd_id, pred = stack_predictions(pred_test_files)
    return nsd_id, as_conditions(G, pred, run_folder, [str(p) for p in pred_test_files])


def true_conditions(
    G, conditions: list[str], true_targets: Mapping[str, str | os.PathLike], nsd_id: np.ndarray, run_folder
) -> torch.Tensor:
    """c (N, K, D): the TRUE CLIP embeddings of the images ``nsd_id`` as G takes them, one per
    condition of the run (``conditions``, G's order: network.json), each the `target` of its file
    in ``true_targets`` (condition -> results/clip/images.h5 or captions.h5)."""
    missing = [name for name in conditions if name not in true_targets]
    if missing:
        raise ValueError(
            f"{run_folder}: no true-embedding file for condition(s) {missing} (given {sorted(true_targets)})"
        )
    true = np.stack([read_rows(true_targets[name], nsd_id, ("target",))["target"] for name in conditions], axis=1)
    return as_conditions(G, true, run_folder, [str(true_targets[name]) for name in conditions])


def run_conditions(
    G, meta: dict, pred_test_files: list, run_folder, true_targets: Mapping[str, str | os.PathLike] | None = None
) -> tuple[np.ndarray, torch.Tensor]:
    """(nsd_id (N,), c (N, K, D)) of a run's test samples, in its predictions' order: the predicted
    conditions, or with ``true_targets`` (condition -> CLIP embeddings file) the oracle's, the
    same samples' true embeddings (``meta``: the run's network.json)."""
    nsd_id, c = predicted_conditions(G, pred_test_files, run_folder)
    if true_targets is None:
        return nsd_id, c
    return nsd_id, true_conditions(G, list(meta.get("conditions", [])), true_targets, nsd_id, run_folder)


def reconstruct(
    run_folder,
    pred_test_files: list,
    output_h5,
    z_policy: str,
    seed: int,
    device,
    batch_size: int = 64,
    true_targets: Mapping[str, str | os.PathLike] | None = None,
    noise_mode: str = "const",  # NOISE_MODES
) -> np.ndarray:
    """Write ``output_h5`` (images uint8 (N, R, R, 3), nsd_id (N,) in the test order of the
    predictions) and return the images. Conditions: the normalised predictions of each condition's
    mapper, or with ``true_targets`` (condition -> CLIP embeddings file) the oracle: the same test
    samples' true embeddings, no brain involved (attribute source: brain or oracle)."""
    G, meta = load_generator(run_folder)
    G.to(device)
    nsd_id, c = run_conditions(G, meta, pred_test_files, run_folder, true_targets)
    images = generate_images(G, c, z_policy, seed, device, batch_size, noise_mode)
    with atomic_path(output_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("images", data=images, compression="gzip", chunks=(1, *images.shape[1:]))
            f.create_dataset("nsd_id", data=nsd_id.astype(np.int64))
            f.attrs["z_policy"] = z_policy
            f.attrs["seed"] = seed
            f.attrs["resolution"] = G.img_resolution
            f.attrs["noise_mode"] = noise_mode
            f.attrs["conditions"] = ",".join(meta.get("conditions", []))
            f.attrs["source"] = "brain" if true_targets is None else "oracle"
    log.info("wrote %d reconstructions (%dx%d) to %s", len(images), G.img_resolution, G.img_resolution, output_h5)
    return images


def write_png(path: str | Path, image: np.ndarray) -> None:
    """One uint8 (H, W, 3) image as a PNG, written atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_pngs(reconstructions_h5, folder) -> None:
    """One PNG per reconstruction, ``{row:05d}_{nsdId:05d}.png``, into ``folder`` (made whole or not at all)."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    with h5py.File(reconstructions_h5, "r") as f:
        ids = f["nsd_id"][:]
        for row, nsd_id in enumerate(ids):
            write_png(tmp / f"{row:05d}_{int(nsd_id):05d}.png", f["images"][row])
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
