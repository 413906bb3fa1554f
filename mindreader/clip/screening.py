"""Caption screening: score every caption of an image by CLIP, keep all scores, select by a rule.

The original "vetted" its captions with CLIP but did not release the script (method.md). Here
each caption's score is the cosine similarity of its CLIP embedding with its image's, and the
caption a mapper learns to predict is chosen by a configured rule:
- best: the highest-scoring caption (ties: the first in COCO's order);
- topk_mean: the mean raw embedding of the k best captions (the text shown is the best one);
- random_topk: one of the k best, drawn with the workflow's seed.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mindreader.clip.embed import clip_targets
from mindreader.clip.models import FrozenClip
from mindreader.io import atomic_path

log = logging.getLogger(__name__)

SCREENING_RULES = ("best", "topk_mean", "random_topk")


def caption_scores(image_raw: np.ndarray, caption_raw: np.ndarray) -> np.ndarray:
    """Cosine similarity of one image embedding (D,) with each of its captions (M, D) -> (M,)."""
    image = image_raw / np.linalg.norm(image_raw)
    captions = caption_raw / np.linalg.norm(caption_raw, axis=1, keepdims=True)
    return (captions @ image).astype(np.float32)


def select_captions(
    scores: np.ndarray,  # (M,) CLIP scores of one image's captions
    rule: str,  # best | topk_mean | random_topk
    k: int,  # how many top captions topk_mean averages and random_topk draws from
    rng: np.random.Generator,  # used by random_topk only
) -> np.ndarray:
    """Indices of the selected captions, best first: one for best/random_topk, up to k for topk_mean."""
    if rule not in SCREENING_RULES:
        raise ValueError(f"caption screening rule must be one of {SCREENING_RULES}, got {rule!r}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(scores) == 0:
        raise ValueError("an image has no captions to select from")
    order = np.argsort(-np.asarray(scores), kind="stable")  # stable: ties keep COCO's order
    if rule == "best":
        return order[:1]
    if rule == "topk_mean":
        return order[:k]
    return order[[rng.integers(min(k, len(order)))]]


def screen_captions(
    clip: FrozenClip,  # the CLIP that embedded the images
    nsd_ids: np.ndarray,  # (N,) ids of images.h5, ascending
    image_raw: np.ndarray,  # (N, D) raw image embeddings of images.h5
    captions: Mapping[int, Sequence[str]],  # nsdId -> its captions
    rule: str,  # best | topk_mean | random_topk
    k: int,  # top-k size of topk_mean and random_topk
    batch_size: int,  # captions per CLIP forward pass
    seed: int,  # seed of random_topk
) -> dict[str, np.ndarray]:
    """Embed every caption, score it with its image, select per image; arrays for captions.h5."""
    if len(nsd_ids) > 1 and not np.all(np.diff(nsd_ids) > 0):
        raise ValueError("nsd_ids must be unique and ascending, as in images.h5")
    missing = [int(i) for i in nsd_ids if not captions.get(int(i))]
    if missing:
        raise ValueError(f"{len(missing)} images have no captions (first nsdIds: {missing[:10]})")
    owner = np.concatenate([np.full(len(captions[int(i)]), int(i), dtype=np.int64) for i in nsd_ids])
    texts = [c for i in nsd_ids for c in captions[int(i)]]
    all_raw = embed_texts(clip, texts, batch_size)
    rng = np.random.default_rng(seed)
    starts = np.searchsorted(owner, nsd_ids)
    ends = np.append(starts[1:], len(owner))
    scores = np.empty(len(texts), dtype=np.float32)
    selected_raw = np.empty((len(nsd_ids), all_raw.shape[1]), dtype=np.float32)
    selected_text, selected_score = [], np.empty(len(nsd_ids), dtype=np.float32)
    for row, (start, end) in enumerate(zip(starts, ends)):
        scores[start:end] = caption_scores(image_raw[row], all_raw[start:end])
        chosen = start + select_captions(scores[start:end], rule, k, rng)
        selected_raw[row] = all_raw[chosen].mean(axis=0)
        selected_text.append(texts[chosen[0]])
        selected_score[row] = scores[chosen].mean()
    return {
        "nsd_id": np.asarray(nsd_ids, dtype=np.int64),
        "caption": np.asarray(selected_text, dtype=object),
        "score": selected_score,
        "raw": selected_raw,
        "all_nsd_id": owner,
        "all_caption": np.asarray(texts, dtype=object),
        "all_score": scores,
    }


def embed_texts(clip: FrozenClip, texts: list[str], batch_size: int) -> np.ndarray:
    """(M, D) float32 raw text embeddings, in batches with a progress bar."""
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, len(texts), batch_size), desc="embed captions", unit="batch"):
            out.append(clip.encode_texts(texts[start : start + batch_size]).float().cpu().numpy())
    return np.concatenate(out) if out else np.empty((0, clip.embed_dim), dtype=np.float32)


def write_caption_embeddings(
    h5_path: str | os.PathLike,  # results/clip/captions.h5
    tsv_path: str | os.PathLike,  # results/clip/captions_selected.tsv, for people
    screened: Mapping[str, np.ndarray],  # from screen_captions
    clip: FrozenClip,
    rule: str,
    k: int,
    clamp: float,
    normalize: bool,
) -> None:
    text = h5py.string_dtype()
    with atomic_path(h5_path) as tmp, h5py.File(tmp, "w") as f:
        f["nsd_id"] = screened["nsd_id"]
        f.create_dataset("caption", data=screened["caption"], dtype=text)
        f["score"] = screened["score"]
        f["raw"] = screened["raw"]
        f["target"] = clip_targets(screened["raw"], clamp, normalize)
        f["all/nsd_id"] = screened["all_nsd_id"]
        f.create_dataset("all/caption", data=screened["all_caption"], dtype=text)
        f["all/score"] = screened["all_score"]
        f.attrs.update(
            model=clip.name,
            weights=clip.weights,
            embed_dim=clip.embed_dim,
            clamp=float(clamp),
            normalize=bool(normalize),
            rule=rule,
            k=int(k),
        )
    n_captions = np.bincount(np.searchsorted(screened["nsd_id"], screened["all_nsd_id"]), minlength=len(screened["nsd_id"]))
    table = pd.DataFrame(
        {
            "nsd_id": screened["nsd_id"],
            "score": np.round(screened["score"], 4),
            "n_captions": n_captions,
            "caption": [" ".join(str(c).split()) for c in screened["caption"]],
        }
    )
    with atomic_path(tsv_path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    log.info("screened %d captions of %d images (rule %s, k %d)", len(screened["all_caption"]), len(table), rule, k)
