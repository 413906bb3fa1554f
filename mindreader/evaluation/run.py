"""Evaluation of one reconstruction run: ground truth vs reconstructions, every metric with its
bootstrap 95 % CI, written as the run's metrics JSON plus a per-image CSV (aligned by nsdId)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
import pandas as pd
import torch

from mindreader.evaluation.battery import (
    FID_PROTOCOLS,
    METRICS,
    BatteryConfig,
    FeatureSource,
    evaluate_images,
    not_requested,
)
from mindreader.evaluation.bootstrap import CI_METHODS
from mindreader.evaluation.networks import FID_NETWORK, SPECS, load_network
from mindreader.io import atomic_path, read_json, write_json
from mindreader.names import RECONSTRUCTION_SOURCES
from mindreader.weights import MissingWeightsError

log = logging.getLogger(__name__)

# Why the oracle rows have no retrieval metrics (they score predicted embeddings).
ORACLE_RETRIEVAL = (
    "not applicable to oracle rows: retrieval scores the mappers' predicted embeddings, and an "
    "oracle reconstruction is drawn from the true ones"
)


def battery_config(eval_cfg: Mapping[str, Any], seed: int) -> BatteryConfig:
    return BatteryConfig(
        n_boot=int(eval_cfg["bootstrap"]),
        n_boot_fd=int(eval_cfg["bootstrap_fd"]),
        batch_size=int(eval_cfg["batch_size"]),
        image_side=int(eval_cfg["image_side"]),
        retrieval_pool=int(eval_cfg["retrieval_pool"]),
        retrieval_draws=int(eval_cfg["retrieval_draws"]),
        seed=int(seed),
        fid_protocols=tuple(eval_cfg["fid_protocols"]),
        pixel_resize_via=tuple(int(side) for side in eval_cfg["pixel_resize_via"]),
    )


def generated_fid_result(
    cfg: BatteryConfig,
    result_file: str | os.PathLike | None,  # the fid_generated rule's JSON, None when it did not run
    unavailable: Mapping[str, str],  # feature name -> why its network is missing (load_sources)
) -> dict:
    """The metrics JSON's fid_generated entry: the rule's result, or why there is none."""
    if "generated" not in cfg.fid_protocols:
        return {"missing": not_requested("generated")}
    if result_file is None:
        return {"missing": unavailable.get("fid", "the fid_generated rule did not run")}
    return read_json(result_file)


def load_sources(
    eval_cfg: Mapping[str, Any], clip_cfg: Mapping[str, Any], device: torch.device
) -> tuple[dict[str, FeatureSource], dict[str, str], dict[str, str]]:
    """The feature sources whose weights are present; for the others, why not.

    Returns (sources, unavailable feature -> reason, network -> what it is or why missing).
    """
    from mindreader.clip import load_clip

    sources: dict[str, FeatureSource] = {}
    unavailable: dict[str, str] = {}
    networks: dict[str, str] = {}
    features_of = {FID_NETWORK: ["fid"], **{name: list(spec.nodes) for name, spec in SPECS.items()}}
    for name, features in features_of.items():
        net, reason = load_network(name, eval_cfg["networks"][name], device)
        if net is None:
            log.warning("%s: metrics %s will be missing: %s", name, features, reason)
            unavailable.update({f: reason for f in features})
            networks[name] = f"missing: {reason}"
        else:
            sources[name] = net
            networks[name] = "loaded"
    try:
        clip = load_clip(eval_cfg.get("clip") or clip_cfg, device)
    except MissingWeightsError as err:
        unavailable["clip"] = str(err)
        networks["clip"] = f"missing: {err}"
    else:
        sources["clip"] = lambda x: {"clip": clip.encode_images(x)}
        networks["clip"] = f"loaded: {clip.name}"
    return sources, unavailable, networks


def read_reconstructions(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images uint8 (N, H, W, 3), nsd_id (N,), attrs) of a reconstructions file."""
    with h5py.File(path, "r") as f:
        for key in ("images", "nsd_id"):
            if key not in f:
                raise ValueError(f"{path}: no dataset '{key}' (expected images and nsd_id)")
        images, nsd_id = f["images"][()], f["nsd_id"][()].astype(np.int64)
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"{path}: images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if len(nsd_id) != len(images):
        raise ValueError(f"{path}: {len(images)} images but {len(nsd_id)} nsd_id")
    return images, nsd_id, attrs


def positions(nsd_id: np.ndarray, wanted: np.ndarray, where: str | os.PathLike) -> np.ndarray:
    """Index of each wanted nsd id in ``nsd_id``; a ValueError naming ``where`` if one is absent."""
    order = np.argsort(nsd_id, kind="stable")
    found = np.searchsorted(nsd_id, wanted, sorter=order)
    found = np.minimum(found, len(nsd_id) - 1)
    index = order[found]
    absent = wanted[nsd_id[index] != wanted]
    if len(absent):
        raise ValueError(f"{where}: no nsd id(s) {absent[:5].tolist()} (expected every requested test image)")
    return index


