"""The demo's CLIP: a small open_clip model trained on the synthetic image-caption pairs.

No pretrained weights can ship with the project, so the embedded default trains a tiny CLIP
(ModifiedResNet image tower, small text transformer, open_clip's ClipLoss) for a minute or two
on the CPU, never on a test image (clip.demo.corpus: every other stimulus of the tree, or the
subjects' training images), and uses it everywhere the paper uses CLIP. It is saved
as an open_clip folder (`open_clip_config.json` + `open_clip_model.safetensors`) and loaded by
`load_clip` exactly like pretrained weights. Held-out retrieval goes into its metrics.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import open_clip
import pandas as pd
import torch
from open_clip.model import CLIP, set_model_preprocess_cfg
from safetensors.torch import save_file
from tqdm import tqdm

from mindreader.clip.embed import to_float_images
from mindreader.clip.models import FOLDER_CONFIG, FOLDER_WEIGHTS, preprocess_images
from mindreader.io import atomic_path, write_json

log = logging.getLogger(__name__)

# The tokenizer's vocabulary (open_clip's SimpleTokenizer, OpenAI's BPE).
VOCAB_SIZE = 49408
# The demo normalises like OpenAI's CLIP: the synthetic scenes have no statistics of their own worth pinning.
DEMO_PREPROCESS = {
    "mean": [0.48145466, 0.4578275, 0.40821073],
    "std": [0.26862954, 0.26130258, 0.27577711],
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


def demo_model_config(demo_cfg: Mapping[str, Any]) -> dict:
    """open_clip model config (the JSON shape of open_clip/model_configs) from `clip.demo`."""
    return {
        "embed_dim": int(demo_cfg["embed_dim"]),
        "vision_cfg": {
            "image_size": int(demo_cfg["image_size"]),
            "layers": [int(n) for n in demo_cfg["vision_layers"]],
            "width": int(demo_cfg["vision_width"]),
            "patch_size": None,  # None: ModifiedResNet, not a ViT
        },
        "text_cfg": {
            "context_length": int(demo_cfg["context_length"]),
            "vocab_size": VOCAB_SIZE,
            "width": int(demo_cfg["text_width"]),
            "heads": int(demo_cfg["text_heads"]),
            "layers": int(demo_cfg["text_layers"]),
        },
    }


@dataclass
class CaptionedImages:
    """Images with their captions, pre-tokenised, for contrastive training and retrieval."""

    images: np.ndarray  # uint8 (N, H, W, 3)
    tokens: torch.Tensor  # (M, context_length) token ids of all captions, image by image
    first_caption: np.ndarray  # (N,) row in ``tokens`` of each image's first caption
    n_captions: np.ndarray  # (N,) captions per image

    @classmethod
    def from_captions(cls, images: np.ndarray, captions: Sequence[Sequence[str]], tokenizer) -> "CaptionedImages":
        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} caption lists")
        empty = [i for i, c in enumerate(captions) if not c]
        if empty:
            raise ValueError(f"{len(empty)} images have no captions (rows {empty[:10]})")
        n_captions = np.array([len(c) for c in captions])
        first = np.concatenate([[0], np.cumsum(n_captions)[:-1]])
        return cls(images, tokenizer([t for c in captions for t in c]), first, n_captions)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: np.ndarray) -> "CaptionedImages":
        return CaptionedImages(self.images[rows], self.tokens, self.first_caption[rows], self.n_captions[rows])

    def batch(self, rows: np.ndarray, rng: np.random.Generator | None, device: torch.device):
        """Images of ``rows`` and one caption each: random with ``rng``, else the first."""
        offset = rng.integers(self.n_captions[rows]) if rng is not None else 0
        tokens = self.tokens[self.first_caption[rows] + offset]
        return to_float_images(self.images[rows], device), tokens.to(device)


def build_demo_clip(demo_cfg: Mapping[str, Any]) -> tuple[CLIP, Any]:
    """A randomly initialised demo CLIP (open_clip's CLIP class from our config) and its tokenizer."""
    model = CLIP(**demo_model_config(demo_cfg))
    set_model_preprocess_cfg(model, {"size": int(demo_cfg["image_size"]), **DEMO_PREPROCESS})
    tokenizer = open_clip.SimpleTokenizer(context_length=int(demo_cfg["context_length"]))
    return model, tokenizer


def encode_pair(model: CLIP, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-norm image and text features, images preprocessed the way FrozenClip does."""
    cfg = model.visual.preprocess_cfg
    x = preprocess_images(images, cfg["size"], cfg["mean"], cfg["std"], cfg["interpolation"], cfg["resize_mode"])
    return model.encode_image(x, normalize=True), model.encode_text(tokens, normalize=True)


def retrieval_top1(model: CLIP, data: CaptionedImages, device: torch.device, batch_size: int) -> dict[str, float]:
    """Top-1 retrieval between each image and its first caption among all of ``data``; chance 1/N."""
    model.eval()
    image_f, text_f = [], []
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            rows = np.arange(start, min(start + batch_size, len(data)))
            img, txt = encode_pair(model, *data.batch(rows, None, device))
            image_f.append(img)
            text_f.append(txt)
    sim = torch.cat(image_f) @ torch.cat(text_f).T
    truth = torch.arange(len(data), device=sim.device)
    return {
        "n": len(data),
        "image_to_caption_top1": float((sim.argmax(1) == truth).float().mean()),
        "caption_to_image_top1": float((sim.argmax(0) == truth).float().mean()),
        "chance": 1.0 / len(data),
    }


def train_demo_clip(
    train: CaptionedImages,  # training images (never the test images of any subject)
    heldout: CaptionedImages,  # held-out images, for the retrieval check only
    demo_cfg: Mapping[str, Any],  # config["clip"]["demo"]
    model: CLIP,  # from build_demo_clip, randomly initialised
    device: torch.device,
    seed: int,
) -> tuple[pd.DataFrame, dict]:
    """Train ``model`` in place with open_clip's ClipLoss; return the loss curve and the metrics."""
    rng = np.random.default_rng(seed)
    steps, batch_size = int(demo_cfg["steps"]), min(int(demo_cfg["batch_size"]), len(train))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]  # gains, biases, logit scale
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(demo_cfg["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}],
        lr=float(demo_cfg["lr"]),
    )
    warmup = max(1, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    loss_fn = open_clip.ClipLoss()
    model.to(device).train()
    curve, order, start_time = [], np.empty(0, dtype=np.int64), time.perf_counter()
    for step in tqdm(range(steps), desc="train demo CLIP", unit="step"):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(train))])
        rows, order = order[:batch_size], order[batch_size:]
        image_f, text_f = encode_pair(model, *train.batch(rows, rng, device))
        loss = loss_fn(image_f, text_f, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))  # CLIP's cap on the temperature
        curve.append({"step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0]})
        if step % max(1, steps // 10) == 0 or step == steps - 1:
            log.info("step %d/%d loss %.4f", step + 1, steps, curve[-1]["loss"])
    seconds = time.perf_counter() - start_time
    metrics = {
        "steps": steps,
        "batch_size": batch_size,
        "train_seconds": round(seconds, 1),
        "seconds_per_step": round(seconds / max(steps, 1), 4),
        "n_train_images": len(train),
        "final_loss": curve[-1]["loss"] if curve else None,
        "heldout": retrieval_top1(model, heldout, device, batch_size),
        "train_subset": retrieval_top1(model, _subset(train, len(heldout), seed), device, batch_size),
    }
    log.info(
        "held-out image->caption top-1 %.3f, caption->image %.3f (chance %.4f, %d images)",
        metrics["heldout"]["image_to_caption_top1"],
        metrics["heldout"]["caption_to_image_top1"],
        metrics["heldout"]["chance"],
        metrics["heldout"]["n"],
    )
    return pd.DataFrame(curve), metrics


def _subset(data: CaptionedImages, n: int, seed: int) -> CaptionedImages:
    """``n`` training images: retrieval among as many candidates as held out, to compare fairly."""
    rows = np.sort(np.random.default_rng(seed).permutation(len(data))[: max(1, min(n, len(data)))])
    return data.subset(rows)


def save_demo_clip(model: CLIP, demo_cfg: Mapping[str, Any], folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write the open_clip folder: config JSON (model + preprocessing) and safetensors weights."""
    folder = Path(folder)
    config_file, weights_file = folder / FOLDER_CONFIG, folder / FOLDER_WEIGHTS
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(weights_file) as tmp:
        save_file(state, str(tmp))
    write_json(config_file, {"model_cfg": demo_model_config(demo_cfg), "preprocess_cfg": model.visual.preprocess_cfg})
    return config_file, weights_file
