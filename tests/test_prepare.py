"""Preparation of a subject against a straightforward NumPy computation of design.md's
definitions (z-scoring, averaging, split, sample order) on a tiny tree, in both betas formats;
and the bad-input cases of the library (the rule's side is in test_prepare_workflow.py)."""

from __future__ import annotations

import itertools

import h5py
import numpy as np
import pytest
import scipy.io
from test_nsd_tree import SESSIONS, TRIALS_PER_SESSION, write_tiny_tree

from mindreader.nsd import write as nsd_write
from mindreader.nsd import EXPDESIGN_RELPATH, NSD, NSDFormatError, betas_relpath
from mindreader.prepare import PrepareOptions, prepare_subject


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tiny_tree(tmp_path_factory.mktemp("nsd"))


def zscore(x, mean, std):
    """(x - mean) / std, 0 where std is 0 (up to float64 rounding of a constant column)."""
    zero = std < 1e-9
    return np.where(zero, 0.0, (x - mean) / np.where(zero, 1.0, std))


def reference(tree, subject: int, options: PrepareOptions) -> dict:
    """The contract computed the obvious way, from whole arrays."""
    keep = tree.masks[subject] > 0
    sessions = []
    for session in range(1, options.sessions + 1):
        x = tree.betas[subject, session][keep].T.astype(np.float64) / 300  # (trials, voxels)
        if options.zscore == "session":
            x = zscore(x, x.mean(axis=0), x.std(axis=0))
        sessions.append(x)
    values = np.concatenate(sessions)
    trial = np.arange(len(values))
    nsd_id = tree.subjectim[subject - 1, tree.masterordering[: len(values)]]
    if options.split == "shared1000":
        test_ids = set(nsd_id[np.isin(nsd_id, tree.sharedix)])
    else:
        order = [i for k, i in enumerate(nsd_id) if i not in nsd_id[:k]]
        n_test = int(len(order) * options.test_fraction)
        test_ids = set(order[len(order) - n_test :])
    out = {}
    for part, repeats in (("train", options.train_repeats), ("test", options.test_repeats)):
        member = np.array([i in test_ids for i in nsd_id]) == (part == "test")
        if repeats == "average":
            ids = np.unique(nsd_id[member])
            out[part] = {
                "betas": np.stack([values[member & (nsd_id == i)].mean(axis=0) for i in ids]),
                "nsd_id": ids,
                "trial": np.full(len(ids), -1),
            }
        else:
            out[part] = {"betas": values[member], "nsd_id": nsd_id[member], "trial": trial[member]}
    if options.zscore == "train":
        mean, std = out["train"]["betas"].mean(axis=0), out["train"]["betas"].std(axis=0, ddof=1)
        for part in out.values():
            part["betas"] = zscore(part["betas"], mean, std)
    return out


def read_prepared(path) -> dict:
    with h5py.File(path) as h5:
        data = {part: {key: h5[part][key][()] for key in ("betas", "nsd_id", "trial")} for part in ("train", "test")}
        data["voxel_xyz"] = h5["voxel_xyz"][()]
        data["attrs"] = dict(h5.attrs)
        data["dtypes"] = {name: h5[name].dtype for name in ("train/betas", "train/nsd_id", "test/trial", "voxel_xyz")}
    return data


COMBINATIONS = list(
    itertools.product(
        ["session", "train", "none"], ["single", "average"], ["average", "single"], ["shared1000", "first_appearance"]
    )
)


@pytest.mark.parametrize("zscore,train_repeats,test_repeats,split", COMBINATIONS)
def test_prepared_subject_matches_the_numpy_definitions(tree, tmp_path, zscore, train_repeats, test_repeats, split):
    options = PrepareOptions(
        sessions=SESSIONS,
        zscore=zscore,
        train_repeats=train_repeats,
        test_repeats=test_repeats,
        split=split,
        test_fraction=0.3,
        betas_format="nifti",
        chunk_trials=5,
    )
    output = tmp_path / "subj02.h5"
    prepare_subject(NSD(tree.root), "subj02", options, output)
    got, expected = read_prepared(output), reference(tree, 2, options)
    for part in ("train", "test"):
        np.testing.assert_array_equal(got[part]["nsd_id"], expected[part]["nsd_id"])
        np.testing.assert_array_equal(got[part]["trial"], expected[part]["trial"])
        np.testing.assert_allclose(got[part]["betas"], expected[part]["betas"], rtol=1e-5, atol=1e-5)
        assert np.isfinite(got[part]["betas"]).all()
    assert not set(got["train"]["nsd_id"]) & set(got["test"]["nsd_id"])


def test_hdf5_and_nifti_give_the_same_file(tree, tmp_path):
    outputs = {}
    for fmt, chunk in (("nifti", 7), ("hdf5", 1)):
        options = PrepareOptions(sessions=SESSIONS, betas_format=fmt, chunk_trials=chunk)
        prepare_subject(NSD(tree.root), "subj01", options, tmp_path / f"{fmt}.h5")
        outputs[fmt] = read_prepared(tmp_path / f"{fmt}.h5")
    for part in ("train", "test"):
        for key in ("betas", "nsd_id", "trial"):
            np.testing.assert_array_equal(outputs["nifti"][part][key], outputs["hdf5"][part][key])
    np.testing.assert_array_equal(outputs["hdf5"]["voxel_xyz"], np.argwhere(tree.masks[1] > 0))


