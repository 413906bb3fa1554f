"""Preparing one subject: NSD betas -> results/prepared/{subject}.h5 (the contract in design.md).

Sessions are streamed one at a time and, within a session, in chunks of trials; what stays in
memory is one session of masked int16 betas, exact integer sums for its z-scoring, and the sums
of averaged samples. Single-trial samples go straight to the output file, whose rows are known
in advance.

Definitions (design.md): values are int16 / 300, then z-scored. `session`: per voxel over all
trials of the session's betas file, population std. `train`: per voxel over the training
samples as written (after averaging), ddof 1, applied to train and test. Zero std gives 0.
Averaging happens after session z-scoring and before train z-scoring.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from mindreader.io import atomic_path
from mindreader.nsd import NSD, Mask, iter_masked_betas, subject_name

log = logging.getLogger(__name__)

ZSCORE_MODES = ("session", "train", "none")
REPEAT_MODES = ("average", "single")
SPLITS = ("shared1000", "first_appearance")
PARTS = ("train", "test")
# NSD betas are percent signal change x 300, stored as int16.
BETAS_SCALE = 300.0
# Rows transformed at once when moving a session into the output (bounds float temporaries).
ROW_BLOCK = 128


@dataclass(frozen=True)
class PrepareOptions:
    """The `prepare` section of the config."""

    sessions: int  # sessions 1..sessions are read
    zscore: str = "session"  # session | train | none
    train_repeats: str = "single"  # average | single
    test_repeats: str = "average"  # average | single
    split: str = "shared1000"  # shared1000 | first_appearance
    test_fraction: float = 0.15  # first_appearance: fraction of unique images held out (last shown)
    betas_format: str = "auto"  # nifti | hdf5 | auto (NIfTI if present, else HDF5)
    chunk_trials: int = 32  # trials decompressed and masked at once

    def __post_init__(self):
        checks = {
            "zscore": (self.zscore, ZSCORE_MODES),
            "train_repeats": (self.train_repeats, REPEAT_MODES),
            "test_repeats": (self.test_repeats, REPEAT_MODES),
            "split": (self.split, SPLITS),
            "betas_format": (self.betas_format, ("nifti", "hdf5", "auto")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"prepare.{name} must be one of {allowed}, got {value!r}")
        if self.sessions < 1 or self.chunk_trials < 1 or not 0 < self.test_fraction < 1:
            raise ValueError(f"prepare: sessions and chunk_trials must be >= 1 and 0 < test_fraction < 1: {self}")

    @classmethod
    def from_config(cls, section: dict) -> "PrepareOptions":
        return cls(**section)


@dataclass
class Part:
    """Where each trial of one part (train or test) goes in the output."""

    name: str
    average: bool
    nsd_id: np.ndarray  # int64 (rows,)
    trial: np.ndarray  # int64 (rows,): global trial, -1 for an average
    row_of_trial: pd.Series  # global trial -> output row, for the part's trials
    counts: np.ndarray  # int64 (rows,): trials that go into each row

    @property
    def n_rows(self) -> int:
        return len(self.nsd_id)


def test_images(trials: pd.DataFrame, split: str, test_fraction: float) -> np.ndarray:
    """Sorted nsdIds of the test images: the shared ones, or the last ``test_fraction`` (rounded
    down) of the unique images ordered by first appearance."""
    if split == "shared1000":
        return np.unique(trials.loc[trials["shared"], "nsd_id"].to_numpy())
    first_shown = trials.sort_values("trial").drop_duplicates("nsd_id")["nsd_id"].to_numpy()
    n_test = int(np.floor(len(first_shown) * test_fraction))
    return np.sort(first_shown[len(first_shown) - n_test :])


def plan_part(name: str, trials: pd.DataFrame, average: bool) -> Part:
    """Output rows of ``trials``: averaged samples by ascending nsdId, single trials by ascending
    global trial."""
    trials = trials.sort_values("trial")
    trial, nsd_id = trials["trial"].to_numpy(np.int64), trials["nsd_id"].to_numpy(np.int64)
    if average:
        ids, row, counts = np.unique(nsd_id, return_inverse=True, return_counts=True)
        return Part(
            name=name,
            average=True,
            nsd_id=ids,
            trial=np.full(len(ids), -1, np.int64),
            row_of_trial=pd.Series(row, index=trial),
            counts=counts,
        )
    return Part(
        name=name,
        average=False,
        nsd_id=nsd_id,
        trial=trial,
        row_of_trial=pd.Series(np.arange(len(trial)), index=trial),
        counts=np.ones(len(trial), np.int64),
    )


def plan_parts(trials: pd.DataFrame, options: PrepareOptions) -> dict[str, Part]:
    """The train and test parts of a subject's trials under ``options``."""
    is_test = trials["nsd_id"].isin(test_images(trials, options.split, options.test_fraction))
    parts = {
        "train": plan_part("train", trials[~is_test], options.train_repeats == "average"),
        "test": plan_part("test", trials[is_test], options.test_repeats == "average"),
    }
    for part in parts.values():
        if part.n_rows == 0:
            raise ValueError(
                f"the {options.split} split leaves no {part.name} samples in {options.sessions} session(s) "
                f"(test_fraction {options.test_fraction})"
            )
    return parts


