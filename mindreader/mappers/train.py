"""Gradient training of a mapper (cnn, mlp): Adam, step learning-rate schedule, best-validation
weights, and checkpoints that make an interrupted run end exactly where an uninterrupted one would.

The data order of epoch e is a permutation drawn from ``default_rng([seed, e])``, and so is the
choice of augmented target per training (and validation) sample with view_draw random; with fresh,
each sample reads its views in an order drawn once from the seed (fresh_view_order). A resumed run
recomputes them instead of storing them; the torch RNG (dropout) and the optimiser state are stored
in the checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mindreader.checkpoint import (
    StopOnSignal,
    TrainingInterrupted,
    flatten_tensors,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unflatten_tensors,
)
from mindreader.mappers.losses import mapper_loss, uses_contrastive
from mindreader.mappers.settings import TrainConfig, read_section
from mindreader.names import check_view_draw

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs (stored as the checkpoint's JSON)."""

    fingerprint: dict  # what was trained on what: a checkpoint with another one is ignored
    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in the current epoch
    step: int = 0  # optimiser steps in total
    sums: dict = field(default_factory=dict)  # sample-weighted sums of the loss terms this epoch
    count: int = 0  # samples seen this epoch
    best_val: float | None = None  # lowest validation loss so far
    best_epoch: int = 0  # epoch (1-based) of the best weights; 0 before the first
    curve: list = field(default_factory=list)  # one row per completed epoch


@dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]  # the best-validation weights (the last ones without validation)
    best_epoch: int
    best_val: float | None
    curve: list[dict[str, float]]
    steps: int