def read_predictions(
    files: Mapping[str, str | os.PathLike], nsd_ids: np.ndarray | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mapper target (img | cap) -> (pred, target) float (N, D); with ``nsd_ids``, the rows of
    those test images in that order.

    ``files`` maps a target to a mapper's pred_test.h5 (pred, target (N, D)); a file whose pred is
    (N, K, D) (an end-to-end run's e2e_pred_test.h5) holds K targets, named by its `conditions`
    attribute, whatever its key.
    """
    found = {}
    for key, path in files.items():
        with h5py.File(path, "r") as f:
            for name in ("nsd_id", "pred", "target"):
                if name not in f:
                    raise ValueError(f"{path}: no dataset '{name}' (expected nsd_id, pred, target)")
            pred, target = f["pred"][()], f["target"][()]
            if nsd_ids is not None:
                rows = positions(f["nsd_id"][()].astype(np.int64), np.asarray(nsd_ids, dtype=np.int64), path)
                pred, target = pred[rows], target[rows]
            if pred.ndim == 3:
                conditions = str(f.attrs.get("conditions", "")).split(",")
                if len(conditions) != pred.shape[1] or pred.shape != target.shape:
                    raise ValueError(f"{path}: pred {pred.shape} / target {target.shape} do not match conditions {conditions}")
                found.update({c: (pred[:, k], target[:, k]) for k, c in enumerate(conditions)})
            else:
                found[key] = (pred, target)
    return found


def evaluate_run(
    reconstructions: str | os.PathLike,  # reconstructions/{subject}/.../{strategy}.h5
    ground_truth: np.ndarray,  # uint8 (N, H, W, 3) test images in the file's nsd_id order
    prediction_files: Mapping[str, str | os.PathLike],  # see read_predictions
    sources: Mapping[str, FeatureSource],
    unavailable: Mapping[str, str],
    cfg: BatteryConfig,
    device: torch.device,
    generated_fid: Mapping[str, Any],  # the fid_generated entry (generated_fid_result)
    source: str = "brain",  # RECONSTRUCTION_SOURCES: the oracle's retrieval metrics are not applicable
) -> tuple[dict, pd.DataFrame]:
    """The run's metrics (value, ci95 or missing) and a per-image table."""
    if source not in RECONSTRUCTION_SOURCES:
        raise ValueError(f"unknown reconstruction source '{source}'; expected one of {RECONSTRUCTION_SOURCES}")
    rec, nsd_id, attrs = read_reconstructions(reconstructions)
    if ground_truth.shape[0] != rec.shape[0]:
        raise ValueError(f"{reconstructions}: {rec.shape[0]} reconstructions but {ground_truth.shape[0]} ground-truth images")
    if source == "oracle":
        predictions = retrieval_not_applicable(ORACLE_RETRIEVAL)
    else:
        predictions = read_predictions(prediction_files)
    reconstruction = {"resolution": int(rec.shape[1]), **attrs}
    return evaluate_reconstructions(
        rec, nsd_id, ground_truth, predictions, sources, unavailable, cfg, device, generated_fid, source, reconstruction
    )


def retrieval_not_applicable(reason: str) -> dict[str, str]:
    """The predictions argument of `evaluate_reconstructions` that reports every retrieval metric
    missing with ``reason``."""
    return {m.feature.split(":")[0]: reason for m in METRICS if m.kind == "retrieval"}


def evaluate_reconstructions(
    rec: np.ndarray,  # (N, H, W, 3) uint8 or float in [0, 1]
    nsd_id: np.ndarray,  # (N,) the nsdId of each row
    ground_truth: np.ndarray,  # uint8 (N, H, W, 3) test images in the same order
    predictions: Mapping[str, tuple[np.ndarray, np.ndarray] | str],  # target -> (pred, true) or why missing
    sources: Mapping[str, FeatureSource],
    unavailable: Mapping[str, str],
    cfg: BatteryConfig,
    device: torch.device,
    generated_fid: Mapping[str, Any],  # the fid_generated entry
    source: str,  # what the reconstructions are drawn from (the JSON's "source")
    reconstruction: Mapping[str, Any],  # the JSON's "reconstruction" (resolution, the file's attrs)
) -> tuple[dict, pd.DataFrame]:
    """`evaluate_run` on images in memory: the metrics (value, ci95 or missing) and a per-image table."""
    results = evaluate_images(ground_truth, rec, sources, unavailable, predictions, cfg, device)
    results[FID_PROTOCOLS["generated"]] = dict(generated_fid)
    per_image = pd.DataFrame({"nsd_id": nsd_id})
    for key, result in results.items():
        if "per_image" in result:
            per_image[key] = result.pop("per_image")
    summary = {
        "source": source,
        "n_images": int(rec.shape[0]),
        "reconstruction": dict(reconstruction),
        "metrics": results,
        "bootstrap": {"n": cfg.n_boot, "n_frechet": cfg.n_boot_fd, "seed": cfg.seed, "ci": CI_METHODS},
        "image_side": cfg.image_side,
        "pixel_resize_via": list(cfg.pixel_resize_via),
        "fid_protocols": list(cfg.fid_protocols),
        "directions": {m.key: ("higher" if m.higher_is_better else "lower") + " is better" for m in METRICS},
    }
    return summary, per_image


def write_run(summary: dict, per_image: pd.DataFrame, json_path: str | os.PathLike, csv_path: str | os.PathLike) -> None:
    write_json(json_path, summary)
    with atomic_path(csv_path) as tmp:
        per_image.to_csv(tmp, index=False, float_format="%.6g")
    log.info("wrote %s and %s", json_path, Path(csv_path).name)
