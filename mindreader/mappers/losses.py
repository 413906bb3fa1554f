"""Mapper losses: mse, cos, mse_cos, contrastive, mse_cos_contrastive (method.md "Losses").

Every loss returns a dict of named terms with the total under "loss", so training curves and the
generator's end-to-end variant can log each term. Weights and temperature come from the config's
``mappers.loss`` section (defaults: the paper's w = 0.6, tau = 0.5, lambda = 0.5, p = 0.5).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F

from mindreader.mappers.settings import LossConfig, read_section

LOSSES = ("mse", "cos", "mse_cos", "contrastive", "mse_cos_contrastive")


def mse_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element."""
    return F.mse_loss(pred, target)


def cos_term(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over samples of 1 - cosine similarity."""
    return (1.0 - F.cosine_similarity(pred, target, dim=1)).mean()


def similarity_logits(pred: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, B) cosine similarities of prediction i with target j, divided by the temperature."""
    return F.normalize(pred, dim=1) @ F.normalize(target, dim=1).T / temperature


def contrastive_term(pred: torch.Tensor, target: torch.Tensor, temperature: float, row_weight: float) -> torch.Tensor:
    """Symmetric InfoNCE: each prediction picks its target among the batch's targets (rows) and
    each target its prediction (columns); the two cross-entropies weighted lambda and 1 - lambda."""
    logits = similarity_logits(pred, target, temperature)
    labels = torch.arange(logits.shape[0], device=logits.device)
    rows = F.cross_entropy(logits, labels)
    columns = F.cross_entropy(logits.T, labels)
    return row_weight * rows + (1.0 - row_weight) * columns


def mapper_loss(name: str, pred: torch.Tensor, target: torch.Tensor, cfg: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The loss ``name`` of predictions (B, D) against targets (B, D), as named terms plus "loss".

    ``cfg`` is the ``mappers`` config section (only its ``loss`` block is read).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown mapper loss '{name}': expected one of {', '.join(LOSSES)}")
    if pred.ndim != 2 or pred.shape != target.shape:
        raise ValueError(f"mapper_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be (B, D)")
    weights = read_section(cfg, "loss", LossConfig)
    terms: dict[str, torch.Tensor] = {}
    if name in ("mse", "mse_cos", "mse_cos_contrastive"):
        terms["mse"] = mse_term(pred, target)
    if name in ("cos", "mse_cos", "mse_cos_contrastive"):
        terms["cos"] = cos_term(pred, target)
    if name in ("contrastive", "mse_cos_contrastive"):
        terms["contrastive"] = contrastive_term(pred, target, weights.temperature, weights.row_weight)

    if name in ("mse", "cos", "contrastive"):
        terms["loss"] = terms[name]
        return terms
    w = weights.cos_weight
    terms["mse_cos"] = (1.0 - w) * terms["mse"] + w * terms["cos"]
    if name == "mse_cos":
        terms["loss"] = terms["mse_cos"]
    else:
        p = weights.contrastive_weight
        terms["loss"] = (1.0 - p) * terms["mse_cos"] + p * terms["contrastive"]
    return terms


def uses_contrastive(name: str) -> bool:
    """Whether the loss has a contrastive term (it then trains with the larger batch)."""
    return "contrastive" in name
