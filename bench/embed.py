"""Images per second of the project's image embedding vs. a plain open_clip loop, on the CPU.

Both embed the same images of a stimulus brick in NSD's layout (425 x 425 like NSD) with the
same ViT-B/32-sized CLIP (random weights: none can be downloaded here):
- project: `NSD.iter_images` batches -> `embed_image_batches` (tensor preprocessing, batched
  encode, inference mode), what rule embed_images runs;
- baseline: one image at a time: read its row, PIL image, open_clip's own preprocess
  transform, `encode_image` under no_grad.
Prints both rates, the ratio, and the agreement of the embeddings. A random-weight CLIP maps
every image near one common direction (the raw cosine between different images is printed too),
so agreement is measured on what tells images apart: the embeddings centred over the images, each image
identified among the other path's embeddings, and each image's nearest neighbour in both paths.

Usage: .venv/bin/python bench/embed.py [--images 64] [--batch 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import h5py
import numpy as np
import open_clip
import torch
from PIL import Image

from mindreader.clip.embed import embed_image_batches
from mindreader.clip.models import FrozenClip
from mindreader.nsd import NSD, STIMULI_RELPATH
from mindreader.nsd.write import write_stimuli


def baseline(model, preprocess, brick_path: str, ids: np.ndarray) -> np.ndarray:
    out = []
    with h5py.File(brick_path, "r") as f, torch.no_grad():
        brick = f["imgBrick"]
        for nsd_id in ids:
            image = preprocess(Image.fromarray(brick[int(nsd_id)])).unsqueeze(0)
            out.append(model.encode_image(image).numpy())
    return np.concatenate(out)


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict[str, float]:
    """How far two (N, D) embeddings of the same images agree on what differs between images."""
    a, b = ours - ours.mean(axis=0), theirs - theirs.mean(axis=0)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    n = len(a)
    within_a, within_b = a @ a.T, b @ b.T
    np.fill_diagonal(within_a, -np.inf)
    np.fill_diagonal(within_b, -np.inf)
    return {
        "centred cosine min": float((a * b).sum(axis=1).min()),
        "top-1 identification": float(((a @ b.T).argmax(axis=1) == np.arange(n)).mean()),
        "same nearest neighbour": float((within_a.argmax(axis=1) == within_b.argmax(axis=1)).mean()),
        "chance": 1 / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="images embedded by each method")
    parser.add_argument("--batch", type=int, default=32, help="batch size of the project's path")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both")
    parser.add_argument("--side", type=int, default=425, help="stimulus side (NSD: 425)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", load_weights=False)
    model.eval()
    clip = FrozenClip(model, open_clip.get_tokenizer("ViT-B-32-quickgelu"), "ViT-B-32-quickgelu", "random weights")

    with tempfile.TemporaryDirectory() as root:
        rng = np.random.default_rng(0)
        n_brick = args.images * 2  # embed every other image: reading rows out of a larger brick
        smooth = rng.integers(0, 256, (n_brick, args.side // 25 + 1, args.side // 25 + 1, 3), dtype=np.uint8)
        images = smooth.repeat(25, axis=1).repeat(25, axis=2)[:, : args.side, : args.side]
        write_stimuli(root, np.ascontiguousarray(images))
        ids = np.arange(0, n_brick, 2)
        nsd = NSD(root)

        # warm-up of both paths (allocator, kernels) on a few images
        embed_image_batches(clip, nsd.iter_images(ids[:4], 4), 4)
        baseline(model, preprocess, f"{root}/{STIMULI_RELPATH}", ids[:2])

        start = time.perf_counter()
        ours = embed_image_batches(clip, nsd.iter_images(ids, args.batch), len(ids))["raw"]
        t_ours = time.perf_counter() - start
        start = time.perf_counter()
        theirs = baseline(model, preprocess, f"{root}/{STIMULI_RELPATH}", ids)
        t_base = time.perf_counter() - start

    cos = np.sum(ours * theirs, 1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    agree = agreement(ours, theirs)
    rate_ours, rate_base = len(ids) / t_ours, len(ids) / t_base
    print(f"images: {len(ids)} of {args.side}x{args.side}, threads {args.threads}, batch {args.batch}")
    print(f"project  (batched brick reads, tensor preprocessing): {rate_ours:7.2f} img/s")
    print(f"baseline (PIL + open_clip preprocess, one at a time):  {rate_base:7.2f} img/s")
    print(f"ratio project/baseline: {rate_ours / rate_base:.2f}x")
    unit = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    between = (unit @ unit.T)[~np.eye(len(unit), dtype=bool)]
    print(f"raw cosine of each image across paths: min {cos.min():.4f}; between different images: mean {between.mean():.4f}")
    print(
        f"agreement on what differs between images: centred cosine min {agree['centred cosine min']:.4f}; "
        f"top-1 identification across paths {agree['top-1 identification']:.3f} and same nearest neighbour "
        f"{agree['same nearest neighbour']:.3f} (chance {agree['chance']:.3f})"
    )


if __name__ == "__main__":
    main()
