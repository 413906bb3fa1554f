"""The demo CLIP's training images (clip.demo.corpus): never a configured subject's test image;
`tree` takes every other stimulus of the synthetic tree, `subjects` the prepared training images."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from conftest import TINY_CLIP, deep_update, tiny_config

from mindreader.clip.stages import demo_clip_ids, make_demo_clip
from mindreader.nsd import NSD
from mindreader.synth import SyntheticSpec, write_synthetic_nsd

torch.set_num_threads(1)

# Two prepared subjects: subj02 trains on an image that subj01 is tested on (as first_appearance
# splits allow), and repeats a training image (single-trial rows).
SUBJ01 = {"train": [20, 21, 22, 23], "test": [0, 1, 2]}
SUBJ02 = {"train": [2, 30, 31, 31, 32], "test": [3, 4]}
HELDOUT = [0, 1, 2, 3, 4]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A tiny synthetic tree (stimuli and captions of all 8 subjects' images) and the two prepared files."""
    tmp = tmp_path_factory.mktemp("corpus")
    write_synthetic_nsd(tmp / "nsd", SyntheticSpec.from_config(tiny_config()["synthetic"]), ["subj01"])
    prepared = []
    for name, split in (("subj01", SUBJ01), ("subj02", SUBJ02)):
        prepared.append(tmp / f"{name}.h5")
        with h5py.File(prepared[-1], "w") as f:
            f["train/nsd_id"], f["test/nsd_id"] = np.array(split["train"]), np.array(split["test"])
    return tmp, NSD(tmp / "nsd"), prepared


def test_tree_corpus_is_every_stimulus_but_the_held_out_ones(tree):
    _, nsd, prepared = tree
    assert nsd.n_images > 100  # n_shared + 8 x n_specific, far more than the prepared subjects'
    train, heldout = demo_clip_ids(nsd, prepared, "tree")
    assert heldout.tolist() == HELDOUT
    assert train.tolist() == [i for i in range(nsd.n_images) if i not in HELDOUT]


def test_subjects_corpus_is_the_prepared_training_images_none_held_out(tree):
    _, nsd, prepared = tree
    train, heldout = demo_clip_ids(nsd, prepared, "subjects")
    assert heldout.tolist() == HELDOUT
    assert train.tolist() == [20, 21, 22, 23, 30, 31, 32]


def test_make_demo_clip_trains_on_the_corpus(tree):
    tmp, nsd, prepared = tree
    for corpus, expected in (("tree", nsd.n_images - len(HELDOUT)), ("subjects", 7)):
        demo = {"corpus": corpus, "steps": 1, "dir": str(tmp / corpus)}
        clip_cfg = deep_update(tiny_config()["clip"], deep_update(TINY_CLIP, {"demo": demo}))
        metrics = tmp / f"{corpus}_metrics.json"
        make_demo_clip(tmp / "nsd", prepared, clip_cfg, torch.device("cpu"), 0, tmp / f"{corpus}_curve.csv", metrics)
        written = json.loads(metrics.read_text())
        assert written["n_train_images"] == expected
        assert written["heldout"]["n"] == len(HELDOUT)
