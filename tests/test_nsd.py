"""mindreader.nsd against tiny trees the tests write: layout paths, design, trials, streamed
betas in both formats (canonical voxel order), images, captions, and the errors."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import scipy.io
from test_nsd_tree import SESSIONS, TRIALS_PER_SESSION, write_tiny_tree

from mindreader.nsd import write as nsd_write
from mindreader.nsd import (
    EXPDESIGN_RELPATH,
    NSD,
    STIM_INFO_RELPATH,
    STIMULI_RELPATH,
    NSDFormatError,
    NSDMissingFileError,
    betas_relpath,
    captions_relpath,
    mask_relpath,
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_tiny_tree(tmp_path_factory.mktemp("nsd"))


def test_paths_are_the_nsd_layout():
    assert betas_relpath("subj01", 1, "nifti") == (
        "nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session01.nii.gz"
    )
    assert betas_relpath(8, 40, "hdf5") == (
        "nsddata_betas/ppdata/subj08/func1pt8mm/betas_fithrf_GLMdenoise_RR/betas_session40.hdf5"
    )
    assert mask_relpath("subj03") == "nsddata/ppdata/subj03/func1pt8mm/roi/nsdgeneral.nii.gz"
    assert EXPDESIGN_RELPATH == "nsddata/experiments/nsd/nsd_expdesign.mat"
    assert STIM_INFO_RELPATH == "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
    assert STIMULI_RELPATH == "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
    assert captions_relpath("val2017") == "nsddata_stimuli/stimuli/nsd/annotations/captions_val2017.json"
    with pytest.raises(ValueError, match="subj01"):
        betas_relpath("S1", 1)


def test_design_is_zero_based_and_sized_by_the_betas(tree):
    design = NSD(tree.root).design
    np.testing.assert_array_equal(design.masterordering, tree.masterordering)
    np.testing.assert_array_equal(design.subjectim, tree.subjectim)
    np.testing.assert_array_equal(design.sharedix, tree.sharedix)
    assert design.trials_per_session == TRIALS_PER_SESSION


def test_subject_trials_follow_masterordering_and_subjectim(tree):
    nsd = NSD(tree.root)
    trials = nsd.subject_trials("subj02", 2)
    assert len(trials) == 2 * TRIALS_PER_SESSION
    expected_ids = tree.subjectim[1, tree.masterordering[: 2 * TRIALS_PER_SESSION]]
    np.testing.assert_array_equal(trials["nsd_id"], expected_ids)
    np.testing.assert_array_equal(trials["trial"], np.arange(2 * TRIALS_PER_SESSION))
    np.testing.assert_array_equal(trials["session"], np.repeat([1, 2], TRIALS_PER_SESSION))
    np.testing.assert_array_equal(trials["position"], np.tile(np.arange(TRIALS_PER_SESSION), 2))
    np.testing.assert_array_equal(trials["shared"], np.isin(expected_ids, tree.sharedix))
    np.testing.assert_array_equal(nsd.subject_images("subj02", 2), np.unique(expected_ids))
    nsd.check_stim_info("subj02", nsd.subject_trials("subj02", SESSIONS))


@pytest.mark.parametrize("fmt", ["nifti", "hdf5"])
@pytest.mark.parametrize("chunk_trials", [1, 5, 12, 100])
def test_streamed_betas_match_boolean_indexing_of_the_nifti(tree, fmt, chunk_trials):
    nsd = NSD(tree.root)
    mask = nsd.mask("subj01")
    keep = tree.masks[1] > 0
    np.testing.assert_array_equal(mask.voxel_xyz, np.argwhere(keep))
    for session in (1, 3):
        chunks = list(nsd.iter_session_betas("subj01", session, mask, fmt, chunk_trials))
        assert [start for start, _ in chunks] == list(range(0, TRIALS_PER_SESSION, chunk_trials))
        streamed = np.concatenate([chunk for _, chunk in chunks])
        nifti = np.asarray(nib.load(tree.root / betas_relpath(1, session, "nifti")).dataobj)
        assert streamed.dtype == np.int16
        np.testing.assert_array_equal(streamed, nifti[keep].T)
        x, y, z = mask.voxel_xyz[-1]
        np.testing.assert_array_equal(streamed[:, -1], tree.betas[1, session][x, y, z])


def test_a_multi_member_gzip_reads_like_a_single_one(tmp_path, tree):
    nsd_write.write_mask(tmp_path, 1, tree.masks[1])
    nsd_write.write_expdesign(tmp_path, tree.masterordering, tree.subjectim, tree.sharedix)
    target = tmp_path / betas_relpath(1, 1)
    target.parent.mkdir(parents=True)
    content = gzip.decompress((tree.root / betas_relpath(1, 1)).read_bytes())
    target.write_bytes(gzip.compress(content[:1000]) + gzip.compress(content[1000:]))
    nsd = NSD(tmp_path)
    streamed = np.concatenate([c for _, c in nsd.iter_session_betas(1, 1, nsd.mask(1), "nifti", 5)])
    np.testing.assert_array_equal(streamed, tree.betas[1, 1][tree.masks[1] > 0].T)


def test_auto_format_takes_the_file_that_is_there(tmp_path, tree):
    nsd_write.write_betas(tmp_path, 1, 1, tree.betas[1, 1], formats=("hdf5",))
    assert NSD(tmp_path).betas_format(1, 1) == "hdf5"
    with pytest.raises(NSDMissingFileError, match="betas_session02.nii.gz"):
        NSD(tmp_path).betas_format(1, 2)


def test_images_in_any_order_with_duplicates(tree):
    nsd = NSD(tree.root)
    assert nsd.n_images == len(tree.images)
    assert nsd.image_side == tree.images.shape[1]
    ids = [5, 0, 5, 19, 3]
    np.testing.assert_array_equal(nsd.read_images(ids), tree.images[ids])
    batches = list(nsd.iter_images(ids, batch_size=2))
    assert [list(b) for b, _ in batches] == [[5, 0], [5, 19], [3]]
    np.testing.assert_array_equal(np.concatenate([x for _, x in batches]), tree.images[ids])
    with pytest.raises(NSDFormatError, match="nsd_stimuli.hdf5.*0..19"):
        nsd.read_images([20])


def test_captions_via_stim_info(tree):
    captions = NSD(tree.root).captions([3, 4])
    assert captions == {3: tree.captions[3], 4: tree.captions[4]}


# --- errors: each names the file and what was expected ------------------------------------------


def test_missing_root():
    with pytest.raises(NSDMissingFileError, match="/no/such/nsd: NSD root does not exist"):
        NSD("/no/such/nsd")


def test_design_without_a_key(tmp_path, tree):
    (tmp_path / EXPDESIGN_RELPATH).parent.mkdir(parents=True)
    scipy.io.savemat(tmp_path / EXPDESIGN_RELPATH, {"masterordering": tree.masterordering + 1, "sharedix": [1]})
    with pytest.raises(NSDFormatError, match="nsd_expdesign.mat: lacks subjectim"):
        NSD(tmp_path).design


def test_subject_not_in_the_design(tree):
    with pytest.raises(NSDFormatError, match="nsd_expdesign.mat: subject subj05 is not in the design"):
        NSD(tree.root).subject_trials("subj05", 1)


def test_more_sessions_than_the_design_holds(tree):
    with pytest.raises(NSDFormatError, match=f"4 sessions of {TRIALS_PER_SESSION} trials"):
        NSD(tree.root).subject_trials("subj01", 4)


def test_mask_shape_must_match_the_betas(tmp_path, tree):
    nsd_write.write_expdesign(tmp_path, tree.masterordering, tree.subjectim, tree.sharedix)
    nsd_write.write_betas(tmp_path, 1, 1, tree.betas[1, 1])
    nsd_write.write_mask(tmp_path, 1, np.ones((5, 6, 5), np.int16))
    nsd = NSD(tmp_path)
    with pytest.raises(NSDFormatError, match=r"nsdgeneral.nii.gz: mask shape \(5, 6, 5\) does not match"):
        list(nsd.iter_session_betas(1, 1, nsd.mask(1)))


def test_session_with_another_trial_count(tmp_path, tree):
    nsd_write.write_expdesign(tmp_path, tree.masterordering, tree.subjectim, tree.sharedix)
    nsd_write.write_mask(tmp_path, 1, tree.masks[1])
    nsd_write.write_betas(tmp_path, 1, 1, tree.betas[1, 1])
    nsd_write.write_betas(tmp_path, 1, 2, tree.betas[1, 2][..., :10])
    nsd = NSD(tmp_path)
    with pytest.raises(NSDFormatError, match=f"betas_session02.nii.gz: holds 10 trials, expected {TRIALS_PER_SESSION}"):
        list(nsd.iter_session_betas(1, 2, nsd.mask(1)))


@pytest.mark.parametrize("keep_fraction", [0.05, 0.8])
def test_truncated_nifti(tmp_path, tree, keep_fraction):
    nsd_write.write_expdesign(tmp_path, tree.masterordering, tree.subjectim, tree.sharedix)
    nsd_write.write_mask(tmp_path, 1, tree.masks[1])
    path = nsd_write.write_betas(tmp_path, 1, 1, tree.betas[1, 1])[0]
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * keep_fraction)])
    nsd = NSD(tmp_path)
    with pytest.raises(NSDFormatError, match="betas_session01.nii.gz: (truncated|cannot read)"):
        list(nsd.iter_session_betas(1, 1, nsd.mask(1)))


def test_unreadable_hdf5(tmp_path, tree):
    nsd_write.write_expdesign(tmp_path, tree.masterordering, tree.subjectim, tree.sharedix)
    path = tmp_path / betas_relpath(1, 1, "hdf5")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(NSDFormatError, match="betas_session01.hdf5: cannot open"):
        NSD(tmp_path).betas_file(1, 1, "hdf5")


def test_stim_info_that_disagrees_with_the_design(tmp_path, tree):
    nsd_write.write_expdesign(tmp_path, tree.masterordering, tree.subjectim, tree.sharedix)
    nsd_write.write_betas(tmp_path, 1, 1, tree.betas[1, 1])
    table = NSD(tree.root).stim_info.copy()
    table.loc[table["subject1_rep0"] == 1, "subject1_rep0"] = 2
    nsd_write.write_stim_info(tmp_path, table)
    nsd = NSD(tmp_path)
    with pytest.raises(
        NSDFormatError, match="nsd_stim_info_merged.csv: disagrees with .*nsd_expdesign.mat: global trial 1"
    ):
        nsd.check_stim_info(1, nsd.subject_trials(1, 1))