def prepare_subject(nsd: NSD, subject: str, options: PrepareOptions, output: str | Path) -> dict:
    """Write ``output`` (HDF5, the contract in design.md) for ``subject``; return a summary."""
    subject = subject_name(subject)
    trials = nsd.subject_trials(subject, options.sessions)
    nsd.check_stim_info(subject, trials)
    mask = nsd.mask(subject)
    parts = plan_parts(trials, options)
    # every session's header first: a missing or mismatched file fails now, not hours in
    for session in range(1, options.sessions + 1):
        nsd.betas_file(subject, session, options.betas_format, mask)
    log.info(
        "%s: %d sessions, %d trials, %d voxels; train %d samples, test %d samples",
        subject,
        options.sessions,
        len(trials),
        mask.n_voxels,
        parts["train"].n_rows,
        parts["test"].n_rows,
    )
    formats = []
    with atomic_path(output) as tmp, h5py.File(tmp, "w") as h5:
        datasets = _create_datasets(h5, parts, mask)
        sums = {name: np.zeros((p.n_rows, mask.n_voxels), np.float32) for name, p in parts.items() if p.average}
        # one session's masked int16 betas, refilled for each session
        raw = np.empty((nsd.design.trials_per_session, mask.n_voxels), np.int16)
        for session in tqdm(range(1, options.sessions + 1), desc=f"prepare {subject}", unit="session"):
            fmt = nsd.betas_format(subject, session, options.betas_format)
            formats.append(fmt)
            _read_session(nsd, subject, session, mask, fmt, options.chunk_trials, out=raw)
            offset, scale = _session_transform(raw, options.zscore)
            first_trial = (session - 1) * nsd.design.trials_per_session
            _distribute(raw, offset, scale, first_trial, parts, datasets, sums)
            log.info("session %d (%s) done", session, fmt)
        for name, total in sums.items():
            total /= parts[name].counts[:, None].astype(np.float32)
            datasets[name][...] = total
        del sums
        if options.zscore == "train":
            _zscore_with_train_stats(datasets)
        h5.attrs.update(_attrs(subject, options, mask, nsd, formats))
    return {"subject": subject, "n_voxels": mask.n_voxels, **{f"n_{k}": p.n_rows for k, p in parts.items()}}


def _create_datasets(h5: h5py.File, parts: dict[str, Part], mask: Mask) -> dict[str, h5py.Dataset]:
    datasets = {}
    for name, part in parts.items():
        group = h5.create_group(name)
        datasets[name] = group.create_dataset("betas", shape=(part.n_rows, mask.n_voxels), dtype=np.float32)
        group.create_dataset("nsd_id", data=part.nsd_id.astype(np.int64))
        group.create_dataset("trial", data=part.trial.astype(np.int64))
    h5.create_dataset("voxel_xyz", data=mask.voxel_xyz.astype(np.int32))
    return datasets


