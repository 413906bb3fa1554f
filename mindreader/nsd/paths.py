"""Every path of the NSD layout, relative to the NSD root (../shared/docs/nsd-format.md).

Kept free of heavy imports so that the workflow's rule files can import it to name their inputs.
The package `mindreader.nsd` re-exports all of it; nobody else spells these paths.
"""

from __future__ import annotations

BETAS_FORMATS = ("nifti", "hdf5")
BETAS_SUFFIX = {"nifti": ".nii.gz", "hdf5": ".hdf5"}
CAPTION_SPLITS = ("train2017", "val2017")

EXPDESIGN_RELPATH = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO_RELPATH = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
STIMULI_RELPATH = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"


def subject_number(subject: str | int) -> int:
    """1-based subject number of 'subj01' .. 'subj08' (or of the number itself)."""
    if isinstance(subject, str):
        if len(subject) != 6 or not subject.startswith("subj") or not subject[4:].isdigit():
            raise ValueError(f"subject must be named like 'subj01', got {subject!r}")
        number = int(subject[4:])
    else:
        number = int(subject)
    if number < 1:
        raise ValueError(f"subject numbers start at 1, got {subject!r}")
    return number


def subject_name(subject: str | int) -> str:
    """'subj01' style name of a subject given by name or 1-based number."""
    return f"subj{subject_number(subject):02d}"


def betas_relpath(subject: str | int, session: int, fmt: str = "nifti") -> str:
    """Betas of one session (1-based): NIfTI (X, Y, Z, trial) or HDF5 `betas` (trial, Z, Y, X)."""
    if fmt not in BETAS_FORMATS:
        raise ValueError(f"betas format must be one of {BETAS_FORMATS}, got {fmt!r}")
    if int(session) < 1:
        raise ValueError(f"sessions are numbered from 1, got {session}")
    return (
        f"nsddata_betas/ppdata/{subject_name(subject)}/func1pt8mm/betas_fithrf_GLMdenoise_RR/"
        f"betas_session{int(session):02d}{BETAS_SUFFIX[fmt]}"
    )


def present_betas_format(root: str, subject: str | int, session: int) -> str | None:
    """The first betas format (NIfTI, NSD's primary one, then HDF5) whose file exists under
    ``root`` for that session, or None."""
    import os

    for fmt in BETAS_FORMATS:
        if os.path.isfile(os.path.join(root, betas_relpath(subject, session, fmt))):
            return fmt
    return None


def mask_relpath(subject: str | int) -> str:
    """The nsdgeneral ROI of a subject, (X, Y, Z), voxels with value > 0 are used."""
    return f"nsddata/ppdata/{subject_name(subject)}/func1pt8mm/roi/nsdgeneral.nii.gz"


def captions_relpath(split: str) -> str:
    """COCO caption annotations of one COCO split ('train2017' or 'val2017')."""
    if split not in CAPTION_SPLITS:
        raise ValueError(f"COCO split must be one of {CAPTION_SPLITS}, got {split!r}")
    return f"nsddata_stimuli/stimuli/nsd/annotations/captions_{split}.json"
