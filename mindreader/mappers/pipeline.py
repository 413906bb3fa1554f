"""One mapper folder, end to end: read the prepared subject and the CLIP targets, fit the mapper
(gradient training or closed-form ridge), predict train and test embeddings, score the test set.

The folder results/mappers/{subject}/{mapper}/{loss}/{target}/ then holds model.safetensors,
model.json, curve.csv, pred_test.h5, pred_train.h5 and metrics.json (contracts: "Mappers").
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import torch
from torch import nn

from mindreader.io import atomic_path, write_json
from mindreader.mappers.data import read_clip_targets, read_prepared, validation_mask
from mindreader.mappers.losses import LOSSES
from mindreader.mappers.models import MAPPERS, architecture, build_mapper, save_mapper
from mindreader.mappers.retrieval import embedding_metrics
from mindreader.mappers.ridge import LinearMapper, fit_ridge
from mindreader.mappers.settings import RetrievalConfig, RidgeConfig, TrainConfig, read_section
from mindreader.mappers.train import train_network
from mindreader.runtime import seed_everything

log = logging.getLogger(__name__)

TARGETS = ("img", "cap")


@torch.no_grad()
def predict(model: nn.Module, betas: np.ndarray, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """float32 (N, D) predictions of ``model`` in eval mode."""
    model.eval()
    out = [model(torch.from_numpy(betas[i : i + batch_size]).to(device)).cpu() for i in range(0, len(betas), batch_size)]
    return torch.cat(out).numpy().astype(np.float32)


def write_curve(path: Path, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def write_predictions(path: Path, nsd_id: np.ndarray, pred: np.ndarray, truth: np.ndarray | None, attrs: Mapping[str, Any]) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("nsd_id", data=nsd_id.astype(np.int64))
            f.create_dataset("pred", data=pred.astype(np.float32))
            if truth is not None:
                f.create_dataset("target", data=truth.astype(np.float32))
            for key, value in attrs.items():
                f.attrs[key] = value


def _fit_ridge(train, clip, rows, val, cfg, device):
    rc: RidgeConfig = read_section(cfg, "ridge", RidgeConfig)
    if rc.dtype not in ("float32", "float64"):
        raise ValueError(f"mappers.ridge.dtype must be float32 or float64, got {rc.dtype!r}")
    fit = fit_ridge(
        torch.from_numpy(train.betas).to(device),
        torch.from_numpy(clip.target[rows]).to(device),
        torch.from_numpy(val).to(device),
        list(rc.alphas),
        dtype=getattr(torch, rc.dtype),
    )
    model = LinearMapper(train.betas.shape[1], clip.embed_dim).to(device)
    model.linear.weight.data.copy_(fit.weight)
    model.linear.bias.data.copy_(fit.bias)
    curve = [{"alpha": a, "val_mse": m} for a, m in sorted(fit.val_mse.items())]
    return model, curve, {"alpha": fit.alpha, "form": fit.form}


def run_mapper(
    prepared_path: str | os.PathLike,  # results/prepared/{subject}.h5
    clip_path: str | os.PathLike,  # results/clip/images.h5 (target img) or captions.h5 (target cap)
    out_dir: str | os.PathLike,  # the mapper folder to fill
    kind: str,  # cnn | ridge | mlp
    loss: str,  # one of LOSSES ("mse" for ridge)
    target: str,  # img | cap (recorded; the file decides what is predicted)
    cfg: Mapping[str, Any],  # the ``mappers`` config section
    seed: int,  # seed of the validation split, initialisation, data order and retrieval pools
    device: torch.device,
    checkpoint_dir: str | os.PathLike | None,  # resumable checkpoints, the last one kept (mindreader.checkpoint)
    subject: str = "",  # recorded in the outputs
    progress: bool = True,
) -> dict:
    """Fit, predict and score one mapper; returns the test metrics written to metrics.json."""
    if kind not in MAPPERS:
        raise ValueError(f"unknown mapper '{kind}': expected one of {', '.join(MAPPERS)}")
    if loss not in LOSSES:
        raise ValueError(f"unknown mapper loss '{loss}': expected one of {', '.join(LOSSES)}")
    if kind == "ridge" and loss != "mse":
        raise ValueError(f"ridge minimises the squared error in closed form: its loss must be 'mse', got '{loss}'")
    if target not in TARGETS:
        raise ValueError(f"unknown mapper target '{target}': expected one of {', '.join(TARGETS)}")
    out_dir = Path(out_dir)
    train, test, voxel_xyz, prepared_attrs = read_prepared(prepared_path)
    clip = read_clip_targets(clip_path)
    train_rows, test_rows = clip.rows(train.nsd_id), clip.rows(test.nsd_id)
    tc: TrainConfig = read_section(cfg, "train", TrainConfig)
    val = validation_mask(train.nsd_id, tc.val_fraction, seed)
    n_voxels = train.betas.shape[1]
    log.info("%s %s/%s/%s: %d training samples (%d for validation), %d test, %d voxels -> %d dims on %s",
             subject, kind, loss, target, len(train.nsd_id), int(val.sum()), len(test.nsd_id), n_voxels,
             clip.embed_dim, device)

    hyper = architecture(kind, cfg)
    if kind == "ridge":
        model, curve, fit_info = _fit_ridge(train, clip, train_rows, val, cfg, device)
    else:
        seed_everything(seed)
        model = build_mapper(kind, n_voxels, clip.embed_dim, cfg, voxel_xyz).to(device)
        fingerprint = {"kind": kind, "loss": loss, "target": target, "hyper": hyper, "loss_cfg": dict(cfg["loss"]),
                       "n_voxels": n_voxels, "embed_dim": clip.embed_dim}
        result = train_network(model, train.betas, clip.target, clip.aug_target, train_rows, val, loss, cfg, seed,
                               device, checkpoint_dir, fingerprint, progress=progress)
        model.load_state_dict(result.state_dict)
        curve = result.curve
        fit_info = {"best_epoch": result.best_epoch, "best_val_loss": result.best_val, "steps": result.steps}

    info = {"subject": subject, "loss": loss, "target": target, "seed": seed, "fit": fit_info,
            "n_train": int((~val).sum()), "n_val": int(val.sum())}
    save_mapper(out_dir, kind, model, hyper, **info)
    write_curve(out_dir / "curve.csv", curve)
    pred_test = predict(model, test.betas, device)
    pred_train = predict(model, train.betas, device)
    target_test = clip.target[test_rows]
    attrs = {"subject": subject, "mapper": kind, "loss": loss, "target": target}
    write_predictions(out_dir / "pred_test.h5", test.nsd_id, pred_test, target_test, attrs)
    write_predictions(out_dir / "pred_train.h5", train.nsd_id, pred_train, None, attrs)

    rc: RetrievalConfig = read_section(cfg, "retrieval", RetrievalConfig)
    metrics = {**attrs, **embedding_metrics(pred_test, target_test, test.nsd_id, rc.pool, rc.draws, seed),
               "fit": fit_info, "prepared": prepared_attrs}
    write_json(out_dir / "metrics.json", metrics)
    pool, whole = metrics["retrieval"]["pool"], metrics["retrieval"]["all"]
    log.info("test: mse %.4g, cosine %.3f; top-1 among %d: image %.3f, brain %.3f (chance %.3f); among all %d: "
             "image %.3f, brain %.3f (chance %.4f)", metrics["mse"], metrics["cosine"], pool["size"],
             pool["image_retrieval"], pool["brain_retrieval"], pool["chance"], whole["size"],
             whole["image_retrieval"], whole["brain_retrieval"], whole["chance"])
    return metrics
