"""What the generator is conditioned on: the variants of the ablation table, Lafite's perturbation
of condition vectors, and the weight copy that turns a single-condition network into a
two-condition one.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

from mindreader.names import VARIANTS, Variant, get_variant

__all__ = [
    "VARIANTS",
    "Variant",
    "combine_targets",
    "expand_conditions",
    "get_variant",
    "mapper_predictions",
    "perturb",
]


def mapper_predictions(mappers: torch.nn.ModuleList, betas: torch.Tensor) -> torch.Tensor:
    """(B, M, D): each mapper's prediction from betas (B, V), computed in the mappers' own dtype
    (float64 end to end, as the fork keeps its mappers)."""
    x = betas.to(next(mappers.parameters()).dtype)
    return torch.stack([m(x) for m in mappers], dim=1)


def combine_targets(pred: torch.Tensor, n_conditions: int) -> torch.Tensor:
    """Conditions (B, n_conditions, D) from one embedding per mapper target (B, M, D): the
    embeddings themselves (one condition each), or their mean as ONE condition (the `avg`
    variant, the original's use_mapped='add')."""
    if pred.ndim != 3:
        raise ValueError(f"expected embeddings (B, M, D), got {list(pred.shape)}")
    if pred.shape[1] == n_conditions:
        return pred
    if n_conditions == 1:
        return pred.mean(dim=1, keepdim=True)
    raise ValueError(f"{pred.shape[1]} embeddings per sample cannot condition a {n_conditions}-condition generator")


def perturb(c: torch.Tensor, signal_weight: float, noise: torch.Tensor, normalize_input: bool = True) -> torch.Tensor:
    """Lafite's perturbation normalize(a * normalize(c) + (1 - a) * e), e = normalize(noise);
    with ``normalize_input`` False, normalize(a * c + (1 - a) * e): the noise mixed into c as it
    is (the fork's end-to-end training, on the mappers' raw outputs).

    a = 0.25 for language-free pre-training on image embeddings, 0.9 for text-like conditions
    (captions, mapped embeddings). ``noise`` is standard normal of c's shape (the caller draws it,
    so that ranks draw one global tensor).
    """
    if not 0.0 <= signal_weight <= 1.0:
        raise ValueError(f"perturbation signal weight must be in [0, 1], got {signal_weight}")
    e = F.normalize(noise, dim=-1)
    signal = F.normalize(c, dim=-1) if normalize_input else c
    return F.normalize(signal_weight * signal + (1.0 - signal_weight) * e, dim=-1)


_BRANCH = re.compile(r"^(.*\.branches)\.(\d+)\.(.*)$")
_HEAD = re.compile(r"^(.*\.heads)\.(\d+)\.(.*)$")


def expand_conditions(
    source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], n_conditions: int
) -> dict[str, torch.Tensor]:
    """State dict for a K-condition network (``target`` gives names and shapes) from a
    single-condition one (``source``): every new condition branch and projection head starts as a
    copy of the first; for concatenation fusion the style affine's condition columns are split
    evenly over the copies (rescaled for the equalised-lr gain), so the expanded network given K
    identical conditions computes exactly what the source computed.
    """
    out = {}
    for name, tensor in target.items():
        if name in source and source[name].shape == tensor.shape:
            out[name] = source[name].clone()
            continue
        match = _BRANCH.match(name) or _HEAD.match(name)
        if match and int(match.group(2)) > 0:
            first = f"{match.group(1)}.0.{match.group(3)}"
            if first in source and source[first].shape == tensor.shape:
                out[name] = source[first].clone()
                continue
        if name.endswith("style.affine.weight") and name in source:
            out[name] = _split_affine(source[name], tensor.shape[1], n_conditions)
            continue
        have = list(source[name].shape) if name in source else "missing"
        raise ValueError(f"cannot initialise '{name}' {list(tensor.shape)} from the single-condition network ({have})")
    return out


def _split_affine(weight: torch.Tensor, new_in: int, n_conditions: int) -> torch.Tensor:
    """[W_w, W_c] over [w, branch] -> [W_w, W_c / K, ..., W_c / K] over [w, branch_1 .. branch_K]."""
    old_in = weight.shape[1]
    branch_width = (new_in - old_in) // (n_conditions - 1)
    w_dim = old_in - branch_width
    if w_dim <= 0 or w_dim + n_conditions * branch_width != new_in:
        raise ValueError(
            f"style affine of width {old_in} cannot be split into {n_conditions} branches of total width {new_in}"
        )
    w_part, c_part = weight[:, :w_dim], weight[:, w_dim:]
    # Stored weights are multiplied by 1/sqrt(fan_in) at run time: rescale for the wider input.
    scale = math.sqrt(new_in / old_in)
    return torch.cat([w_part] + [c_part / n_conditions] * n_conditions, dim=1) * scale
