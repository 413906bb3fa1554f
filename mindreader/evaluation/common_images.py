"""Every measured row of the comparison table scored on the same test images: the nsdIds that
every row has. Our runs' test sets can differ between subjects (sessions completed), and another
method's files may hold fewer images (982 of 37 sessions against 1000 of 40); a two-way
identification or a Frechet distance of other images is another number.

A row whose own images are exactly the common ones keeps its metrics; any other is scored again,
by the same battery (`evaluate_reconstructions`), on the common images in ascending nsdId.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import reduce
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from mindreader.evaluation.battery import BatteryConfig, FeatureSource
from mindreader.evaluation.external import EXTERNAL_RETRIEVAL, read_external
from mindreader.evaluation.run import (
    ORACLE_RETRIEVAL,
    evaluate_reconstructions,
    positions,
    read_predictions,
    read_reconstructions,
    retrieval_not_applicable,
)
from mindreader.nsd import NSD

log = logging.getLogger(__name__)

# Why a rescored row has no generated-sample FID (the comparison table does not show it).
RESCORED_FID_GENERATED = (
    "not rescored on the common images: the generated-sample FID draws new samples from the run's generator"
)

Predictions = Mapping[str, "tuple[np.ndarray, np.ndarray] | str"]


@dataclass(frozen=True)
class Row:
    """One measured row: its own images and metrics, and how to read it on other ids."""

    key: str  # mindreader.names.run_key, or EXTERNAL_PREFIX + name
    nsd_id: np.ndarray  # the images its own metrics were computed on
    summary: Mapping[str, Any]  # its own metrics JSON
    images: Callable[[np.ndarray], np.ndarray]  # its reconstructions of the given nsd ids, in order
    predictions: Callable[[np.ndarray], Predictions]  # retrieval's (pred, true) on the given ids


def per_image_ids(path: str | os.PathLike) -> np.ndarray:
    """The nsd ids of a per-image CSV (the images its metrics JSON was computed on)."""
    return pd.read_csv(path, usecols=["nsd_id"])["nsd_id"].to_numpy(np.int64)


def run_row(
    key: str,
    summary: Mapping[str, Any],
    per_image: str | os.PathLike,
    reconstructions: str | os.PathLike,
    prediction_files: Mapping[str, str | os.PathLike] | None,  # None: an oracle row (no retrieval)
) -> Row:
    """A run of ours (brain or oracle) from its metrics, per-image CSV and reconstructions file."""

    def images(ids: np.ndarray) -> np.ndarray:
        rec, nsd_id, _ = read_reconstructions(reconstructions)
        return rec[positions(nsd_id, ids, reconstructions)]

    def predictions(ids: np.ndarray) -> Predictions:
        if prediction_files is None:
            return retrieval_not_applicable(ORACLE_RETRIEVAL)
        return read_predictions(prediction_files, ids)

    return Row(key, per_image_ids(per_image), summary, images, predictions)


def external_row(
    key: str, summary: Mapping[str, Any], per_image: str | os.PathLike, entry: Mapping[str, Any], nsd: NSD
) -> Row:
    """Another method's reconstructions (an evaluation.external entry), as rule score_external
    scored them; on other ids, its sample 0 (the one its own metrics score)."""

    def images(ids: np.ndarray) -> np.ndarray:
        external = read_external(
            entry["path"], entry["format"], nsd, entry["subject"], entry.get("ids"), entry.get("sessions")
        )
        return external.samples[0][positions(external.nsd_id, ids, entry["path"])]

    def predictions(ids: np.ndarray) -> Predictions:
        return retrieval_not_applicable(EXTERNAL_RETRIEVAL)

    return Row(key, per_image_ids(per_image), summary, images, predictions)


def common_nsd_ids(rows: Sequence[Row]) -> np.ndarray:
    """The nsd ids every row has, ascending; a ValueError when there are none."""
    common = reduce(np.intersect1d, (row.nsd_id for row in rows))
    if not len(common):
        counts = ", ".join(f"{row.key}: {len(row.nsd_id)}" for row in rows)
        raise ValueError(f"no test image is common to every row of the comparison ({counts} images)")
    return common


def score_on_common_images(
    rows: Sequence[Row],
    nsd: NSD,
    load_sources: Callable[[], tuple[Mapping[str, FeatureSource], Mapping[str, str]]],  # called once, if needed
    cfg: BatteryConfig,
    device: torch.device,
) -> dict:
    """{"n_images", "nsd_id", "rows": [{"key", "n_own", "rescored", "summary"}]} on the common ids."""
    common = common_nsd_ids(rows)
    ground_truth, sources, unavailable = None, None, None
    scored = []
    for row in rows:
        rescore = not np.array_equal(np.sort(row.nsd_id), common)
        summary = dict(row.summary)
        if rescore:
            if ground_truth is None:
                ground_truth = nsd.read_images(common)
                sources, unavailable = load_sources()
            log.info("%s: scoring on the %d common images (its own: %d)", row.key, len(common), len(row.nsd_id))
            summary, _ = evaluate_reconstructions(
                row.images(common),
                common,
                ground_truth,
                row.predictions(common),
                sources,
                unavailable,
                cfg,
                device,
                {"missing": RESCORED_FID_GENERATED},
                row.summary["source"],
                row.summary["reconstruction"],
            )
            # what the row is (run keys, data, source file, ...) as its own metrics say
            summary.update({k: v for k, v in row.summary.items() if k not in summary})
        scored.append({"key": row.key, "n_own": len(row.nsd_id), "rescored": rescore, "summary": summary})
    return {"n_images": len(common), "nsd_id": common.tolist(), "rows": scored}
