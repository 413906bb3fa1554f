"""The experimental design of the synthetic NSD, built the way NSD's is.

Slots 0 .. n_shared-1 hold the shared images (the same image for every subject, as NSD's first
1,000 slots); the other slots hold images that one subject alone sees. One master ordering,
common to all subjects, shows every slot `repeats` times in a random order over the sessions
(NSD spreads the repeats of an image over the whole experiment the same way). Image ids are a
random permutation of the brick, so shared images are scattered over nsdIds as on real NSD.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

N_SUBJECTS = 8
# The stim info has this many subjectK_repR columns, as NSD's (unused ones hold 0).
REPEAT_COLUMNS = 3
# COCO image ids are positive integers below this (COCO 2017's largest is 581,929).
COCO_ID_LIMIT = 581_930
# Fraction of images whose captions live in the val2017 file (the rest in train2017).
VAL_FRACTION = 0.2


@dataclass(frozen=True)
class Design:
    masterordering: np.ndarray  # (n_trials,) 0-based slot shown on each global trial
    subjectim: np.ndarray  # (N_SUBJECTS, n_slots) 0-based nsdId of each subject's slot
    sharedix: np.ndarray  # (n_shared,) 0-based nsdIds of the shared images, ascending
    n_images: int  # images in the brick
    trials_per_session: int

    @property
    def n_sessions(self) -> int:
        return len(self.masterordering) // self.trials_per_session

    def subject_trials(self, subject_number: int) -> np.ndarray:
        """(n_trials,) 0-based nsdId shown to subject ``subject_number`` (1-based) on each trial."""
        return self.subjectim[subject_number - 1, self.masterordering]


def make_design(
    rng: np.random.Generator,  # the design's random stream
    n_shared: int,  # images every subject sees
    n_specific: int,  # images each subject alone sees
    repeats: int,  # presentations of every image
    trials_per_session: int,  # trials in one session's betas
) -> Design:
    n_slots = n_shared + n_specific
    n_trials = n_slots * repeats
    if n_trials % trials_per_session:
        raise ValueError(
            f"synthetic: (n_shared + n_specific) x repeats = {n_trials} trials do not fill whole sessions of "
            f"trials_per_session = {trials_per_session}; choose values whose product it divides"
        )
    n_images = n_shared + N_SUBJECTS * n_specific
    ids = rng.permutation(n_images)
    sharedix = np.sort(ids[:n_shared])
    specific = ids[n_shared:].reshape(N_SUBJECTS, n_specific)
    subjectim = np.concatenate([np.broadcast_to(sharedix, (N_SUBJECTS, n_shared)), specific], axis=1)
    masterordering = rng.permutation(np.repeat(np.arange(n_slots), repeats))
    return Design(masterordering, subjectim.astype(np.int64), sharedix.astype(np.int64), n_images, trials_per_session)


def coco_assignment(rng: np.random.Generator, n_images: int) -> tuple[np.ndarray, np.ndarray]:
    """(cocoId, cocoSplit) of every nsdId: distinct random COCO ids, about VAL_FRACTION in val2017."""
    coco_ids = rng.choice(np.arange(1, COCO_ID_LIMIT), size=n_images, replace=False)
    splits = np.where(rng.random(n_images) < VAL_FRACTION, "val2017", "train2017")
    return coco_ids.astype(np.int64), splits


def stim_info_table(design: Design, coco_ids: np.ndarray, coco_splits: np.ndarray, repeats: int) -> pd.DataFrame:
    """nsd_stim_info_merged's columns for the synthetic world.

    subjectK is 1 if subject K saw the image; subjectK_repR the 1-based global trial of its R-th
    presentation to that subject (0 if not shown or if ``repeats`` <= R), as in NSD.
    """
    if repeats > REPEAT_COLUMNS:
        raise ValueError(f"synthetic: repeats must be at most {REPEAT_COLUMNS} (NSD's stim info has rep0..rep2), got {repeats}")
    n = design.n_images
    table = {
        "cocoId": coco_ids,
        "cocoSplit": coco_splits,
        "nsdId": np.arange(n, dtype=np.int64),
        "shared1000": np.isin(np.arange(n), design.sharedix),
    }
    # trials of each slot in presentation order: column r holds the r-th presentation
    order = np.argsort(design.masterordering, kind="stable")
    slot_trials = order.reshape(-1, repeats)
    rep_columns = {}
    for k in range(1, N_SUBJECTS + 1):
        seen = np.zeros(n, dtype=np.int64)
        seen[design.subjectim[k - 1]] = 1
        table[f"subject{k}"] = seen
        for r in range(REPEAT_COLUMNS):
            trial = np.zeros(n, dtype=np.int64)
            if r < repeats:
                trial[design.subjectim[k - 1]] = slot_trials[:, r] + 1
            rep_columns[f"subject{k}_rep{r}"] = trial
    return pd.DataFrame({**table, **rep_columns})
