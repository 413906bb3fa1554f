"""The smoke run's writer and checker (mindreader/smoke.py); `make smoke` runs the smoke itself."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
import yaml
from snakemake.utils import update_config, validate

from conftest import REPO
from mindreader import smoke
from mindreader.clip import load_clip
from mindreader.evaluation.battery import METRICS
from mindreader.evaluation.networks import load_network
from mindreader.evaluation.run import ORACLE_RETRIEVAL
from mindreader.evaluation.tables import ABLATION_COLUMNS

PAPER = yaml.safe_load((REPO / "config" / "nsd.yaml").read_text())


def merged_config(overlay: dict) -> dict:
    """What the workflow sees: config.yaml, then nsd.yaml, then the overlay, as Snakemake merges them."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, PAPER)
    update_config(config, overlay)
    return config


@pytest.mark.parametrize("entry", smoke.RANDOM_WEIGHTS, ids=lambda e: e.name)
def test_each_random_weights_file_loads_strictly_through_the_workflows_loader(tmp_path, entry):
    # ViT-L/14 (1.7 GB) takes the paper CLIP's builder; ViT-B/32 stands in for it here.
    paper = copy.deepcopy(PAPER)
    paper["evaluation"]["clip"]["model"] = paper["clip"]["model"]
    path, digest = smoke.write_random_weights(entry, paper, tmp_path)
    section = paper
    for key in entry.section:
        section = section[key]
    cfg = {**section, "weights": str(path), "sha256": digest}
    if entry.name in ("clip", "evaluation_clip"):
        model = load_clip(cfg)  # create_frozen_clip fails on any missing or unexpected key
        assert model.encode_images(torch.rand(1, 3, 64, 64)).shape == (1, model.embed_dim)
    else:
        net, reason = load_network(entry.name, cfg, torch.device("cpu"))
        assert reason is None
        features = net(torch.rand(2, 3, 64, 64))
        # batch norms calibrated: a random network's features do not vanish (nor its distances)
        assert all(f.std(dim=0).mean() > 1e-3 for f in features.values()), entry.name


def test_weights_are_seeded_and_not_rewritten(tmp_path):
    entry = next(e for e in smoke.RANDOM_WEIGHTS if e.name == "swav")
    path, digest = smoke.write_random_weights(entry, PAPER, tmp_path)
    written = path.stat().st_mtime_ns
    again, same = smoke.write_random_weights(entry, PAPER, tmp_path)
    assert (again, same) == (path, digest) and path.stat().st_mtime_ns == written


def test_overlay_keeps_the_paper_shapes_and_cuts_only_lengths_and_batches(tmp_path):
    overlay = yaml.safe_load(smoke.write(tmp_path, REPO / "config" / "nsd.yaml", entries=()).read_text())
    config = merged_config(overlay)
    validate(config, schema=str(REPO / "config" / "schema.yaml"))
    assert config["synthetic"]["volume_shape"] == [81, 104, 83] and config["synthetic"]["image_side"] == 425
    assert 15000 <= config["synthetic"]["roi_voxels"] <= 16500
    for section, keys in {
        "generator": ("resolution", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "branch_width"),
        "mappers": ("cnn", "mlp"),
        "clip": ("model", "n_aug", "augment"),
        "evaluation": ("image_side", "fid_protocols", "fid_generated_images", "oracle"),
    }.items():
        for key in keys:
            assert config[section][key] == PAPER[section][key], f"{section}.{key}"
    assert config["evaluation"]["clip"]["model"] == PAPER["evaluation"]["clip"]["model"]
    # the main setting (a row of every table) and the ablations that take other code paths
    main = PAPER["ablations"]["main"]
    for axis, key in (("variant", "variants"), ("strategy", "strategies"), ("loss", "losses"), ("mapper", "mappers")):
        assert main[axis] in config["ablations"][key], key
    assert "avg" in config["ablations"]["variants"] and "e2e" in config["ablations"]["strategies"]
    assert {"ridge", "mlp"} <= set(config["ablations"]["mappers"])


def measured_summary(source: str = "brain") -> dict:
    metrics = {m.key: {"value": 0.5, "ci95": [0.4, 0.6]} for m in METRICS}
    if source == "oracle":
        metrics.update({m.key: {"missing": ORACLE_RETRIEVAL} for m in METRICS if m.kind == "retrieval"})
    return {"source": source, "metrics": metrics, "networks": {"alexnet": "loaded", "clip": "loaded: ViT-L-14"}}


def test_the_check_flags_a_missing_or_non_finite_metric():
    assert smoke.metrics_problems(measured_summary("brain"), "a.json") == []
    assert smoke.metrics_problems(measured_summary("oracle"), "a_oracle.json") == []
    absent = measured_summary()
    absent["metrics"]["alex2"] = {"missing": "weights file not found: weights/alexnet.safetensors"}
    absent["networks"]["alexnet"] = "missing: weights file not found"
    problems = smoke.metrics_problems(absent, "a.json")
    assert any("alex2 missing" in p for p in problems) and any("network alexnet" in p for p in problems)
    nan = measured_summary("oracle")
    nan["metrics"]["ssim"]["value"] = math.nan
    assert smoke.metrics_problems(nan, "a_oracle.json") == ["a_oracle.json: ssim is nan, not a finite number"]


def test_the_check_flags_a_table_cell_not_measured():
    row = {"variant": "img+cap", **{c: 1.0 for k in ABLATION_COLUMNS for c in (k, f"{k}_lo", f"{k}_hi")}}
    oracle = {**row, **{k: math.nan for k in ("img_ret", "img_ret_lo", "img_ret_hi")}}
    rows = [{**row, "source": "brain", "fid_generated_lo": math.nan}, {**oracle, "source": "oracle"}]
    assert smoke.table_problems(pd.DataFrame(rows), ABLATION_COLUMNS, "t.csv") == []
    rows[0]["swav"] = math.nan
    problems = smoke.table_problems(pd.DataFrame(rows), ABLATION_COLUMNS, "t.csv")
    assert problems == ["t.csv row 0 (brain): swav not measured"]


def test_the_check_of_an_unfinished_run_names_what_is_absent(tmp_path):
    smoke.write(tmp_path, REPO / "config" / "nsd.yaml", entries=())
    problems = smoke.check(tmp_path)
    assert "results/tables/comparison.csv: not written" in problems
    assert "report.html: not written" in problems and "results/metrics: no run's metrics" in problems
