"""The synthetic NSD: it reads back through the NSD reader, is consistent, deterministic, varied,
and its simulated brains carry a learnable signal about the scenes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, tiny_config

from mindreader.nsd import NSD, betas_relpath, mask_relpath
from mindreader.prepare import PrepareOptions, prepare_subject
from mindreader.synth import MARKER_NAME, SCENES_RELPATH, Scene, SyntheticSpec, draw_scene, scene_features, write_synthetic_nsd
from mindreader.synth.brain import pooled_pixels
from mindreader.synth.captions import COLOUR_WORDS, KIND_WORDS
from mindreader.synth.scenes import COLOURS, KINDS

SUBJECTS = ["subj01", "subj02"]


def tiny_spec(**overrides) -> SyntheticSpec:
    return SyntheticSpec.from_config({**tiny_config()["synthetic"], **overrides})


def read_volume(root: Path, relpath: str) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(root / relpath).dataobj)


def load_scenes(root: Path) -> list[dict]:
    return json.loads((root / SCENES_RELPATH).read_text())


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic_nsd")
    write_synthetic_nsd(root, tiny_spec(betas_formats=["nifti", "hdf5"]), SUBJECTS)
    return root


def test_design_and_stim_info_agree_with_what_subjects_saw(tiny_tree):
    spec = tiny_spec()
    nsd = NSD(tiny_tree)
    design = nsd.design
    n_slots = spec.n_shared + spec.n_specific
    assert design.subjectim.shape == (8, n_slots)
    assert len(design.masterordering) == n_slots * spec.repeats
    assert design.trials_per_session == spec.trials_per_session
    assert len(design.sharedix) == spec.n_shared
    n_sessions = n_slots * spec.repeats // spec.trials_per_session
    seen = {}
    for subject in SUBJECTS:
        trials = nsd.subject_trials(subject, n_sessions)
        nsd.check_stim_info(subject, trials)  # the reader's own cross-check of design and stim info
        counts = trials["nsd_id"].value_counts()
        assert len(counts) == n_slots and (counts == spec.repeats).all()
        assert trials["shared"].to_numpy().sum() == spec.n_shared * spec.repeats
        seen[subject] = set(counts.index)
    assert seen["subj01"] & seen["subj02"] == set(design.sharedix.tolist())
    # images are scattered over nsdIds, not the first ones
    assert design.sharedix.max() > spec.n_shared
    info = nsd.stim_info
    assert len(info) == nsd.n_images == spec.n_shared + 8 * spec.n_specific
    assert info["cocoId"].is_unique and set(info["cocoSplit"]) == {"train2017", "val2017"}
    assert (info[[f"subject{k}" for k in range(1, 9)]].sum(axis=1) >= 1).all()
    assert (info.loc[info["shared1000"], [f"subject{k}" for k in range(1, 9)]] == 1).all().all()


def test_masks_and_betas_read_back_in_both_formats(tiny_tree):
    spec = tiny_spec()
    nsd = NSD(tiny_tree)
    n_roi = []
    for subject in SUBJECTS:
        raw = read_volume(tiny_tree, mask_relpath(subject))
        assert raw.shape == tuple(spec.volume_shape) and set(np.unique(raw)) == {-1, 0, 1}
        mask = nsd.mask(subject)
        n_roi.append(mask.n_voxels)
        assert abs(mask.n_voxels - spec.roi_voxels) <= 0.08 * spec.roi_voxels + 1
        for session in (1, 3):
            nifti = np.concatenate([b for _, b in nsd.iter_session_betas(subject, session, mask, "nifti", 7)])
            hdf5 = np.concatenate([b for _, b in nsd.iter_session_betas(subject, session, mask, "hdf5", 7)])
            assert nifti.dtype == np.int16 and nifti.shape == (spec.trials_per_session, mask.n_voxels)
            np.testing.assert_array_equal(nifti, hdf5)
        volume = read_volume(tiny_tree, betas_relpath(subject, 1))
        assert (volume[raw < 0] == 0).all(), "betas outside the brain must be 0"
        assert (volume[raw == 0] != 0).mean() > 0.9, "brain voxels outside the ROI carry noise"
    assert n_roi[0] != n_roi[1], "each subject has its own ROI"
    voxels = pd.read_csv(tiny_tree / "synthetic" / "subj01_voxels.csv")
    np.testing.assert_array_equal(voxels[["x", "y", "z"]].to_numpy(), nsd.mask("subj01").voxel_xyz)
    assert voxels["reliability"].mean() == pytest.approx(1.0, abs=0.25)


def test_images_and_captions_match_the_scenes(tiny_tree):
    spec = tiny_spec()
    nsd = NSD(tiny_tree)
    scenes = load_scenes(tiny_tree)
    assert nsd.image_side == spec.image_side and len(scenes) == nsd.n_images
    ids = [0, 7, len(scenes) - 1]
    images = nsd.read_images(ids)
    for image, nsd_id in zip(images, ids):
        np.testing.assert_array_equal(image, draw_scene(Scene.from_dict(scenes[nsd_id]), spec.image_side))
    captions = nsd.captions(range(len(scenes)))
    for nsd_id, scene in enumerate(scenes):
        assert captions[nsd_id] == [c["caption"] for c in scene["captions"]]
        assert len(captions[nsd_id]) == spec.captions_per_image


def _mentions(text: str, words: tuple[str, ...]) -> bool:
    return any(re.search(rf"\b{re.escape(w)}\b", text.lower()) for w in words)


def test_scenes_vary_and_captions_are_true_except_the_flawed_ones(tiny_tree):
    scenes = load_scenes(tiny_tree)
    kinds = {s["kind"] for scene in scenes for s in scene["shapes"]}
    assert kinds == set(KINDS)
    assert {len(scene["shapes"]) for scene in scenes} == {1, 2, 3}
    assert len({scene["background"] for scene in scenes}) >= len(COLOURS) - 2
    flaws = [c["flaw"] for scene in scenes for c in scene["captions"]]
    assert set(flaws) == {"none", "vague", "missing_object", "wrong_colour"}
    assert 0.1 < np.mean([f != "none" for f in flaws]) < 0.4
    n_distinct = [len({c["caption"] for c in scene["captions"]}) for scene in scenes]
    assert np.mean(n_distinct) > 4.5, "captions of an image differ in wording and detail"
    for scene in scenes:
        for caption in scene["captions"]:
            text = caption["caption"]
            colours_named = [_mentions(text, COLOUR_WORDS[s["colour"]]) for s in scene["shapes"]]
            kinds_named = [_mentions(text, KIND_WORDS[s["kind"]]) for s in scene["shapes"]]
            if caption["flaw"] == "none":
                assert all(colours_named) and all(kinds_named), (text, scene)
            elif caption["flaw"] == "vague":
                assert not any(kinds_named), (text, scene)
            elif caption["flaw"] == "missing_object":
                assert len(scene["shapes"]) > 1


def test_same_seed_same_tree_and_subjects_are_independent(tmp_path, tiny_tree):
    spec = tiny_spec(betas_formats=["nifti", "hdf5"])
    again = tmp_path / "again"
    write_synthetic_nsd(again, spec, ["subj02"])  # subj02 alone: its brain must not depend on subj01
    for relpath in (SCENES_RELPATH, "nsddata/experiments/nsd/nsd_stim_info_merged.csv",
                    "nsddata_stimuli/stimuli/nsd/annotations/captions_train2017.json"):
        assert (again / relpath).read_bytes() == (tiny_tree / relpath).read_bytes(), relpath
    for relpath in (mask_relpath("subj02"), betas_relpath("subj02", 2)):
        np.testing.assert_array_equal(read_volume(again, relpath), read_volume(tiny_tree, relpath))
    with h5py.File(again / betas_relpath("subj02", 1, "hdf5")) as a, h5py.File(tiny_tree / betas_relpath("subj02", 1, "hdf5")) as b:
        np.testing.assert_array_equal(a["betas"][:], b["betas"][:])
    assert not (again / mask_relpath("subj01")).exists()
    other = tmp_path / "other"
    write_synthetic_nsd(other, tiny_spec(seed=1), ["subj02"])
    assert (other / SCENES_RELPATH).read_bytes() != (tiny_tree / SCENES_RELPATH).read_bytes()
    assert not np.array_equal(read_volume(other, mask_relpath("subj02")), read_volume(tiny_tree, mask_relpath("subj02")))


def test_marker_is_written_last_and_a_rewrite_replaces_the_old_tree(tmp_path):
    root = tmp_path / "nsd"
    marker = write_synthetic_nsd(root, tiny_spec(), ["subj01"])
    assert json.loads((root / MARKER_NAME).read_text()) == json.loads(json.dumps(marker))
    assert marker["n_sessions"] == 3 and marker["subjects"] == ["subj01"]
    # fewer, longer sessions: the old session 3 must not survive the rewrite
    write_synthetic_nsd(root, tiny_spec(trials_per_session=72), ["subj01"])
    assert (root / betas_relpath("subj01", 2)).exists()
    assert not (root / betas_relpath("subj01", 3)).exists()
    assert NSD(root).design.trials_per_session == 72


def test_refuses_to_overwrite_a_folder_that_is_not_a_synthetic_tree(tmp_path):
    root = tmp_path / "real_nsd"
    precious = root / "nsddata" / "experiments" / "nsd" / "nsd_expdesign.mat"
    precious.parent.mkdir(parents=True)
    precious.write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="not a synthetic NSD"):
        write_synthetic_nsd(root, tiny_spec(), ["subj01"])
    assert precious.read_bytes() == b"real data"
    assert not (root / MARKER_NAME).exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"trials_per_session": 50}, "whole sessions"),
        ({"volume_shape": [5, 5, 5]}, "too few"),
        ({"repeats": 4, "trials_per_session": 48}, "at most 3"),
    ],
)
def test_bad_parameters_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        write_synthetic_nsd(tmp_path / "nsd", tiny_spec(**overrides), ["subj01"])
    assert not (tmp_path / "nsd" / MARKER_NAME).exists()


def test_unknown_config_keys_are_refused():
    with pytest.raises(ValueError, match="unknown keys \\['colour_depth'\\]"):
        SyntheticSpec.from_config({**tiny_config()["synthetic"], "colour_depth": 8})


def _ridge_test_correlation(x_train, y_train, x_test, y_test, penalty):
    """Mean over features of the held-out correlation of closed-form (dual) ridge predictions."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_mean = y_train.mean(0)
    alpha = np.linalg.solve(x_train @ x_train.T + penalty * np.eye(len(x_train)), y_train - y_mean)
    pred = x_test @ x_train.T @ alpha + y_mean
    keep = (y_test.std(0) > 0) & (pred.std(0) > 0)
    return float(np.mean([np.corrcoef(pred[:, j], y_test[:, j])[0, 1] for j in np.flatnonzero(keep)]))


