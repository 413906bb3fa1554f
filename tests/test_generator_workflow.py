"""The generator rules through Snakemake on a tiny synthetic NSD: the real upstream stages (demo
CLIP, embeddings, mappers; a few steps each), then pre-training, fine-tuning from the pre-trained
network, from scratch and end to end, and reconstruction, for one subject."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from conftest import TINY_CLIP, run_snakemake, tiny_config

from mindreader.io import read_json

pytestmark = pytest.mark.workflow

TINY = {
    "subjects": ["subj01"],
    "clip": TINY_CLIP,
    "mappers": {"cnn": {"hidden": 4, "blocks": 1, "head_hidden": 8, "pad_multiple": 32}, "train": {"epochs": 2}},
    "generator": {
        "resolution": 16,
        "z_dim": 8,
        "w_dim": 8,
        "mapping_layers": 1,
        "channel_base": 64,
        "channel_max": 8,
        "branch_width": 8,
        "mbstd_group_size": 2,
        "batch": 8,
        "r1_interval": 2,
        "pl_interval": 2,
        "checkpoint_kimg": 0.0,
        "sample_kimg": 0.0,
        "log_steps": 1,
        "threads": 1,
        "pretrain": {"kimg": 0.032},
        "finetune": {"kimg": 0.016},
    },
    "ablations": {
        "main": {"mapper": "cnn", "loss": "mse_cos_contrastive", "variant": "img+cap", "strategy": "finetune"},
        "subjects": ["subj01"],
        "variants": ["img"],
        "strategies": ["finetune", "scratch", "e2e"],
        "losses": ["mse_cos_contrastive"],
        "mappers": ["cnn"],
    },
}
RUNS = [("img+cap", "finetune"), ("img", "finetune"), ("avg", "finetune"), ("img+cap", "scratch"), ("img+cap", "e2e")]
# The add variant reads both mappers but conditions a one-head G and D on their mean.
CONDITIONS = {"img+cap": (["img", "cap"], 2), "img": (["img"], 1), "avg": (["img", "cap"], 1)}


def test_pretrain_finetune_and_reconstruct_for_one_subject(tmp_path):
    config = tiny_config(**TINY)
    base = "results/reconstructions/subj01/cnn/mse_cos_contrastive"
    targets = [f"{base}/{variant}/{strategy}.h5" for variant, strategy in RUNS]
    run_snakemake(tmp_path, targets, config)

    with h5py.File(tmp_path / "results/prepared/subj01.h5") as f:
        test_ids = f["test/nsd_id"][()]
    pretrained = read_json(tmp_path / "results/generator/pretrained/network.json")
    assert pretrained["conditions"] == ["img"] and pretrained["steps"] == 4
    for variant, strategy in RUNS:
        with h5py.File(tmp_path / f"{base}/{variant}/{strategy}.h5") as f:
            assert f["images"].shape == (len(test_ids), 16, 16, 3) and f["images"].dtype == np.uint8
            np.testing.assert_array_equal(f["nsd_id"][()], test_ids)
            assert f.attrs["z_policy"] == "random" and f.attrs["resolution"] == 16
        assert len(list((tmp_path / f"{base}/{variant}/{strategy}_png").glob("*.png"))) == len(test_ids)
        run = tmp_path / f"results/generator/subj01/cnn/mse_cos_contrastive/{variant}/{strategy}"
        network = read_json(run / "network.json")
        conditions, heads = CONDITIONS[variant]
        assert network["conditions"] == conditions
        assert network["generator"]["n_conditions"] == network["discriminator"]["n_conditions"] == heads
        with open(run / "losses.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2 and "Loss/G/itc/0" in rows[0]
        assert (run / "samples.png").is_file() and (run / "provenance.json").is_file()
        assert not (
            tmp_path / f"results/checkpoints/generator/subj01/cnn/mse_cos_contrastive/{variant}/{strategy}"
        ).exists()
    with h5py.File(tmp_path / "results/generator/subj01/cnn/mse_cos_contrastive/img+cap/e2e/e2e_pred_test.h5") as f:
        assert f["pred"].shape == f["target"].shape == (len(test_ids), 2, 16)
        rows = list(
            csv.DictReader(open(tmp_path / "results/generator/subj01/cnn/mse_cos_contrastive/img+cap/e2e/losses.csv"))
        )
        assert "Loss/M/total" in rows[0]

    dry = run_snakemake(tmp_path, targets, config, "--dry-run")
    assert "Nothing to be done" in dry.stdout + dry.stderr