def _read_session(
    nsd: NSD, subject: str, session: int, mask: Mask, fmt: str, chunk_trials: int, out: np.ndarray
) -> None:
    """Fill ``out``, int16 (trials, voxels), with one session, chunk by chunk."""
    betas = nsd.betas_file(subject, session, fmt, mask)
    filled = 0
    for start, chunk in iter_masked_betas(betas, mask, chunk_trials):
        out[start : start + len(chunk)] = chunk
        filled += len(chunk)
    if filled != len(out):
        raise RuntimeError(f"{betas.path}: read {filled} of {len(out)} trials")


def _session_transform(raw: np.ndarray, zscore: str) -> tuple[np.ndarray, np.ndarray]:
    """(offset, scale) per voxel such that value = (raw - offset) * scale.

    Session z-scoring uses exact integer sums of the int16 betas, so the statistics do not
    depend on chunking; the /300 cancels out of (x - mean) / std.
    """
    n_voxels = raw.shape[1]
    if zscore != "session":
        return np.zeros(n_voxels), np.full(n_voxels, 1.0 / BETAS_SCALE)
    total = np.zeros(n_voxels, np.int64)
    total_sq = np.zeros(n_voxels, np.int64)
    for start in range(0, len(raw), ROW_BLOCK):
        block = raw[start : start + ROW_BLOCK].astype(np.int64)
        total += block.sum(axis=0)
        total_sq += np.square(block).sum(axis=0)
    n = len(raw)
    # n * sum(x^2) - sum(x)^2 is exact in int64 for int16 data and any session length NSD has
    std = np.sqrt((n * total_sq - total * total) / float(n * n))
    return total / n, np.divide(1.0, std, out=np.zeros(n_voxels), where=std > 0)


def _distribute(raw, offset, scale, first_trial, parts, datasets, sums) -> None:
    """Move one session's transformed trials into the output rows (single) or sums (average)."""
    for start in range(0, len(raw), ROW_BLOCK):
        values = ((raw[start : start + ROW_BLOCK] - offset) * scale).astype(np.float32)
        trials = np.arange(first_trial + start, first_trial + start + len(values))
        for name, part in parts.items():
            in_part = np.isin(trials, part.row_of_trial.index.to_numpy())
            if not in_part.any():
                continue
            rows = part.row_of_trial.loc[trials[in_part]].to_numpy()
            if part.average:
                np.add.at(sums[name], rows, values[in_part])
            else:
                # single-trial rows follow the global trial order, so they are consecutive here
                datasets[name][rows[0] : rows[-1] + 1] = values[in_part]


def _zscore_with_train_stats(datasets: dict[str, h5py.Dataset]) -> None:
    """Z-score train and test with the per-voxel mean and std (ddof 1) of the train rows."""
    train = datasets["train"]
    n_rows = train.shape[0]
    mean = np.zeros(train.shape[1])
    for start in range(0, n_rows, ROW_BLOCK):
        mean += train[start : start + ROW_BLOCK].sum(axis=0, dtype=np.float64)
    mean /= n_rows
    squares = np.zeros(train.shape[1])
    for start in range(0, n_rows, ROW_BLOCK):
        squares += np.square(train[start : start + ROW_BLOCK] - mean).sum(axis=0)
    std = np.sqrt(squares / (n_rows - 1)) if n_rows > 1 else np.zeros_like(mean)
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
    for dataset in datasets.values():
        for start in range(0, dataset.shape[0], ROW_BLOCK):
            block = dataset[start : start + ROW_BLOCK]
            dataset[start : start + len(block)] = ((block - mean) * scale).astype(np.float32)


def _attrs(subject: str, options: PrepareOptions, mask: Mask, nsd: NSD, formats: list[str]) -> dict:
    return {
        "subject": subject,
        "sessions": options.sessions,
        "zscore": options.zscore,
        "train_repeats": options.train_repeats,
        "test_repeats": options.test_repeats,
        "split": options.split,
        "test_fraction": options.test_fraction,
        "n_voxels": mask.n_voxels,
        "betas_formats": sorted(set(formats)),
        "trials_per_session": nsd.design.trials_per_session,
        "volume_shape": list(mask.shape),
        "nsd_root": str(nsd.root),
    }
