"""The CLIP rules through Snakemake on a tiny synthetic NSD, with a few steps of demo-CLIP training."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CLIP, run_snakemake, tiny_config

from mindreader import weights
from mindreader.nsd import NSD


@pytest.mark.workflow
def test_clip_rules_embed_every_seen_image_once_and_screen_captions(tmp_path):
    config = tiny_config(clip=TINY_CLIP)
    run_snakemake(tmp_path, ["results/clip/images.h5", "results/clip/captions.h5"], config)

    nsd = NSD(tmp_path / config["nsd_root"])
    seen = np.unique(np.concatenate([nsd.subject_images(s, config["prepare"]["sessions"]) for s in config["subjects"]]))
    with h5py.File(tmp_path / "results/clip/images.h5") as f:
        np.testing.assert_array_equal(f["nsd_id"][()], seen)  # shared images once, ascending
        assert f["raw"].shape == f["target"].shape == (len(seen), 16)
        np.testing.assert_allclose(np.linalg.norm(f["target"][()], axis=1), 1.0, rtol=1e-5)
        assert f.attrs["model"].startswith("local-dir:") and f.attrs["n_aug"] == 0
    with h5py.File(tmp_path / "results/clip/captions.h5") as f:
        np.testing.assert_array_equal(f["nsd_id"][()], seen)
        all_ids, all_scores = f["all/nsd_id"][()], f["all/score"][()]
        best = [all_scores[all_ids == i].max() for i in seen]
        np.testing.assert_allclose(f["score"][()], best, rtol=1e-6)
    table = pd.read_csv(tmp_path / "results/clip/captions_selected.tsv", sep="\t")
    assert len(table) == len(seen) and table["caption"].str.len().min() > 0

    metrics = json.loads((tmp_path / "results/clip/demo/metrics.json").read_text())
    test_ids = set()
    for subject in config["subjects"]:
        with h5py.File(tmp_path / f"results/prepared/{subject}.h5") as f:
            test_ids |= set(f["test/nsd_id"][()].tolist())
    assert metrics["heldout"]["n"] == len(test_ids) and metrics["steps"] == 4
    assert metrics["n_train_images"] == len(set(seen.tolist()) - test_ids)  # no test image in training
    assert (tmp_path / "results/clip/demo/open_clip_model.provenance.json").is_file()


def stand_in_weights(cfg, folder):
    """Point every weights entry of the config (sections with weights_name + weights) at a small
    local file with its checksum, so fetch_weights has nothing to download."""
    if isinstance(cfg, dict):
        if cfg.get("weights_name") and cfg.get("weights"):
            path = folder / f"{cfg['weights_name']}.bin"
            path.write_bytes(f"stand-in for {cfg['weights_name']}".encode())
            cfg["weights"], cfg["sha256"] = str(path), weights.sha256_of(path)
        for value in cfg.values():
            stand_in_weights(value, folder)


@pytest.mark.workflow
def test_fetch_weights_keeps_verified_files_and_pretrained_rules_need_them(tmp_path):
    folder = tmp_path / "resources/weights"
    folder.mkdir(parents=True)
    config = tiny_config(clip={"train_demo": False})
    stand_in_weights(config, folder)
    clip_weights = folder / "clip-vit-b-32-openai.bin"
    assert config["clip"]["weights"] == str(clip_weights)
    run_snakemake(tmp_path, ["fetch_weights"], config)
    log = (tmp_path / "results/logs/fetch_weights.log").read_text()
    assert f"clip-vit-b-32-openai: already present and verified at {clip_weights}" in log

    clip_weights.unlink()
    dry = run_snakemake(tmp_path, ["results/clip/images.h5"], config, "--dry-run", check=False)
    assert dry.returncode != 0
    assert f"clip-vit-b-32-openai ({clip_weights})" in dry.stderr and "fetch_weights" in dry.stderr
