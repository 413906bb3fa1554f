"""The train_mapper rule through Snakemake: tiny mappers for two subjects on a tiny synthetic NSD."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import run_snakemake, tiny_config

from mindreader.mappers import load_mapper
from mindreader.names import MAPPER_OUTPUT_FILES

TINY = {
    "clip": {
        "demo": {"embed_dim": 16, "image_size": 32, "vision_width": 8, "context_length": 24, "text_width": 32,
                 "text_layers": 1, "text_heads": 2, "steps": 4, "batch_size": 16},
        "batch_size": 32,
    },
    "mappers": {
        "cnn": {"hidden": 4, "blocks": 1, "head_hidden": 8, "pad_multiple": 32},
        "mlp": {"hidden": 32, "blocks": 1, "dropout_in": 0.5, "dropout": 0.15},
        "train": {"epochs": 3},
    },
}
FOLDERS = [
    "results/mappers/subj01/cnn/mse_cos_contrastive/img",
    "results/mappers/subj01/cnn/mse_cos_contrastive/cap",
    "results/mappers/subj02/ridge/mse/img",
    "results/mappers/subj02/mlp/mse_cos/cap",
]


@pytest.mark.workflow
def test_train_mapper_fills_each_folder_for_two_subjects_and_rejects_ridge_with_another_loss(tmp_path):
    config = tiny_config(**TINY)
    run_snakemake(tmp_path, [f"{folder}/metrics.json" for folder in FOLDERS], config)
    for folder in FOLDERS:
        out = tmp_path / folder
        subject = folder.split("/")[2]
        assert all((out / name).is_file() for name in MAPPER_OUTPUT_FILES), folder
        assert (out / "provenance.json").is_file()
        with h5py.File(tmp_path / f"results/prepared/{subject}.h5") as f, h5py.File(out / "pred_test.h5") as p:
            assert np.array_equal(p["nsd_id"][()], f["test/nsd_id"][()])
            assert p["pred"].shape == (len(f["test/nsd_id"]), 16)
            n_voxels = f["train/betas"].shape[1]
        model = load_mapper(out)
        assert model.n_voxels == n_voxels and model.embed_dim == 16
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["subject"] == subject and 0.0 <= metrics["retrieval"]["all"]["image_retrieval"] <= 1.0
        assert (tmp_path / f"results/benchmarks/mappers/{folder.removeprefix('results/mappers/')}.tsv").is_file()
    assert not (tmp_path / "results/checkpoints/mappers").exists() or not any((tmp_path / "results/checkpoints/mappers").rglob("state.json"))

    again = run_snakemake(tmp_path, [f"{folder}/metrics.json" for folder in FOLDERS], config)
    assert "Nothing to be done" in again.stdout + again.stderr

    # Bad request through the rule: ridge has no loss but "mse".
    result = run_snakemake(tmp_path, ["results/mappers/subj01/ridge/cos/img/metrics.json"], config, check=False)
    assert result.returncode != 0
    log = (tmp_path / "results/logs/mappers/subj01/ridge/cos/img.log").read_text()
    assert "its loss must be 'mse', got 'cos'" in log
    assert not (tmp_path / "results/mappers/subj01/ridge/cos/img").exists() or not any(
        (tmp_path / "results/mappers/subj01/ridge/cos/img").iterdir())
