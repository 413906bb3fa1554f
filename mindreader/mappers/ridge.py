"""Ridge regression from voxels to CLIP embeddings, in closed form, as a baseline beyond the paper.

One symmetric decomposition serves every alpha and all embedding dimensions: the eigendecomposition
of the centred Gram matrix X X^T of the training part when there are fewer samples than voxels
(dual form), of X^T X otherwise (primal form). The alpha with the lowest validation MSE is kept,
and the model is refitted on all training samples with it (one Cholesky solve). Intercepts are
fitted (X and Y centred on their means), as scikit-learn's Ridge does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)


class LinearMapper(nn.Module):
    """(B, n_voxels) -> (B, embed_dim): the ridge solution as a module, so it loads like the others."""

    def __init__(
        self,
        n_voxels: int,  # voxels in the input
        embed_dim: int = 512,  # CLIP embedding size
    ):
        super().__init__()
        self.n_voxels = n_voxels
        self.embed_dim = embed_dim
        self.linear = nn.Linear(n_voxels, embed_dim)

    def forward(self, betas: torch.Tensor) -> torch.Tensor:
        if betas.ndim != 2 or betas.shape[1] != self.n_voxels:
            raise ValueError(f"LinearMapper: expected betas (B, {self.n_voxels}), got {tuple(betas.shape)}")
        return self.linear(betas)


@dataclass
class RidgeFit:
    weight: torch.Tensor  # (D, V), as nn.Linear stores it
    bias: torch.Tensor  # (D,)
    alpha: float  # the chosen penalty
    val_mse: dict[float, float]  # validation MSE of each alpha tried (empty with one alpha)
    form: str  # "dual" (X X^T) or "primal" (X^T X)


def _centre_gram(gram: torch.Tensor) -> torch.Tensor:
    """(X - 1 mu^T)(X - 1 mu^T)^T from X X^T alone, mu the mean row of X."""
    row = gram.mean(dim=1, keepdim=True)
    return gram - row - row.T + gram.mean()


def _validation_mse(features_val: torch.Tensor, vecs: torch.Tensor, eigs: torch.Tensor, rhs: torch.Tensor,
                    y_val_centred: torch.Tensor, alphas: list[float]) -> dict[float, float]:
    """MSE on the validation part for every alpha: pred = features_val V diag(1/(s + a)) rhs."""
    projected = features_val @ vecs
    scores = {}
    for alpha in alphas:
        pred = projected @ (rhs / (eigs + alpha)[:, None])
        scores[alpha] = float(((pred - y_val_centred) ** 2).mean())
    return scores


def _select_dual(gram, y, train, val, alphas):
    g_tt = gram[train][:, train]
    g_vt = gram[val][:, train]
    row_t = g_tt.mean(dim=1)
    mean_t = g_tt.mean()
    k_val = g_vt - g_vt.mean(dim=1, keepdim=True) - row_t[None, :] + mean_t  # centred X_val X_tr^T
    y_mean = y[train].mean(dim=0)
    eigs, vecs = torch.linalg.eigh(_centre_gram(g_tt))
    rhs = vecs.T @ (y[train] - y_mean)
    return _validation_mse(k_val, vecs, eigs, rhs, y[val] - y_mean, alphas)


def _select_primal(x, y, train, val, alphas, cov_train):
    mu = x[train].mean(dim=0)
    y_mean = y[train].mean(dim=0)
    cov = cov_train - len(train) * torch.outer(mu, mu)
    eigs, vecs = torch.linalg.eigh(cov)
    rhs = vecs.T @ (x[train].T @ (y[train] - y_mean) - torch.outer(mu, (y[train] - y_mean).sum(dim=0)))
    return _validation_mse(x[val] - mu, vecs, eigs, rhs, y[val] - y_mean, alphas)


def _solve(matrix: torch.Tensor, alpha: float, rhs: torch.Tensor) -> torch.Tensor:
    """(matrix + alpha I)^-1 rhs by Cholesky."""
    eye = torch.eye(matrix.shape[0], dtype=matrix.dtype, device=matrix.device)
    return torch.cholesky_solve(rhs, torch.linalg.cholesky(matrix + alpha * eye))


def fit_ridge(
    x: torch.Tensor,  # (N, V) training betas
    y: torch.Tensor,  # (N, D) targets
    val: torch.Tensor | None,  # bool (N,): samples held out to choose alpha; None with one alpha
    alphas: list[float],  # penalties to try
    dtype: torch.dtype = torch.float32,  # precision of the products and decompositions
) -> RidgeFit:
    """Choose alpha on the validation samples, then refit on all N samples with it."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"fit_ridge: expected x (N, V) and y (N, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    if not alphas or min(alphas) <= 0:
        raise ValueError(f"fit_ridge: alphas must be positive, got {alphas}")
    x = x.to(dtype)
    y = y.to(dtype)
    n, v = x.shape
    dual = n <= v
    alphas = sorted(float(a) for a in alphas)
    # The one big product: X X^T (dual) or X^T X (primal, accumulated over the two parts below).
    gram = x @ x.T if dual else None
    scores: dict[float, float] = {}
    if len(alphas) > 1:
        if val is None or not bool(val.any()) or bool(val.all()):
            raise ValueError("fit_ridge: several alphas need a non-empty validation split and training samples")
        train_idx = torch.nonzero(~val).squeeze(1).to(x.device)
        val_idx = torch.nonzero(val).squeeze(1).to(x.device)
        if dual:
            scores = _select_dual(gram, y, train_idx, val_idx, alphas)
        else:
            cov_train = x[train_idx].T @ x[train_idx]
            scores = _select_primal(x, y, train_idx, val_idx, alphas, cov_train)
            gram = cov_train + x[val_idx].T @ x[val_idx]
        alpha = min(scores, key=scores.get)
        if alpha in (alphas[0], alphas[-1]):
            log.warning("ridge: the chosen alpha %g is at the edge of the grid %s; widen mappers.ridge.alphas", alpha, alphas)
    else:
        alpha = alphas[0]

    mu = x.mean(dim=0)
    y_mean = y.mean(dim=0)
    y_centred = y - y_mean
    if dual:
        dual_coef = _solve(_centre_gram(gram), alpha, y_centred)  # (N, D)
        weight = x.T @ dual_coef - torch.outer(mu, dual_coef.sum(dim=0))  # (V, D) = X_c^T C
    else:
        cov = (x.T @ x if gram is None else gram) - n * torch.outer(mu, mu)
        weight = _solve(cov, alpha, x.T @ y_centred)  # X_c^T Y_c = X^T Y_c as Y_c sums to 0
    bias = y_mean - mu @ weight
    log.info("ridge (%s form, %d samples, %d voxels): alpha %g; validation MSE per alpha %s",
             "dual" if dual else "primal", n, v, alpha, scores)
    return RidgeFit(weight=weight.T.contiguous(), bias=bias, alpha=alpha, val_mse=scores,
                    form="dual" if dual else "primal")
