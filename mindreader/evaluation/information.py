"""Where the planted scene is lost (synthetic NSD only): one table of what each stage still holds.

For each planted factor of the test images' scenes (`mindreader.evaluation.scenes`), four stages:

- ``clip``: a linear probe (`mindreader.evaluation.probes`) fitted on the true CLIP embeddings of
  the subject's training images and scored on the true embeddings of the test images: what the
  CLIP space holds (one row per embedding: variant ``img`` = image, ``cap`` = caption embedding).
- ``brain_embedding``: the SAME probe scored on a mapper's predicted test embeddings, normalised
  as the generator takes them: what the brain mapping keeps of what the CLIP space holds (a
  decoder-transfer reading: clip and brain_embedding rows differ only in the test embeddings).
- ``oracle``: scene recovery (`mindreader.evaluation.scenes.scene_recovery`) of the run's
  reconstructions from the test images' true embeddings: what the generator draws at best.
- ``brain``: scene recovery of the run's brain-driven reconstructions.

Probes read every factor (FACTORS); scene recovery scores the three items a reconstruction's
pixels can be checked against (SCORES: the two colours and the largest shape's position). Each
value carries a 95 % bootstrap CI over test images and its chance level.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from mindreader.evaluation.battery import Metric
from mindreader.evaluation.probes import fit_probes, score_probes
from mindreader.evaluation.run import read_reconstructions
from mindreader.evaluation.scenes import FACTORS, SCORES, factor_table, scene_recovery, scenes_of
from mindreader.evaluation.tables import Table
from mindreader.generator.data import read_predictions, read_rows, read_split_ids
from mindreader.names import NO_MAPPER, RECONSTRUCTION_SOURCES
from mindreader.synth.scenes import Scene

# The table's columns: the scene-recovery items, then the factors only a probe reads.
COLUMNS = (*SCORES, *(f for f in FACTORS if f not in SCORES))
LABELS = ("subject", "mapper", "variant", "source")
METRICS = {
    key: Metric(key, label, "accuracy", "", higher_is_better=True)
    for key, label in (
        ("background_colour", "background colour"),
        ("largest_shape_colour", "largest shape's colour"),
        ("largest_shape_position", "largest shape's position"),
        ("largest_shape_kind", "largest shape's kind"),
        ("largest_shape_quadrant", "largest shape's quadrant"),
        ("shape_count", "shape count"),
    )
}
STAGE_NOTE = (
    "Sources: clip = a linear probe (logistic regression, C by 3-fold CV on the training images) "
    "fitted on the true CLIP embeddings of the subject's training images, scored on the test images' "
    "true embeddings (variant: img = image, cap = caption embedding); brain_embedding = the same probe "
    "scored on the mapper's predicted test embeddings (normalised): trained on true, tested on "
    "predicted, so it reads what the mapping keeps of the CLIP space's code; oracle / brain = scene "
    "recovery from the pixels of the reconstructions from the true / the predicted embeddings "
    "(variant: the generator's conditioning). Position is scored from pixels only, kind, quadrant "
    "and count by probes only (–). Chance: the test set's majority share (position: the best fixed point)"
)


def _row(labels: Mapping[str, Any], summary: Mapping[str, Mapping[str, Any]]) -> dict:
    row = dict(labels)
    for key, result in summary.items():
        row[key] = result["value"]
        row[f"{key}_lo"], row[f"{key}_hi"] = result["ci95"]
        row[f"chance_{key}"] = result["chance"]
    return row


def normalised(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as the generator takes its conditions."""
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def probe_rows(
    subject: str,
    prepared: str | os.PathLike,  # results/prepared/{subject}.h5: the training and test nsdIds
    clip_files: Mapping[str, str | os.PathLike],  # embedding (img, cap) -> CLIP targets file
    predictions: Mapping[str, Mapping[str, str | os.PathLike]],  # mapper -> embedding -> pred_test.h5
    scenes: Mapping[int, Scene],  # nsdId -> scene (scenes.read_scenes)
    n_boot: int,
    seed: int,
) -> list[dict]:
    """The clip row of each embedding and the brain_embedding row of each mapper and embedding."""
    train_ids = np.unique(read_split_ids(prepared, "train"))
    test_ids = read_split_ids(prepared, "test")
    train_factors = factor_table(scenes_of(scenes, train_ids))
    test_factors = factor_table(scenes_of(scenes, test_ids))
    rows = []
    for embedding, path in clip_files.items():
        train = read_rows(path, train_ids, ("target",))["target"]
        test = read_rows(path, test_ids, ("target",))["target"]
        probes = fit_probes(train, train_factors, seed)
        summary, _ = score_probes(probes, test, test_factors, n_boot, seed)
        rows.append(_row({"subject": subject, "mapper": NO_MAPPER, "variant": embedding, "source": "clip"}, summary))
        for mapper, files in predictions.items():
            ids, pred = read_predictions(files[embedding])
            if not np.array_equal(ids, test_ids):
                raise ValueError(f"{files[embedding]}: test samples differ from {prepared}'s test/nsd_id")
            summary, _ = score_probes(probes, normalised(pred), test_factors, n_boot, seed)
            labels = {"subject": subject, "mapper": mapper, "variant": embedding, "source": "brain_embedding"}
            rows.append(_row(labels, summary))
    return rows


