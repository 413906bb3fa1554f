"""Embedding metrics of predicted vs true CLIP vectors: MSE, mean cosine, top-1 retrieval.

Retrieval is Mind Reader's protocol as mindreader.metrics.retrieval_hits computes it: cosine
similarity of L2-normalised vectors; "image retrieval" picks, for each predicted (brain) vector,
the most similar true vector in the pool; "brain retrieval" picks, for each true vector, the most
similar predicted vector. Top-1 among ``pool`` random test samples averaged over ``draws`` pools,
and with the whole test set as one pool; chance is 1 / pool size. With a single-trial test set,
the other trials of the same image are distractors like any other sample.
"""

from __future__ import annotations

import logging

import numpy as np

from mindreader.metrics import retrieval_hits

log = logging.getLogger(__name__)


def _top1(pred: np.ndarray, target: np.ndarray, pool: int, draws: int, seed: int) -> dict:
    hits = retrieval_hits(pred, target, pool_size=pool, draws=draws, seed=seed)
    seen = hits["appearances"].sum()
    size = min(pool, len(pred))
    return {
        "size": size,
        "draws": draws,
        "image_retrieval": float(hits["image"].sum() / seen),
        "brain_retrieval": float(hits["brain"].sum() / seen),
        "chance": 1.0 / size,
    }


def embedding_metrics(pred: np.ndarray, target: np.ndarray, nsd_id: np.ndarray, pool: int, draws: int, seed: int) -> dict:
    """MSE, mean cosine similarity and top-1 retrieval of predictions (N, D) against targets (N, D)."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if pred.shape != target.shape or pred.ndim != 2 or len(nsd_id) != len(pred):
        raise ValueError(f"embedding_metrics: pred {pred.shape}, target {target.shape}, nsd_id ({len(nsd_id)},) disagree")
    if len(np.unique(nsd_id)) < len(nsd_id):
        log.warning("test set holds repeats of images: in retrieval they count as distractors")
    unit_pred = pred / np.linalg.norm(pred, axis=1, keepdims=True).clip(1e-12)
    unit_target = target / np.linalg.norm(target, axis=1, keepdims=True).clip(1e-12)
    return {
        "n": int(len(pred)),
        "mse": float(((pred - target) ** 2).mean()),
        "cosine": float((unit_pred * unit_target).sum(axis=1).mean()),
        "retrieval": {
            "pool": _top1(pred, target, pool, draws, seed),
            "all": _top1(pred, target, len(pred), 1, seed),
        },
    }
