"""Reading the Natural Scenes Dataset in its real layout (../shared/docs/nsd-format.md): the
experimental design, each subject's trials and betas, the stimuli and their captions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from mindreader.nsd.betas import (
    BetasFile,
    Mask,
    NSDFormatError,
    NSDMissingFileError,
    iter_masked_betas,
    open_betas,
    read_mask,
    require_file,
)
from mindreader.nsd.paths import (
    BETAS_FORMATS,
    CAPTION_SPLITS,
    EXPDESIGN_RELPATH,
    STIM_INFO_RELPATH,
    STIMULI_RELPATH,
    betas_relpath,
    captions_relpath,
    mask_relpath,
    present_betas_format,
    subject_name,
    subject_number,
)

DESIGN_KEYS = ("masterordering", "subjectim", "sharedix")
STIM_INFO_COLUMNS = ("nsdId", "cocoId", "cocoSplit")
N_REPEAT_COLUMNS = 3  # subjectK_rep0/1/2 in the stim info
MAX_SUBJECTS = 8


@dataclass(frozen=True)
class Design:
    """nsd_expdesign.mat, 0-based."""

    path: Path
    masterordering: np.ndarray  # int64 (n_trials_total,): slot shown on each global trial
    subjectim: np.ndarray  # int64 (n_subjects, n_slots): nsdId of each subject's slot
    sharedix: np.ndarray  # int64 (n_shared,): the shared nsdIds
    trials_per_session: int  # from the betas files

    @property
    def n_trials_total(self) -> int:
        return len(self.masterordering)

    @property
    def n_sessions(self) -> int:
        """Whole sessions that masterordering covers (NSD: 40)."""
        return self.n_trials_total // self.trials_per_session


class NSD:
    """An NSD tree in the real layout, read lazily; every size comes from the files."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NSDMissingFileError(f"{self.root}: NSD root does not exist (expected a folder in the NSD layout)")

    def path(self, relpath: str) -> Path:
        return self.root / relpath

    # --- experimental design -------------------------------------------------------------------

    @cached_property
    def design(self) -> Design:
        from scipy.io import loadmat

        path = require_file(self.path(EXPDESIGN_RELPATH), "nsd_expdesign.mat (masterordering, subjectim, sharedix)")
        try:
            mat = loadmat(path, squeeze_me=True)
        except Exception as err:  # scipy raises several types for a damaged .mat
            raise NSDFormatError(f"{path}: cannot read as a MATLAB file ({err})") from err
        missing = [key for key in DESIGN_KEYS if key not in mat]
        if missing:
            raise NSDFormatError(f"{path}: lacks {', '.join(missing)} (expected keys {', '.join(DESIGN_KEYS)})")
        # squeeze_me turns a one-subject subjectim into 1-D and a one-element array into a scalar
        masterordering = np.atleast_1d(np.asarray(mat["masterordering"], dtype=np.int64)) - 1
        subjectim = np.atleast_2d(np.asarray(mat["subjectim"], dtype=np.int64)) - 1
        sharedix = np.atleast_1d(np.asarray(mat["sharedix"], dtype=np.int64)) - 1
        if masterordering.ndim != 1 or subjectim.ndim != 2 or sharedix.ndim != 1:
            raise NSDFormatError(f"{path}: expected 1-D masterordering and sharedix and a 2-D subjectim")
        if masterordering.min() < 0 or masterordering.max() >= subjectim.shape[1]:
            raise NSDFormatError(
                f"{path}: masterordering holds slots outside 1..{subjectim.shape[1]} (the columns of subjectim)"
            )
        if sharedix.min() < 0:
            raise NSDFormatError(f"{path}: sharedix holds ids below 1 (NSD ids are 1-based in this file)")
        return Design(
            path=path,
            masterordering=masterordering,
            subjectim=subjectim,
            sharedix=sharedix,
            trials_per_session=self._trials_per_session(),
        )

    def _trials_per_session(self) -> int:
        """Trials of one session, from the header of the first session-1 betas file present."""
        for number in range(1, MAX_SUBJECTS + 1):
            for fmt in BETAS_FORMATS:
                path = self.path(betas_relpath(number, 1, fmt))
                if path.is_file():
                    return open_betas(path, fmt).n_trials
        raise NSDMissingFileError(
            f"{self.root}: no betas found to take the trials per session from "
            f"(expected e.g. {self.path(betas_relpath(1, 1, 'nifti'))})"
        )

    def subject_trials(self, subject: str | int, sessions: int) -> pd.DataFrame:
        """One row per global trial of ``subject`` in sessions 1..``sessions``: trial (0-based
        global), session (1-based), position (0-based in the session), nsd_id, shared."""
        design, number = self.design, subject_number(subject)
        if number > design.subjectim.shape[0]:
            raise NSDFormatError(
                f"{design.path}: subject {subject_name(number)} is not in the design "
                f"(subjectim has {design.subjectim.shape[0]} subjects)"
            )
        n_trials = int(sessions) * design.trials_per_session
        if sessions < 1 or n_trials > design.n_trials_total:
            raise NSDFormatError(
                f"{design.path}: {sessions} sessions of {design.trials_per_session} trials need {n_trials} "
                f"entries of masterordering, it has {design.n_trials_total}"
            )
        trial = np.arange(n_trials, dtype=np.int64)
        nsd_id = design.subjectim[number - 1, design.masterordering[:n_trials]]
        if nsd_id.min() < 0:
            raise NSDFormatError(f"{design.path}: subjectim has no image for some slots of {subject_name(number)}")
        return pd.DataFrame(
            {
                "trial": trial,
                "session": trial // design.trials_per_session + 1,
                "position": trial % design.trials_per_session,
                "nsd_id": nsd_id,
                "shared": np.isin(nsd_id, design.sharedix),
            }
        )

    def shared_images(self, subject: str | int, sessions: int | None = None) -> np.ndarray:
        """The shared nsdIds that ``subject`` saw in sessions 1..``sessions`` (default: every
        session of the design), unique, in the order of their first appearance (Brain-Diffuser's
        and Takagi & Nishimoto's test order)."""
        trials = self.subject_trials(subject, self.design.n_sessions if sessions is None else sessions)
        return pd.unique(trials.loc[trials["shared"], "nsd_id"].to_numpy()).astype(np.int64)

    def subject_images(self, subject: str | int, sessions: int) -> np.ndarray:
        """Sorted unique int64 nsdIds that ``subject`` saw in sessions 1..``sessions``."""
        return np.unique(self.subject_trials(subject, sessions)["nsd_id"].to_numpy()).astype(np.int64)

    # --- stimulus information ------------------------------------------------------------------

    @cached_property
    def stim_info(self) -> pd.DataFrame:
        """nsd_stim_info_merged.csv as a DataFrame (its first column is the index)."""
        path = require_file(self.path(STIM_INFO_RELPATH), "nsd_stim_info_merged.csv (one row per 73k image)")
        try:
            table = pd.read_csv(path, index_col=0)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise NSDFormatError(f"{path}: cannot read as CSV ({err})") from err
        missing = [column for column in STIM_INFO_COLUMNS if column not in table.columns]
        if missing:
            raise NSDFormatError(f"{path}: lacks column(s) {', '.join(missing)}")
        if not table["nsdId"].is_unique:
            raise NSDFormatError(f"{path}: nsdId is not unique")
        return table

    def check_stim_info(self, subject: str | int, trials: pd.DataFrame) -> None:
        """Check that the stim info agrees with the design on ``trials`` of ``subject``: every
        (global trial, nsdId) pair appears in subjectK_rep0/1/2, and sharedix is shared1000."""
        path, number = self.path(STIM_INFO_RELPATH), subject_number(subject)
        table = self.stim_info.set_index("nsdId")
        columns = [f"subject{number}_rep{k}" for k in range(N_REPEAT_COLUMNS)]
        missing = [column for column in columns if column not in table.columns]
        if missing:
            raise NSDFormatError(f"{path}: lacks column(s) {', '.join(missing)}")
        unknown = np.setdiff1d(trials["nsd_id"].to_numpy(), table.index.to_numpy())
        if len(unknown):
            raise NSDFormatError(
                f"{path}: nsdId(s) {unknown[:5].tolist()} of {subject_name(number)}'s design are not in the table"
            )
        shown = table.loc[trials["nsd_id"].to_numpy(), columns].to_numpy(dtype=np.int64)
        agrees = (shown == trials["trial"].to_numpy()[:, None] + 1).any(axis=1)
        if not agrees.all():
            first = trials[~agrees].iloc[0]
            raise NSDFormatError(
                f"{path}: disagrees with {self.design.path}: global trial {int(first['trial']) + 1} (1-based) of "
                f"{subject_name(number)} shows nsdId {int(first['nsd_id'])}, but {', '.join(columns)} do not list it"
            )
        if "shared1000" in table.columns:
            flagged = np.flatnonzero(table["shared1000"].to_numpy(dtype=bool))
            listed = table.index.to_numpy()[flagged]
            if not np.array_equal(np.sort(listed), np.sort(self.design.sharedix)):
                raise NSDFormatError(
                    f"{path}: shared1000 does not flag the same images as sharedix in {self.design.path}"
                )

    # --- betas and mask ------------------------------------------------------------------------

    def betas_format(self, subject: str | int, session: int, fmt: str = "auto") -> str:
        """``fmt``, or for "auto" the format present (NIfTI first, NSD's primary format)."""
        if fmt != "auto":
            return fmt
        present = present_betas_format(str(self.root), subject, session)
        if present:
            return present
        raise NSDMissingFileError(
            f"{self.path(betas_relpath(subject, session, 'nifti'))}: missing, and no "
            f"{Path(betas_relpath(subject, session, 'hdf5')).name} beside it (expected the betas of "
            f"{subject_name(subject)} session {session})"
        )

    def betas_file(self, subject: str | int, session: int, fmt: str = "auto", mask: Mask | None = None) -> BetasFile:
        """Header of one session's betas, checked against the design's trials per session and,
        when given, the shape of the subject's mask."""
        fmt = self.betas_format(subject, session, fmt)
        betas = open_betas(self.path(betas_relpath(subject, session, fmt)), fmt)
        if betas.n_trials != self.design.trials_per_session:
            raise NSDFormatError(
                f"{betas.path}: holds {betas.n_trials} trials, expected {self.design.trials_per_session} "
                f"(the trials per session of the other betas files)"
            )
        if mask is not None and betas.volume_shape != mask.shape:
            raise NSDFormatError(
                f"{mask.path}: mask shape {mask.shape} does not match the volume shape "
                f"{betas.volume_shape} of {betas.path}"
            )
        return betas

    def mask(self, subject: str | int) -> Mask:
        """The subject's nsdgeneral voxels (value > 0), in canonical order with their (x, y, z)."""
        return read_mask(self.path(mask_relpath(subject)))

    def iter_session_betas(
        self, subject: str | int, session: int, mask: Mask, fmt: str = "auto", chunk_trials: int = 50
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (first position, int16 (trials, voxels)) over one session in chunks of trials,
        after checking the file against the design and the mask."""
        yield from iter_masked_betas(self.betas_file(subject, session, fmt, mask), mask, chunk_trials)

    # --- stimuli and captions ------------------------------------------------------------------

    def _open_brick(self):
        import h5py

        path = require_file(self.path(STIMULI_RELPATH), "nsd_stimuli.hdf5 with dataset imgBrick (N, H, W, 3) uint8")
        try:
            h5 = h5py.File(path, "r")
        except OSError as err:
            raise NSDFormatError(f"{path}: cannot open as HDF5 ({err})") from err
        brick = h5.get("imgBrick")
        if brick is None or brick.ndim != 4 or brick.shape[3] != 3 or brick.dtype != np.uint8:
            h5.close()
            raise NSDFormatError(f"{path}: expected dataset imgBrick uint8 (N, H, W, 3)")
        if brick.shape[1] != brick.shape[2]:
            h5.close()
            raise NSDFormatError(f"{path}: expected square images, imgBrick is {brick.shape}")
        return h5, brick

    @cached_property
    def _brick_shape(self) -> tuple[int, ...]:
        h5, brick = self._open_brick()
        with h5:
            return tuple(int(n) for n in brick.shape)

    @property
    def n_images(self) -> int:
        return self._brick_shape[0]

    @property
    def image_side(self) -> int:
        return self._brick_shape[1]

    def read_images(self, nsd_ids: Sequence[int]) -> np.ndarray:
        """uint8 (N, H, W, 3) images of ``nsd_ids`` in the order given, reading only those rows."""
        h5, brick = self._open_brick()
        with h5:
            return self._read_rows(brick, np.asarray(nsd_ids, dtype=np.int64))

    def iter_images(self, nsd_ids: Sequence[int], batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, uint8 (B, H, W, 3)) for consecutive batches of ``nsd_ids``."""
        nsd_ids = np.asarray(nsd_ids, dtype=np.int64)
        h5, brick = self._open_brick()
        with h5:
            for start in range(0, len(nsd_ids), batch_size):
                ids = nsd_ids[start : start + batch_size]
                yield ids, self._read_rows(brick, ids)

    def _read_rows(self, brick, nsd_ids: np.ndarray) -> np.ndarray:
        if nsd_ids.ndim != 1:
            raise ValueError(f"nsd_ids must be 1-D, got shape {nsd_ids.shape}")
        if len(nsd_ids) and (nsd_ids.min() < 0 or nsd_ids.max() >= brick.shape[0]):
            raise NSDFormatError(
                f"{brick.file.filename}: image ids must be in 0..{brick.shape[0] - 1}, "
                f"got {nsd_ids.min()}..{nsd_ids.max()}"
            )
        unique, inverse = np.unique(nsd_ids, return_inverse=True)
        # one row at a time: h5py's fancy indexing is slow for long index lists
        rows = np.empty((len(unique), *brick.shape[1:]), dtype=np.uint8)
        for i, nsd_id in enumerate(unique):
            brick.read_direct(rows, np.s_[nsd_id], np.s_[i])
        return rows[inverse]

    def captions(self, nsd_ids: Sequence[int]) -> dict[int, list[str]]:
        """nsdId -> its COCO captions, via the stim info's cocoId and cocoSplit."""
        table = self.stim_info.set_index("nsdId")
        nsd_ids = [int(i) for i in nsd_ids]
        unknown = sorted(set(nsd_ids) - set(table.index))
        if unknown:
            raise NSDFormatError(f"{self.path(STIM_INFO_RELPATH)}: no row for nsdId(s) {unknown[:5]}")
        by_split: dict[str, dict[int, list[str]]] = {}
        result = {}
        for nsd_id in nsd_ids:
            coco_id, split = int(table.at[nsd_id, "cocoId"]), str(table.at[nsd_id, "cocoSplit"])
            if split not in by_split:
                by_split[split] = self._coco_captions(split)
            captions = by_split[split].get(coco_id)
            if not captions:
                raise NSDFormatError(
                    f"{self.path(captions_relpath(split))}: no caption for COCO image {coco_id} (nsdId {nsd_id})"
                )
            result[nsd_id] = captions
        return result

    def _coco_captions(self, split: str) -> dict[int, list[str]]:
        if split not in CAPTION_SPLITS:
            raise NSDFormatError(f"{self.path(STIM_INFO_RELPATH)}: cocoSplit {split!r} is not one of {CAPTION_SPLITS}")
        path = require_file(self.path(captions_relpath(split)), f"COCO caption annotations of {split}")
        try:
            annotations = json.loads(path.read_text())["annotations"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise NSDFormatError(f"{path}: expected COCO caption JSON with 'annotations' ({err!r})") from err
        captions: dict[int, list[str]] = {}
        for annotation in annotations:
            captions.setdefault(int(annotation["image_id"]), []).append(str(annotation["caption"]).strip())
        return captions
