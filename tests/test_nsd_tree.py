"""A tiny NSD tree written with mindreader.nsd.write, shared by the NSD and preparation tests,
and the tests that the writers store what NSD stores (1-based design, (T, Z, Y, X) HDF5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import scipy.io

from mindreader.nsd import write as nsd_write
from mindreader.nsd import EXPDESIGN_RELPATH, STIM_INFO_RELPATH, betas_relpath, mask_relpath

VOLUME = (5, 6, 4)
TRIALS_PER_SESSION = 12
SESSIONS = 3
N_SUBJECTS = 2
N_SHARED = 4  # these slots show the same images to every subject
# Not NSD's first slots and not the lowest nsdIds: code that picks the test set by slot number or
# by id order instead of by sharedix gets it wrong here.
SHARED_SLOTS = np.array([2, 5, 7, 10])
N_SLOTS = 12  # each slot is shown 3 times over the 3 sessions
REPEATS = 3
IMAGE_SIDE = 8


@dataclass
class TinyTree:
    root: Path
    masterordering: np.ndarray  # 0-based slots
    subjectim: np.ndarray  # 0-based nsdIds
    sharedix: np.ndarray
    masks: dict[int, np.ndarray]  # subject -> (X, Y, Z) values -1/0/1
    betas: dict[tuple[int, int], np.ndarray]  # (subject, session) -> int16 (X, Y, Z, T)
    images: np.ndarray
    captions: dict[int, list[str]]  # nsdId -> captions


def write_tiny_tree(root: Path, formats=("nifti", "hdf5"), seed: int = 0, n_subjects: int = N_SUBJECTS) -> TinyTree:
    """``n_subjects`` subjects, three sessions of 12 trials, 4 shared + 8 own images each, repeats
    spread over sessions (some within one session), one constant voxel in each mask (zero std)."""
    rng = np.random.default_rng(seed)
    n_images = N_SHARED + n_subjects * (N_SLOTS - N_SHARED)
    ids = np.random.default_rng(100 + seed).permutation(n_images)
    sharedix = np.sort(ids[:N_SHARED])
    own_slots = np.setdiff1d(np.arange(N_SLOTS), SHARED_SLOTS)
    subjectim = np.zeros((n_subjects, N_SLOTS), np.int64)
    for s in range(n_subjects):
        subjectim[s, SHARED_SLOTS] = sharedix
        subjectim[s, own_slots] = ids[N_SHARED + s * len(own_slots) : N_SHARED + (s + 1) * len(own_slots)]
    masterordering = rng.permutation(np.repeat(np.arange(N_SLOTS), REPEATS))
    nsd_write.write_expdesign(root, masterordering, subjectim, sharedix)

    masks, betas = {}, {}
    for subject in range(1, n_subjects + 1):
        mask = rng.choice(np.array([-1, 0, 1], np.int16), size=VOLUME, p=[0.3, 0.3, 0.4])
        mask[1, 2, 3] = 1  # the constant voxel
        nsd_write.write_mask(root, subject, mask)
        masks[subject] = mask
        for session in range(1, SESSIONS + 1):
            data = rng.normal(50 * session, 300, size=(*VOLUME, TRIALS_PER_SESSION)).astype(np.int16)
            data[1, 2, 3, :] = 7
            nsd_write.write_betas(root, subject, session, data, formats=formats)
            betas[subject, session] = data

    table = {
        "nsdId": np.arange(n_images),
        "cocoId": 1000 + np.arange(n_images),
        "cocoSplit": np.where(np.arange(n_images) % 2 == 0, "train2017", "val2017"),
        "shared1000": np.isin(np.arange(n_images), sharedix),
    }
    for s in range(n_subjects):
        shown_ids = subjectim[s, masterordering]
        table[f"subject{s + 1}"] = np.isin(np.arange(n_images), shown_ids).astype(int)
        reps = np.zeros((n_images, REPEATS), np.int64)
        for nsd_id in np.unique(shown_ids):
            reps[nsd_id] = np.flatnonzero(shown_ids == nsd_id) + 1
        for k in range(REPEATS):
            table[f"subject{s + 1}_rep{k}"] = reps[:, k]
    nsd_write.write_stim_info(root, pd.DataFrame(table))

    images = rng.integers(0, 256, size=(n_images, IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    nsd_write.write_stimuli(root, images)
    captions = {i: [f"image {i} caption {k}" for k in range(2)] for i in range(n_images)}
    for split in ("train2017", "val2017"):
        ids = [i for i in range(n_images) if table["cocoSplit"][i] == split]
        annotations = [
            {"id": 10 * i + k, "image_id": 1000 + i, "caption": text} for i in ids for k, text in enumerate(captions[i])
        ]
        nsd_write.write_captions(root, split, [{"id": 1000 + i} for i in ids], annotations)
    return TinyTree(root, masterordering, subjectim, sharedix, masks, betas, images, captions)


def test_writers_store_the_nsd_conventions(tmp_path):
    tree = write_tiny_tree(tmp_path)
    mat = scipy.io.loadmat(tmp_path / EXPDESIGN_RELPATH, squeeze_me=True)
    np.testing.assert_array_equal(mat["masterordering"], tree.masterordering + 1)
    np.testing.assert_array_equal(mat["subjectim"], tree.subjectim + 1)
    np.testing.assert_array_equal(mat["sharedix"], tree.sharedix + 1)
    image = nib.load(tmp_path / betas_relpath("subj02", 3, "nifti"))
    assert image.get_data_dtype() == np.int16
    np.testing.assert_array_equal(np.asarray(image.dataobj), tree.betas[2, 3])
    with h5py.File(tmp_path / betas_relpath("subj02", 3, "hdf5")) as h5:
        np.testing.assert_array_equal(h5["betas"][()], tree.betas[2, 3].transpose(3, 2, 1, 0))
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / mask_relpath(1)).dataobj), tree.masks[1])
    table = pd.read_csv(tmp_path / STIM_INFO_RELPATH, index_col=0)
    assert list(table["nsdId"]) == list(range(len(tree.images)))