def _normalised(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists), so fingerprints compare equal."""
    return json.loads(json.dumps(obj))


def evaluate_loss(model: nn.Module, betas: torch.Tensor, targets: torch.Tensor, loss: str,
                  cfg: Mapping[str, Any], batch_size: int) -> dict[str, float]:
    """Sample-weighted mean of each loss term over fixed-order batches, in eval mode."""
    model.eval()
    sums: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(betas), batch_size):
            terms = mapper_loss(loss, model(betas[start : start + batch_size]), targets[start : start + batch_size], cfg)
            n = len(betas[start : start + batch_size])
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
    return {name: value / len(betas) for name, value in sums.items()}


def set_epoch_lr(optimizer: torch.optim.Optimizer, tc: TrainConfig, epoch: int, resumed_mid_epoch: bool) -> float:
    """Set and return the learning rate of ``epoch`` (0-based): lr x lr_gamma every lr_step_epochs.

    With ``reset_optimizer_on_decay``, the epoch that steps the rate starts with empty optimiser
    state (zero moments, step count 0), as the original's Adam re-created at each decay; not when
    a checkpoint taken inside that epoch is resumed (its state is already the new optimiser's)."""
    lr = tc.lr * tc.lr_gamma ** (epoch // tc.lr_step_epochs)
    if tc.reset_optimizer_on_decay and epoch > 0 and epoch % tc.lr_step_epochs == 0 and not resumed_mid_epoch:
        optimizer.state.clear()
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _draw_views(rng: np.random.Generator, views: torch.Tensor | None, n: int, device: torch.device):
    """Which of the K augmented targets each of ``n`` samples reads (None when ``views`` is None)."""
    return torch.from_numpy(rng.integers(views.shape[1], size=n)).to(device) if views is not None else None


def fresh_view_order(seed: int, n_samples: int, n_views: int) -> np.ndarray:
    """int (n_samples, n_views): row i a permutation of the K views, the order in which sample i
    reads them with view_draw fresh (epoch e: column e), so no sample reads a view twice in K
    epochs. Drawn once from a child of the seed's SeedSequence, a stream apart from the epochs'
    [seed, e], so a resumed run recomputes it."""
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    return rng.permuted(np.tile(np.arange(n_views), (n_samples, 1)), axis=1)


class _Checkpointer:
    """Saves and restores model, optimiser, RNG, best weights and TrainState in one folder."""

    def __init__(self, directory: str | os.PathLike | None, model: nn.Module, optimizer: torch.optim.Optimizer):
        self.directory = directory
        self.model = model
        self.optimizer = optimizer

    def save(self, state: TrainState, best: dict[str, torch.Tensor] | None) -> None:
        if self.directory is None:
            return
        opt_tensors, opt_meta = optimizer_state(self.optimizer, "optim")
        rng_tensors, rng_meta = rng_state()
        tensors = {**flatten_tensors("model", self.model.state_dict()), **opt_tensors, **rng_tensors}
        if best is not None:
            tensors.update(flatten_tensors("best", best))
        save_checkpoint(self.directory, tensors, {**state.__dict__, "optim": opt_meta, "rng": rng_meta})

    def restore(self, fingerprint: dict) -> tuple[TrainState, dict[str, torch.Tensor] | None] | None:
        found = load_checkpoint(self.directory) if self.directory is not None else None
        if found is None:
            return None
        tensors, meta = found
        if meta.get("fingerprint") != fingerprint:
            log.warning("checkpoint in %s was made for another setting; starting over", self.directory)
            return None
        self.model.load_state_dict(unflatten_tensors("model", tensors))
        load_optimizer_state(self.optimizer, "optim", tensors, meta["optim"])
        set_rng_state(tensors, meta["rng"])
        best = unflatten_tensors("best", tensors) or None
        state = TrainState(**{k: meta[k] for k in TrainState.__dataclass_fields__})
        return state, best


def train_network(
    model: nn.Module,  # a freshly built mapper, already on ``device``
    betas: np.ndarray,  # float32 (N, V): every training sample
    target_table: np.ndarray,  # float32 (M, D): the target of each image
    aug_table: np.ndarray | None,  # float32 (M, K, D): K augmented targets of each image, or None
    rows: np.ndarray,  # int (N,): the image (row of the tables) of each sample
    val: np.ndarray,  # bool (N,): samples held out for validation (all False: keep the last epoch)
    loss: str,  # mapper loss name (losses.LOSSES)
    cfg: Mapping[str, Any],  # the ``mappers`` config section
    seed: int,  # seed of the data order and augmentation choices
    device: torch.device,
    checkpoint_dir: str | os.PathLike | None,  # resumable checkpoints go here; None: no checkpoints
    fingerprint: Mapping[str, Any],  # identifies the setting; a checkpoint with another one is ignored
    progress: bool = True,  # show a tqdm bar over epochs
) -> TrainResult:
    tc: TrainConfig = read_section(cfg, "train", TrainConfig)
    if rows.shape != (betas.shape[0],) or val.shape != rows.shape:
        raise ValueError(f"train_network: betas {betas.shape}, rows {rows.shape} and val {val.shape} disagree")
    batch_size = tc.batch_size if uses_contrastive(loss) else tc.batch_size_plain
    use_aug = aug_table is not None and (tc.augmented_targets or tc.augmented_validation)
    check_view_draw(cfg["train"], aug_table.shape[1] if use_aug else 0)
    # only the samples' images go to the device: the CLIP file holds every subject's stimuli
    images, image_of_sample = np.unique(rows, return_inverse=True)
    x = torch.from_numpy(np.ascontiguousarray(betas)).to(device)
    y = torch.from_numpy(np.ascontiguousarray(target_table[images])).to(device)
    y_aug = torch.from_numpy(aug_table[images]).to(device) if use_aug else None
    train_aug = y_aug if tc.augmented_targets else None
    val_aug = y_aug if tc.augmented_validation else None
    fresh = use_aug and tc.view_draw == "fresh"
    fresh_views = fresh_view_order(seed, len(betas), aug_table.shape[1]) if fresh else None
    row_of = torch.from_numpy(image_of_sample.astype(np.int64)).to(device)
    train_idx = np.flatnonzero(~val)
    val_idx = torch.from_numpy(np.flatnonzero(val)).to(device)
    if len(train_idx) == 0:
        raise ValueError("train_network: every sample is in the validation split")

    optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    checkpointer = _Checkpointer(checkpoint_dir, model, optimizer)
    fingerprint = _normalised({**fingerprint, "train": tc.__dict__, "n_samples": len(betas), "seed": seed})
    restored = checkpointer.restore(fingerprint)
    state, best = restored if restored is not None else (TrainState(fingerprint=fingerprint), None)
    total_steps = tc.epochs * -(-len(train_idx) // batch_size)
    first_step = state.step
    if restored is not None:
        log.info("resumed from step %d of %d (epoch %d, batch %d)", state.step, total_steps, state.epoch, state.batch)

    bar = tqdm(total=tc.epochs, initial=state.epoch, desc="epochs", disable=not progress, dynamic_ncols=True)
    with StopOnSignal() as stop:
        for epoch in range(state.epoch, tc.epochs):
            lr = set_epoch_lr(optimizer, tc, epoch, resumed_mid_epoch=state.batch > 0)
            rng = np.random.default_rng([seed, epoch])
            order = torch.from_numpy(rng.permutation(train_idx)).to(device)
            if fresh_views is None:
                pick = _draw_views(rng, train_aug, len(order), device)
                val_pick = _draw_views(rng, val_aug, len(val_idx), device)
            else:  # validation reads fresh views too, as the original's split of one augmented dataset
                views = torch.from_numpy(fresh_views[:, epoch]).to(device)
                pick, val_pick = views[order], views[val_idx]
            n_batches = -(-len(order) // batch_size)
            model.train()
            for b in range(state.batch, n_batches):
                idx = order[b * batch_size : (b + 1) * batch_size]
                if train_aug is not None:
                    target = train_aug[row_of[idx], pick[b * batch_size : (b + 1) * batch_size]]
                else:
                    target = y[row_of[idx]]
                terms = mapper_loss(loss, model(x[idx]), target, cfg)
                optimizer.zero_grad(set_to_none=True)
                terms["loss"].backward()
                optimizer.step()
                state.step += 1
                state.batch = b + 1
                state.count += len(idx)
                for name, value in terms.items():
                    state.sums[name] = state.sums.get(name, 0.0) + float(value.detach()) * len(idx)
                if stop.requested:
                    checkpointer.save(state, best)
                    raise TrainingInterrupted(f"stopped by signal at step {state.step}")
                if state.step % tc.checkpoint_every == 0:
                    checkpointer.save(state, best)

            row = {"epoch": epoch + 1, "lr": lr, **{f"train_{k}": v / state.count for k, v in sorted(state.sums.items())}}
            if len(val_idx):
                val_target = val_aug[row_of[val_idx], val_pick] if val_aug is not None else y[row_of[val_idx]]
                val_terms = evaluate_loss(model, x[val_idx], val_target, loss, cfg, batch_size)
                row.update({f"val_{k}": v for k, v in sorted(val_terms.items())})
                if state.best_val is None or val_terms["loss"] < state.best_val:
                    state.best_val = val_terms["loss"]
                    state.best_epoch = epoch + 1
                    best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            state.curve.append(row)
            state.epoch, state.batch, state.sums, state.count = epoch + 1, 0, {}, 0
            log.info("epoch %d/%d: %s", epoch + 1, tc.epochs, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch"))
            bar.update(1)
            bar.set_postfix(train=row["train_loss"], val=row.get("val_loss"))
            if stop.requested:
                checkpointer.save(state, best)
                raise TrainingInterrupted(f"stopped by signal after epoch {epoch + 1}")
    bar.close()
    log.info("ran steps %d to %d of %d in this process", first_step + 1, state.step, total_steps)
    if best is None:
        best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        state.best_epoch = tc.epochs
    return TrainResult(state_dict=best, best_epoch=state.best_epoch, best_val=state.best_val,
                       curve=state.curve, steps=state.step)