def test_contract_dtypes_attrs_and_the_zero_std_voxel(tree, tmp_path):
    options = PrepareOptions(sessions=2, zscore="session")
    summary = prepare_subject(NSD(tree.root), "subj01", options, tmp_path / "subj01.h5")
    got = read_prepared(tmp_path / "subj01.h5")
    assert got["dtypes"] == {
        "train/betas": np.float32,
        "train/nsd_id": np.int64,
        "test/trial": np.int64,
        "voxel_xyz": np.int32,
    }
    attrs = got["attrs"]
    assert (attrs["subject"], attrs["sessions"], attrs["zscore"], attrs["split"]) == (
        "subj01",
        2,
        "session",
        "shared1000",
    )
    assert (attrs["train_repeats"], attrs["test_repeats"]) == ("single", "average")
    assert attrs["n_voxels"] == summary["n_voxels"] == int((tree.masks[1] > 0).sum())
    constant = np.flatnonzero((got["voxel_xyz"] == [1, 2, 3]).all(axis=1))[0]
    assert (got["train"]["betas"][:, constant] == 0).all() and (got["test"]["betas"][:, constant] == 0).all()
    shown = tree.subjectim[0, tree.masterordering[: 2 * TRIALS_PER_SESSION]]
    shared = np.isin(shown, tree.sharedix)
    np.testing.assert_array_equal(got["test"]["nsd_id"], np.unique(shown[shared]))
    np.testing.assert_array_equal(got["train"]["trial"], np.flatnonzero(~shared))


# --- bad input: a clear error naming the file, and no output left ------------------------------


BAD_INPUTS = {  # case -> damage(root, subject number)
    "truncated betas": lambda root, s: _truncate(root / betas_relpath(s, 2)),
    "unreadable betas": lambda root, s: (root / betas_relpath(s, 2)).write_bytes(b"\x1f\x8b garbage"),
    "missing session": lambda root, s: (root / betas_relpath(s, 3)).unlink(),
    "mask of another shape": lambda root, s: nsd_write.write_mask(root, s, np.ones((5, 6, 3), np.int16)),
    "design without subjectim": lambda root, s: _rewrite_design(root, drop="subjectim"),
    "subject not in the design": lambda root, s: _rewrite_design(root, subjects=s - 1),
}
EXPECTED_MESSAGE = {  # a regular expression, formatted with the subject's name
    "truncated betas": "{subject}/.*betas_session02.nii.gz: truncated",
    "unreadable betas": "{subject}/.*betas_session02.nii.gz: (cannot read|damaged)",
    "missing session": "{subject}/.*betas_session03.nii.gz: missing",
    "mask of another shape": r"{subject}/.*nsdgeneral.nii.gz: mask shape \(5, 6, 3\) does not match",
    "design without subjectim": "nsd_expdesign.mat: lacks subjectim",
    "subject not in the design": "nsd_expdesign.mat: subject {subject} is not in the design",
}


def _truncate(path):
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _rewrite_design(root, drop: str | None = None, subjects: int | None = None):
    """Rewrite the design without the key ``drop``, or with subjectim's first ``subjects`` rows."""
    path = root / EXPDESIGN_RELPATH
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__") and k != drop}
    if subjects is not None:
        mat["subjectim"] = mat["subjectim"][:subjects]
    scipy.io.savemat(path, mat)


def damaged_tree(tmp_path, damages: dict[int, str], n_subjects: int = 2):
    """A tiny tree (NIfTI betas) with ``damages[subject number]`` done to it."""
    root = tmp_path / "nsd"
    write_tiny_tree(root, formats=("nifti",), n_subjects=n_subjects)
    for subject, case in damages.items():
        BAD_INPUTS[case](root, subject)
    return root


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_the_file_and_leaves_no_output(tmp_path, case):
    root = damaged_tree(tmp_path, {2: case})
    output = tmp_path / "out" / "subj02.h5"
    with pytest.raises(NSDFormatError, match=EXPECTED_MESSAGE[case].format(subject="subj02")):
        prepare_subject(NSD(root), "subj02", PrepareOptions(sessions=SESSIONS), output)
    assert not output.exists() and not list(output.parent.glob("*"))


def test_missing_root_is_named():
    with pytest.raises(NSDFormatError, match="/nowhere/nsd: NSD root does not exist"):
        NSD("/nowhere/nsd")


def test_a_split_without_test_images_is_refused(tree, tmp_path):
    options = PrepareOptions(sessions=1, split="first_appearance", test_fraction=0.01)
    with pytest.raises(ValueError, match="no test samples"):
        prepare_subject(NSD(tree.root), "subj01", options, tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
