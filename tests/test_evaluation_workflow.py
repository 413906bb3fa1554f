"""Workflow test of the evaluation rules: fig3, the tables and the HTML report from a tiny
synthetic NSD. The upstream stages' outputs (reconstructions, mapper predictions, the demo CLIP)
are hand-made here in the contract's format so that the test exercises evaluation alone, fast;
the demo CLIP has RANDOM weights (its metrics run, their values mean nothing)."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import run_snakemake, tiny_config

from mindreader.clip.demo import build_demo_clip, save_demo_clip
from mindreader.io import read_json
from mindreader.names import TABLE_NAMES
from mindreader.nsd import NSD

pytestmark = pytest.mark.workflow

ABLATIONS = {
    "main": {"mapper": "cnn", "loss": "mse_cos_contrastive", "variant": "img+cap", "strategy": "finetune"},
    "subjects": ["subj01"],
    "variants": ["img", "cap", "img+cap"],
    "strategies": ["finetune"],
    "losses": ["mse_cos_contrastive"],
    "mappers": ["cnn", "ridge"],
}
RUNS = [("cnn", "mse_cos_contrastive", v) for v in ("img", "cap", "img+cap")] + [("ridge", "mse", "img+cap")]
EMBED_DIM = 8
EVALUATION_RULES = ("evaluate_run", "make_tables", "fig3", "subject_reconstructions", "training_curves", "retrieval_examples", "metric_bars")
FIGURES = ("fig3", "metrics_conditioning", "subj01/reconstructions", "subj01/training_curves", "subj01/retrieval")


def _write_upstream(workdir, config):
    """What the earlier stages would have made for subj01's runs, in the contract's format."""
    nsd = NSD(workdir / config["nsd_root"])
    seen = nsd.subject_images("subj01", config["prepare"]["sessions"])
    test_ids = np.intersect1d(seen, nsd.design.sharedix)
    truth = nsd.read_images(test_ids)
    rng = np.random.default_rng(0)
    for mapper, loss, variant in RUNS:
        noise = rng.integers(-60, 60, truth.shape)
        rec = np.clip(truth.astype(int) // 2 * 2 + noise, 0, 255).astype(np.uint8)[:, ::2, ::2]  # half size
        path = workdir / f"results/reconstructions/subj01/{mapper}/{loss}/{variant}/finetune.h5"
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as f:
            f["images"], f["nsd_id"] = rec, test_ids
            f.attrs["z_policy"], f.attrs["seed"], f.attrs["resolution"] = "random", 0, rec.shape[1]
        for target in ("img", "cap"):
            folder = workdir / f"results/mappers/subj01/{mapper}/{loss}/{target}"
            folder.mkdir(parents=True, exist_ok=True)
            true = rng.standard_normal((len(test_ids), EMBED_DIM)).astype(np.float32)
            with h5py.File(folder / "pred_test.h5", "w") as f:
                f["nsd_id"], f["target"] = test_ids, true
                f["pred"] = true + rng.standard_normal(true.shape).astype(np.float32)
    for target in ("img", "cap"):  # the main mapper's training curve
        curve = pd.DataFrame({"epoch": [1, 2, 3], "lr": 1e-3, "train_loss": [1.0, 0.7, 0.6], "val_loss": [1.1, 0.9, 0.95]})
        curve.to_csv(workdir / f"results/mappers/subj01/cnn/mse_cos_contrastive/{target}/curve.csv", index=False)
    losses = workdir / "results/generator/subj01/cnn/mse_cos_contrastive/img+cap/finetune/losses.csv"
    losses.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"step": [10, 20, 30], "kimg": [0.3, 0.6, 0.9], "G/adv": [0.8, 0.7, 0.65], "D/r1": [0.1, 0.05, 0.04]}).to_csv(
        losses, index=False
    )
    demo_cfg = config["clip"]["demo"]
    model, _ = build_demo_clip(demo_cfg)  # random weights
    save_demo_clip(model, demo_cfg, workdir / demo_cfg["dir"])
    return test_ids


def test_figures_tables_and_report_from_a_tiny_synthetic_run(tmp_path):
    config = tiny_config(subjects=["subj01"], ablations=ABLATIONS, evaluation={"bootstrap": 100, "bootstrap_fd": 20})
    marker = f"{config['nsd_root']}/.synthetic_complete.json"
    run_snakemake(tmp_path, [marker], config)
    test_ids = _write_upstream(tmp_path, config)

    tables = [f"results/tables/{name}.{ext}" for name in TABLE_NAMES for ext in ("csv", "md", "tex")]
    figures = [f"results/figures/{name}.{ext}" for name in FIGURES for ext in ("pdf", "png")]
    # only the evaluation rules: the hand-made upstream files stand in for the earlier stages
    # (--nolock ends --allowed-rules' list, which would otherwise swallow the targets)
    only_evaluation = ("--allowed-rules", *EVALUATION_RULES, "--nolock")
    run_snakemake(tmp_path, [*figures, *tables], config, *only_evaluation)
    for path in figures:
        assert (tmp_path / path).stat().st_size > 0, path

    summary = read_json(tmp_path / "results/metrics/subj01/cnn/mse_cos_contrastive/img+cap/finetune.json")
    assert summary["n_images"] == len(test_ids)
    assert summary["data"]["synthetic"] is True
    for key in ("pixcorr", "ssim", "clip", "fd_clip", "img_ret", "brain_ret", "cap_ret"):
        lo, hi = summary["metrics"][key]["ci95"]
        assert lo <= summary["metrics"][key]["value"] <= hi, key
    for key in ("fid_paired", "fid_generated", "alex2", "alex5", "incep", "eff", "swav"):
        assert "value" not in summary["metrics"][key] and summary["metrics"][key]["missing"], key
    per_image = pd.read_csv(tmp_path / "results/metrics/subj01/cnn/mse_cos_contrastive/img+cap/finetune.per_image.csv")
    assert list(per_image["nsd_id"]) == list(test_ids)

    conditioning = pd.read_csv(tmp_path / "results/tables/conditioning.csv")
    assert list(conditioning["variant"]) == ["img", "cap", "img+cap"]
    assert conditioning["data"].str.contains("SYNTHETIC NSD").all()
    md = (tmp_path / "results/tables/comparison.md").read_text()
    assert "ours: ridge" in md and "[quoted, not measured]" in md and "Not measured (" in md

    report = tmp_path / "report.html"
    run_snakemake(tmp_path, [*figures, *tables], config, *only_evaluation, "--report", str(report))
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 10_000
    for name in ("fig3.png", "retrieval.png", "training_curves.png", "metrics_conditioning.png", "comparison.csv"):
        assert name in html, name