def test_demo_brain_signal_is_learnable_from_prepared_betas(tmp_path):
    """Closed-form ridge from the demo world's prepared (averaged) betas to the scenes' high-level
    features predicts held-out (shared) images far better than the same ridge fitted to shuffled
    features."""
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    root = tmp_path / "nsd"
    write_synthetic_nsd(root, SyntheticSpec.from_config(demo["synthetic"]), ["subj01"])
    options = PrepareOptions.from_config({**demo["prepare"], "train_repeats": "average"})
    prepare_subject(NSD(root), "subj01", options, tmp_path / "subj01.h5")
    nsd = NSD(root)
    high_level = scene_features([Scene.from_dict(s) for s in load_scenes(root)])
    low_level = pooled_pixels(nsd.read_images(np.arange(nsd.n_images)))
    with h5py.File(tmp_path / "subj01.h5") as h5:
        x_train, x_test = h5["train/betas"][:], h5["test/betas"][:]
        train_ids, test_ids = h5["train/nsd_id"][:], h5["test/nsd_id"][:]
    assert len(x_test) == demo["synthetic"]["n_shared"]
    penalty = float(x_train.shape[1])
    shuffle = np.random.default_rng(0).permutation(len(train_ids))
    for name, features, floor in (("high-level", high_level, 0.7), ("pooled pixels", low_level, 0.5)):
        y_train, y_test = features[train_ids], features[test_ids]
        real = _ridge_test_correlation(x_train, y_train, x_test, y_test, penalty)
        shuffled = _ridge_test_correlation(x_train, y_train[shuffle], x_test, y_test, penalty)
        print(f"{name}: held-out correlation {real:.3f}, shuffled control {shuffled:.3f}")
        assert real > floor, (name, real)
        assert shuffled < 0.2, (name, shuffled)
