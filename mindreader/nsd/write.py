"""Writers of the NSD layout (../shared/docs/nsd-format.md): the synthetic NSD and the tests use
them, so the reader in `mindreader.nsd.reader` serves real and written trees alike.

Each writer takes arrays the way the project thinks of them (0-based ids, (X, Y, Z, trial)
volumes) and writes them the way NSD stores them (1-based ids, trial-major HDF5). Every file is
written atomically.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from mindreader.io import atomic_path
from mindreader.nsd.paths import (
    EXPDESIGN_RELPATH,
    STIM_INFO_RELPATH,
    STIMULI_RELPATH,
    betas_relpath,
    captions_relpath,
    mask_relpath,
)

# NSD's functional data are 1.8 mm isotropic.
VOXEL_SIZE_MM = 1.8
# nibabel's own default for .nii.gz: fast to write, and decompression speed barely depends on it.
GZIP_LEVEL = 1


def _target(root: str | os.PathLike, relpath: str) -> Path:
    path = Path(root) / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _write_nifti_gz(path: Path, array: np.ndarray) -> None:
    """A gzipped single-file NIfTI-1 of ``array``, stored unscaled in its own dtype, atomically."""
    import nibabel as nib

    affine = np.diag([VOXEL_SIZE_MM, VOXEL_SIZE_MM, VOXEL_SIZE_MM, 1.0])
    image = nib.Nifti1Image(array, affine)
    image.header.set_data_dtype(array.dtype)
    # the temporary name does not end in .nii.gz, so hand nibabel the gzip stream itself
    with atomic_path(path) as tmp, gzip.open(tmp, "wb", compresslevel=GZIP_LEVEL) as stream:
        image.to_file_map({"image": nib.FileHolder(fileobj=stream)})


def write_betas(
    root: str | os.PathLike,
    subject: str | int,
    session: int,
    betas_xyzt: np.ndarray,
    formats: Iterable[str] = ("nifti",),
) -> list[Path]:
    """Write one session's betas, int16 (X, Y, Z, trial) percent signal change x 300.

    "nifti" writes the gzipped 4-D NIfTI; "hdf5" writes dataset `betas` ordered (trial, Z, Y, X)
    as NSD's HDF5 files are. Returns the paths written.
    """
    betas_xyzt = np.asarray(betas_xyzt)
    if betas_xyzt.ndim != 4 or betas_xyzt.dtype != np.int16:
        raise ValueError(f"betas must be int16 (X, Y, Z, trial), got {betas_xyzt.dtype} {betas_xyzt.shape}")
    written = []
    for fmt in formats:
        path = _target(root, betas_relpath(subject, session, fmt))
        if fmt == "nifti":
            _write_nifti_gz(path, betas_xyzt)
        else:
            import h5py

            volume_tzyx = betas_xyzt.transpose(3, 2, 1, 0)
            with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
                h5.create_dataset("betas", data=volume_tzyx, chunks=(1, *volume_tzyx.shape[1:]))
        written.append(path)
    return written


def write_mask(root: str | os.PathLike, subject: str | int, mask_xyz: np.ndarray) -> Path:
    """Write a subject's nsdgeneral ROI, (X, Y, Z) with -1 outside the brain, 0, and 1 in the ROI."""
    mask_xyz = np.asarray(mask_xyz)
    if mask_xyz.ndim != 3:
        raise ValueError(f"mask must be (X, Y, Z), got shape {mask_xyz.shape}")
    if mask_xyz.dtype == bool:
        mask_xyz = mask_xyz.astype(np.int16)
    path = _target(root, mask_relpath(subject))
    _write_nifti_gz(path, mask_xyz)
    return path


def write_expdesign(
    root: str | os.PathLike,
    masterordering: Sequence[int],
    subjectim: np.ndarray,
    sharedix: Sequence[int],
) -> Path:
    """Write nsd_expdesign.mat from 0-based arrays, storing them 1-based as NSD does.

    masterordering: slot shown on each global trial; subjectim: (n_subjects, n_slots) nsdIds;
    sharedix: the shared nsdIds.
    """
    from scipy.io import savemat

    masterordering = np.asarray(masterordering, dtype=np.int64)
    subjectim = np.asarray(subjectim, dtype=np.int64)
    sharedix = np.asarray(sharedix, dtype=np.int64)
    if masterordering.ndim != 1 or subjectim.ndim != 2 or sharedix.ndim != 1:
        raise ValueError("masterordering and sharedix must be 1-D and subjectim 2-D (subjects, slots)")
    if masterordering.size and (masterordering.min() < 0 or masterordering.max() >= subjectim.shape[1]):
        raise ValueError(f"masterordering holds slots outside 0..{subjectim.shape[1] - 1}")
    path = _target(root, EXPDESIGN_RELPATH)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            savemat(
                handle,
                {"masterordering": masterordering + 1, "subjectim": subjectim + 1, "sharedix": sharedix + 1},
            )
    return path


def write_stim_info(root: str | os.PathLike, table) -> Path:
    """Write nsd_stim_info_merged.csv from a pandas DataFrame (its index becomes the first column).

    The table should hold NSD's columns: nsdId, cocoId, cocoSplit, shared1000, subject1..8 and
    subjectK_rep0/1/2 (1-based global trial numbers, 0 = not shown).
    """
    path = _target(root, STIM_INFO_RELPATH)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=True)
    return path


def write_stimuli(root: str | os.PathLike, images: np.ndarray) -> Path:
    """Write the stimulus brick: dataset `imgBrick`, uint8 (N, H, W, 3), one chunk per image."""
    import h5py

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    path = _target(root, STIMULI_RELPATH)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_dataset("imgBrick", data=images, chunks=(1, *images.shape[1:]))
    return path


def write_captions(root: str | os.PathLike, split: str, images: list[dict], annotations: list[dict]) -> Path:
    """Write a COCO caption file: `images` (dicts with at least `id`) and `annotations` (dicts with
    `id`, `image_id` and `caption`)."""
    for annotation in annotations:
        missing = {"id", "image_id", "caption"} - set(annotation)
        if missing:
            raise ValueError(f"caption annotation {annotation!r} lacks {sorted(missing)}")
    path = _target(root, captions_relpath(split))
    document = {
        "info": {"description": f"COCO-style captions ({split})"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
    }
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(document))
    return path