def recovery_row(
    labels: Mapping[str, str],  # subject, mapper, variant, source (oracle or brain)
    reconstructions: str | os.PathLike,  # a reconstructions file (images, nsd_id)
    scenes: Mapping[int, Scene],
    n_boot: int,
    seed: int,
) -> tuple[dict, dict]:
    """The scene recovery of one run's reconstructions as a table row, and what the file says of
    them ({n_images, reconstruction: its attributes}, as tables.data_note reads a run)."""
    images, nsd_id, attrs = read_reconstructions(reconstructions)
    summary, _ = scene_recovery(images, nsd_id, scenes, n_boot, seed)
    return _row(labels, summary), {"n_images": len(images), "reconstruction": attrs}


def information_frame(
    scenes: Mapping[int, Scene],
    prepared: Mapping[str, str | os.PathLike],  # subject -> prepared file
    clip_files: Mapping[str, str | os.PathLike],  # embedding (img, cap) -> CLIP targets file
    predictions: Sequence[Mapping[str, str]],  # {subject, mapper, target, path} per pred_test.h5
    reconstructions: Sequence[Mapping[str, str]],  # {subject, mapper, variant, source, path}
    n_boot: int,
    seed: int,
) -> tuple[pd.DataFrame, list[dict]]:
    """Every row of the table: per subject its clip and brain_embedding rows, then per
    reconstructions file its row (in the order given); columns LABELS, then per COLUMNS key its
    value, _lo, _hi and chance_ (NaN where the stage does not score it). And per reconstructions
    file what it says of itself (recovery_row), for the table's data line."""
    rows = []
    for subject, path in prepared.items():
        mine: dict[str, dict[str, str]] = {}
        for entry in predictions:
            if entry["subject"] == subject:
                mine.setdefault(entry["mapper"], {})[entry["target"]] = entry["path"]
        rows += probe_rows(subject, path, clip_files, mine, scenes, n_boot, seed)
    described = []
    for entry in reconstructions:
        if entry["source"] not in RECONSTRUCTION_SOURCES:
            raise ValueError(f"{entry['path']}: a reconstruction's source is oracle or brain, got '{entry['source']}'")
        row, description = recovery_row({k: entry[k] for k in LABELS}, entry["path"], scenes, n_boot, seed)
        rows.append(row)
        described.append(description)
    frame = pd.DataFrame(rows)
    for key in COLUMNS:
        for column in (key, f"{key}_lo", f"{key}_hi", f"chance_{key}"):
            if column not in frame:
                frame[column] = np.nan
    return frame[[*LABELS, *(c for k in COLUMNS for c in (k, f"{k}_lo", f"{k}_hi", f"chance_{k}"))]], described


def scene_recovery_table(frame: pd.DataFrame, title: str, data_note: str) -> Table:
    """results/tables/scene_recovery.* (tables.write_table)."""
    return Table(
        name="scene_recovery",
        title=title,
        frame=frame,
        labels=LABELS,
        columns=COLUMNS,
        data_note=data_note,
        missing={},
        metrics=METRICS,
        notes=(STAGE_NOTE,),
    )
