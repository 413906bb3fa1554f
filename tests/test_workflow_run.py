"""The whole workflow once, at toy size (conftest.TINY_RUN through `snakemake`, rule all): each
stage's outputs as the next stage and the user read them, the science the demo must show (the
demo CLIP and the ridge mapper far above chance, a shuffled-brain control not), the HTML report,
and what a single figure's target plans."""

from __future__ import annotations

import csv
import json
import re
import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from conftest import TINY_RELEASE, TINY_RUN, deep_update, run_snakemake, tiny_config

from mindreader.demo_weights import MANIFEST, RELEASE_FILES, DemoWeightsMismatch, verify
from mindreader.evaluation.networks import FID_NETWORK
from mindreader.io import read_json
from mindreader.mappers import load_mapper
from mindreader.mappers.data import validation_mask
from mindreader.mappers.retrieval import embedding_metrics
from mindreader.mappers.ridge import fit_ridge
from mindreader.names import MAPPER_OUTPUT_FILES, SCENE_STAGES, TABLE_NAMES
from mindreader.nsd import NSD
from mindreader.smoke import random_fid_inception_state
from mindreader.synth import SyntheticSpec, write_synthetic_nsd
from mindreader.weights import sha256_of

pytestmark = pytest.mark.workflow

CONFIG = tiny_config(**TINY_RUN)
SUBJECTS = CONFIG["subjects"]
MAIN = "subj01/cnn/mse_cos_contrastive"
# (variant, strategy) -> (the conditions read, heads of G and D)
GENERATOR_RUNS = {
    ("img+cap", "finetune"): (["img", "cap"], 2),
    ("img", "finetune"): (["img"], 1),
    ("cap", "finetune"): (["cap"], 1),
    ("avg", "finetune"): (["img", "cap"], 1),  # the mean of both predictions as one condition
    ("img+cap", "scratch"): (["img", "cap"], 2),
    ("img+cap", "e2e"): (["img", "cap"], 2),
}
MAPPER_FOLDERS = [
    "subj01/cnn/mse_cos_contrastive/img",
    "subj01/cnn/mse_cos_contrastive/cap",
    "subj02/ridge/mse/img",
    "subj02/mlp/mse_cos_contrastive/cap",
]
FIGURES = (
    "fig3",
    "metrics_conditioning",
    "subj01/reconstructions",
    "subj01/training_curves",
    "subj01/retrieval",
    "scene_recovery",
)
# Every run the tables use: the GENERATOR_RUNS, the mapper-loss ablation and the comparison mappers.
TABLE_RUNS = [
    *(f"{MAIN}/{variant}/{strategy}" for variant, strategy in GENERATOR_RUNS),
    "subj01/cnn/mse_cos/img+cap/finetune",
    *(f"{s}/{m}/img+cap/finetune" for s in SUBJECTS for m in ("ridge/mse", "mlp/mse_cos_contrastive")),
    "subj02/cnn/mse_cos_contrastive/img+cap/finetune",
]
RETRIEVAL = ("img_ret", "brain_ret", "cap_ret", "cap_brain_ret")


def test_prepared_subjects(tiny_run):
    for subject in SUBJECTS:
        target = tiny_run / f"results/prepared/{subject}.h5"
        with h5py.File(target) as h5:
            assert h5.attrs["subject"] == subject and h5.attrs["sessions"] == CONFIG["prepare"]["sessions"]
            train, test = h5["train/betas"][()], h5["test/betas"][()]
            assert train.shape[1] == test.shape[1] == h5.attrs["n_voxels"] == len(h5["voxel_xyz"])
            assert np.isfinite(train).all() and np.isfinite(test).all()
            assert not set(h5["train/nsd_id"][()]) & set(h5["test/nsd_id"][()])
            assert len(h5["test/nsd_id"]) == CONFIG["synthetic"]["n_shared"]
        assert target.with_suffix(".provenance.json").exists()


def test_clip_embeds_every_seen_image_once_and_screens_captions(tiny_run):
    nsd = NSD(tiny_run / CONFIG["nsd_root"])
    seen = np.unique(np.concatenate([nsd.subject_images(s, CONFIG["prepare"]["sessions"]) for s in SUBJECTS]))
    dim = CONFIG["clip"]["demo"]["embed_dim"]
    with h5py.File(tiny_run / "results/clip/images.h5") as f:
        np.testing.assert_array_equal(f["nsd_id"][()], seen)  # shared images once, ascending
        assert f["raw"].shape == f["target"].shape == (len(seen), dim)
        np.testing.assert_allclose(np.linalg.norm(f["target"][()], axis=1), 1.0, rtol=1e-5)
        assert f.attrs["model"].startswith("local-dir:") and f.attrs["n_aug"] == 0
    with h5py.File(tiny_run / "results/clip/captions.h5") as f:
        np.testing.assert_array_equal(f["nsd_id"][()], seen)
        all_ids, all_scores = f["all/nsd_id"][()], f["all/score"][()]
        np.testing.assert_allclose(f["score"][()], [all_scores[all_ids == i].max() for i in seen], rtol=1e-6)
    table = pd.read_csv(tiny_run / "results/clip/captions_selected.tsv", sep="\t")
    assert len(table) == len(seen) and table["caption"].str.len().min() > 0

    metrics = json.loads((tiny_run / "results/clip/demo/metrics.json").read_text())
    test_ids = set()
    for subject in SUBJECTS:
        with h5py.File(tiny_run / f"results/prepared/{subject}.h5") as f:
            test_ids |= set(f["test/nsd_id"][()].tolist())
    assert metrics["heldout"]["n"] == len(test_ids) and metrics["steps"] == CONFIG["clip"]["demo"]["steps"]
    # clip.demo.corpus tree: every stimulus of the tree; subjects: the images the subjects saw
    corpus = set(range(nsd.n_images)) if CONFIG["clip"]["demo"]["corpus"] == "tree" else set(seen.tolist())
    assert metrics["n_train_images"] == len(corpus - test_ids)  # no test image in training


def test_mapper_folders(tiny_run):
    for folder in MAPPER_FOLDERS:
        out = tiny_run / "results/mappers" / folder
        subject = folder.split("/")[0]
        assert all((out / name).is_file() for name in MAPPER_OUTPUT_FILES), folder
        assert (out / "provenance.json").is_file()
        with h5py.File(tiny_run / f"results/prepared/{subject}.h5") as f, h5py.File(out / "pred_test.h5") as p:
            assert np.array_equal(p["nsd_id"][()], f["test/nsd_id"][()])
            assert p["pred"].shape == (len(f["test/nsd_id"]), CONFIG["clip"]["demo"]["embed_dim"])
            n_voxels = f["train/betas"].shape[1]
        model = load_mapper(out)
        assert model.n_voxels == n_voxels and model.embed_dim == CONFIG["clip"]["demo"]["embed_dim"]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["subject"] == subject and 0.0 <= metrics["retrieval"]["all"]["image_retrieval"] <= 1.0
        assert (tiny_run / f"results/benchmarks/mappers/{folder}.tsv").is_file()
    assert not any((tiny_run / "results/checkpoints").rglob("state.json"))  # removed once outputs exist


def test_a_ridge_mapper_with_another_loss_is_refused_with_a_clear_error(tiny_run):
    target = "results/mappers/subj01/ridge/cos/img/metrics.json"
    result = run_snakemake(tiny_run, [target], CONFIG, check=False)
    assert result.returncode != 0
    assert "its loss must be 'mse', got 'cos'" in (tiny_run / "results/logs/mappers/subj01/ridge/cos/img.log").read_text()
    folder = tiny_run / "results/mappers/subj01/ridge/cos/img"
    assert not folder.exists() or not any(folder.iterdir())


def test_generator_runs(tiny_run):
    with h5py.File(tiny_run / "results/prepared/subj01.h5") as f:
        test_ids = f["test/nsd_id"][()]
    side = CONFIG["generator"]["resolution"]
    pretrained = read_json(tiny_run / "results/generator/pretrained/network.json")
    # pre-training's own batch (4: 8 steps for 0.032 kimg) and z; fine-tuning the shared ones
    assert pretrained["conditions"] == ["img"] and pretrained["steps"] == 8 and pretrained["train_z"] == "zero"
    for (variant, strategy), (conditions, heads) in GENERATOR_RUNS.items():
        with h5py.File(tiny_run / f"results/reconstructions/{MAIN}/{variant}/{strategy}.h5") as f:
            assert f["images"].shape == (len(test_ids), side, side, 3) and f["images"].dtype == np.uint8
            np.testing.assert_array_equal(f["nsd_id"][()], test_ids)
            assert f.attrs["z_policy"] == "random" and f.attrs["resolution"] == side
        pngs = tiny_run / f"results/reconstructions/{MAIN}/{variant}/{strategy}_png"
        assert len(list(pngs.glob("*.png"))) == len(test_ids)
        run = tiny_run / f"results/generator/{MAIN}/{variant}/{strategy}"
        network = read_json(run / "network.json")
        assert network["conditions"] == conditions and network["init"] == ("pretrain" if strategy != "scratch" else None)
        assert network["train_z"] == "random" and network["kimg"] == CONFIG["generator"]["finetune"]["kimg"]
        assert network["generator"]["n_conditions"] == network["discriminator"]["n_conditions"] == heads
        with open(run / "losses.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2 and "Loss/G/itc/0" in rows[0]
        assert (run / "samples.png").is_file() and (run / "provenance.json").is_file()
        assert not (tiny_run / f"results/checkpoints/generator/{MAIN}/{variant}/{strategy}").exists()
    with h5py.File(tiny_run / f"results/generator/{MAIN}/img+cap/e2e/e2e_pred_test.h5") as f:
        assert f["pred"].shape == f["target"].shape == (len(test_ids), 2, CONFIG["clip"]["demo"]["embed_dim"])
    with open(tiny_run / f"results/generator/{MAIN}/img+cap/e2e/losses.csv") as f:
        assert "Loss/M/total" in next(csv.DictReader(f))


def test_run_metrics_from_real_reconstructions(tiny_run):
    with h5py.File(tiny_run / "results/prepared/subj01.h5") as f:
        test_ids = f["test/nsd_id"][()]
    summary = read_json(tiny_run / f"results/metrics/{MAIN}/img+cap/finetune.json")
    assert summary["n_images"] == len(test_ids) and summary["data"]["synthetic"] is True
    for key in ("pixcorr", "ssim", "clip", "fd_clip", "img_ret", "brain_ret", "cap_ret"):
        lo, hi = summary["metrics"][key]["ci95"]
        assert lo <= summary["metrics"][key]["value"] <= hi, key
    # No weights files in the toy run: these are reported missing, with the reason, never made up.
    for key in ("fid_paired", "fid_generated", "alex2", "alex5", "incep", "eff", "swav"):
        assert "value" not in summary["metrics"][key] and summary["metrics"][key]["missing"], key
    per_image = pd.read_csv(tiny_run / f"results/metrics/{MAIN}/img+cap/finetune.per_image.csv")
    assert list(per_image["nsd_id"]) == list(test_ids)


def test_the_workflow_reports_both_fids_when_the_fid_network_is_there(tiny_run, tmp_path):
    """On a copy of the run (Snakemake's records too) given a FID network file (random weights of
    pytorch-fid's Inception, as the smoke run's): the main run's evaluation reports both FIDs, and
    only evaluation jobs and the table run again."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    weights = tmp_path / "inception-random.pth"
    torch.manual_seed(0)
    torch.save(random_fid_inception_state(), weights)
    fid_network = {"weights_name": None, "weights": str(weights), "sha256": sha256_of(weights)}
    main = CONFIG["ablations"]["main"]
    one_run = {"variants": [main["variant"]], "strategies": [main["strategy"]], "losses": [main["loss"]],
               "mappers": [main["mapper"]]}
    config = deep_update(CONFIG, {"ablations": one_run, "evaluation": {"fid_generated_images": 6,
                                                                        "networks": {FID_NETWORK: fid_network}}})
    made = run_snakemake(workdir, [f"results/tables/conditioning.{ext}" for ext in ("csv", "md")], config)
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", made.stdout + made.stderr, flags=re.MULTILINE))
    jobs.pop("total", None)
    assert jobs and set(jobs) <= {"evaluate_run", "fid_generated", "fid_generated_oracle", "make_tables"}, jobs
    with h5py.File(workdir / "results/prepared/subj01.h5") as f:
        test_ids = f["test/nsd_id"][()]
    summary = read_json(workdir / f"results/metrics/{MAIN}/img+cap/finetune.json")
    paired, generated = summary["metrics"]["fid_paired"], summary["metrics"]["fid_generated"]
    assert paired["ci95"][0] <= paired["value"] <= paired["ci95"][1]
    assert generated["value"] > 0 and (generated["n_generated"], generated["n_real"]) == (6, len(test_ids))
    md = (workdir / "results/tables/conditioning.md").read_text()
    assert "FID (paired) ↓" in md and "FID (6 generated) ↓" in md and "fid50k_full" in md


def test_an_external_method_is_a_comparison_row_and_every_row_is_scored_on_the_common_images(tiny_run, tmp_path):
    """On a copy of the run: the main run's own reconstructions of 2/3 of subj01's test images,
    written as a PNG folder, configured as evaluation.external "mine". Only the new jobs run (no
    run's evaluation again); the comparison table and the metric bars get the row external:mine;
    every measured row is scored on those images (N), and the main run, scored again on them,
    equals the external row on every image metric (the same images by nsd id), while keeping
    its retrieval. Catches: the runs not scored again on the common images."""
    workdir = tmp_path / "run"
    shutil.copytree(tiny_run, workdir, symlinks=True)
    ids_of = {}
    for subject in SUBJECTS:
        with h5py.File(workdir / f"results/reconstructions/{subject}/cnn/mse_cos_contrastive/img+cap/finetune.h5") as f:
            ids_of[subject] = f["nsd_id"][()]
            if subject == "subj01":
                images = dict(zip(f["nsd_id"][()].tolist(), f["images"][()]))
    both = np.intersect1d(*ids_of.values())
    kept = both[: 2 * len(both) // 3]
    folder = tmp_path / "mine"
    folder.mkdir()
    for nsd_id in kept:
        Image.fromarray(images[int(nsd_id)]).save(folder / f"{nsd_id}.png")
    main = CONFIG["ablations"]["main"]
    one_setting = {"variants": [main["variant"]], "strategies": [main["strategy"]], "losses": [main["loss"]],
                   "mappers": [main["mapper"]]}
    external = {"mine": {"subject": "subj01", "path": str(folder), "format": "png", "selection": "the only sample"}}
    config = deep_update(CONFIG, {"ablations": one_setting, "evaluation": {"external": external}})
    made = run_snakemake(workdir, ["results/tables/comparison.md", "results/figures/metrics_conditioning.png"], config)
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)$", made.stdout + made.stderr, flags=re.MULTILINE))
    jobs.pop("total", None)
    assert set(jobs) == {"score_external", "comparison_metrics", "make_tables", "metric_bars"}, jobs

    common = read_json(workdir / "results/metrics/comparison.json")
    assert common["nsd_id"] == kept.tolist() and common["n_images"] == len(kept) < len(ids_of["subj01"])
    rows = {row["key"]: row for row in common["rows"]}
    assert set(rows) == {f"{s}/cnn/mse_cos_contrastive/img+cap/finetune{o}" for s in SUBJECTS for o in ("", "_oracle")} | {
        "external:mine"
    }
    ours, mine = rows[f"{MAIN}/img+cap/finetune"], rows["external:mine"]
    assert ours["rescored"] and ours["n_own"] == len(ids_of["subj01"]) and not mine["rescored"]
    assert all(row["summary"]["n_images"] == len(kept) for row in rows.values())
    compared = {key for key, result in mine["summary"]["metrics"].items() if "value" in result}
    assert {"pixcorr", "ssim", "clip", "fd_clip"} <= compared  # the tiny run has no other network
    for key in compared:
        assert ours["summary"]["metrics"][key]["value"] == pytest.approx(mine["summary"]["metrics"][key]["value"], abs=1e-6)
        assert ours["summary"]["metrics"][key]["ci95"] == pytest.approx(mine["summary"]["metrics"][key]["ci95"], abs=1e-6)
    assert "value" in ours["summary"]["metrics"]["img_ret"] and "missing" in mine["summary"]["metrics"]["img_ret"]

    md = (workdir / "results/tables/comparison.md").read_text()
    assert f"| external:mine | subj01 | external | {len(kept)} |" in md
    assert f"| ours: cnn (Mind Reader's mapper) | subj01 | brain | {len(kept)} |" in md
    assert f"scored on the {len(kept)} test images" in md and "samples chosen by: the only sample" in md
    sources = pd.read_csv(workdir / "results/tables/external_sources.csv")
    assert sources["name"].tolist() == ["external:mine"] and sources["n_own"].tolist() == [len(kept)]
    assert sources["sha256"].tolist() == [read_json(workdir / "results/metrics/external/mine/metrics.json")["external"]["sha256"]]
    assert (workdir / "results/figures/metrics_conditioning.png").stat().st_size > 0


def test_a_job_that_asks_for_a_gpu_fails_at_once_without_one_unless_the_cpu_is_asked_for(tiny_run, tmp_path):
    """The image embedding job asking for a GPU as the paper's does (clip.gpus 1) under device
    auto, on this machine without one: fails, naming torch's CUDA build, the driver and
    CUDA_VISIBLE_DEVICES, and writes nothing. With device cpu the same job runs on the CPU.
    Catches: select_device ignoring the job's gpu resource (a silent CPU fallback)."""
    workdir = tmp_path / "run"
    for folder in ("resources", "results/clip"):
        shutil.copytree(tiny_run / folder, workdir / folder, symlinks=True)
    (workdir / "results/clip/images.h5").unlink()
    only_embedding = ("--allowed-rules=embed_images",)
    paper_like = deep_update(CONFIG, {"device": "auto", "clip": {"gpus": 1}})
    failed = run_snakemake(workdir, ["results/clip/images.h5"], paper_like, *only_embedding, check=False)
    assert failed.returncode != 0
    log = (workdir / "results/logs/clip/embed_images.log").read_text()
    assert "the job asked for 1 GPU(s)) but no usable CUDA device is visible" in log, log[-3000:]
    assert "is built for CUDA" in log and "CUDA_VISIBLE_DEVICES=" in log and "device: cpu" in log
    assert not (workdir / "results/clip/images.h5").exists()
    run_snakemake(workdir, ["results/clip/images.h5"], deep_update(paper_like, {"device": "cpu"}), *only_embedding)
    assert (workdir / "results/clip/images.h5").is_file()


def test_every_table_run_has_its_oracle_reconstructions_and_metrics(tiny_run):
    made = sorted(
        str(p.relative_to(tiny_run / "results/metrics"))[: -len(".json")]
        for p in (tiny_run / "results/metrics").rglob("*.json")
        if not p.name.endswith((".provenance.json", ".fid_generated.json", "_oracle.json"))
    )
    assert made == sorted(TABLE_RUNS)
    for run in TABLE_RUNS:
        with (
            h5py.File(tiny_run / f"results/reconstructions/{run}.h5") as b,
            h5py.File(tiny_run / f"results/reconstructions/{run}_oracle.h5") as o,
        ):
            assert b.attrs["source"] == "brain" and o.attrs["source"] == "oracle", run
            ids = b["nsd_id"][()]
            np.testing.assert_array_equal(o["nsd_id"][()], ids)  # one per test image, in test order
            assert o["images"].shape == b["images"].shape
            assert (o.attrs["z_policy"], o.attrs["seed"]) == (b.attrs["z_policy"], b.attrs["seed"])
            assert not np.array_equal(o["images"][()], b["images"][()]), run  # the conditions differ
        assert len(list((tiny_run / f"results/reconstructions/{run}_oracle_png").glob("*.png"))) == len(ids)
        oracle = read_json(tiny_run / f"results/metrics/{run}_oracle.json")
        brain = read_json(tiny_run / f"results/metrics/{run}.json")
        assert oracle["source"] == "oracle" and brain["source"] == "brain"
        assert oracle["reconstruction"]["source"] == "oracle" and oracle["n_images"] == brain["n_images"]
        for key in ("pixcorr", "ssim", "clip", "fd_clip"):
            lo, hi = oracle["metrics"][key]["ci95"]
            assert lo <= oracle["metrics"][key]["value"] <= hi, (run, key)
        for key in RETRIEVAL:
            assert oracle["metrics"][key]["missing"].startswith("not applicable to oracle rows"), (run, key)
        assert "value" in brain["metrics"]["img_ret"]
        per_image = pd.read_csv(tiny_run / f"results/metrics/{run}_oracle.per_image.csv")
        assert list(per_image["nsd_id"]) == list(ids)


def test_every_table_has_an_oracle_row_next_to_each_brain_row_and_fig3_shows_the_oracle(tiny_run):
    for name in TABLE_NAMES:
        table = pd.read_csv(tiny_run / f"results/tables/{name}.csv")
        ours = table[table["source"].isin(["brain", "oracle"])]
        settings = [c for c in ours.columns[: list(ours.columns).index("source")]]
        brain = ours[ours["source"] == "brain"][settings].to_records(index=False).tolist()
        oracle = ours[ours["source"] == "oracle"][settings].to_records(index=False).tolist()
        assert brain and brain == oracle, name
        assert ours[ours["source"] == "oracle"]["img_ret"].isna().all(), name
        assert ours[ours["source"] == "brain"]["img_ret"].notna().all(), name
        md = (tiny_run / f"results/tables/{name}.md").read_text()
        assert "| oracle |" in md and "not applicable to oracle rows" in md and "oracle = the same generator" in md
    rows = read_json(tiny_run / "results/figures/fig3.provenance.json")["rows"]
    oracle = ["oracle (img+cap, true embeddings)", f"results/reconstructions/{MAIN}/img+cap/finetune_oracle.h5"]
    assert rows[0] == oracle and [label for label, _ in rows[1:]] == CONFIG["ablations"]["variants"]


def test_scene_recovery_table_has_every_stage_with_chance(tiny_run):
    table = pd.read_csv(tiny_run / "results/tables/scene_recovery.csv")
    assert list(table.columns[:4]) == ["subject", "mapper", "variant", "source"]
    assert set(table["source"]) == set(SCENE_STAGES)
    for name in ("background_colour", "largest_shape_colour", "largest_shape_position"):
        assert {name, f"{name}_lo", f"{name}_hi", f"chance_{name}"} <= set(table.columns), name
    for name in ("largest_shape_kind", "largest_shape_quadrant", "shape_count"):
        assert {name, f"chance_{name}"} <= set(table.columns), name
    assert table["data"].str.contains("SYNTHETIC NSD").all()
    clip = table[table["source"] == "clip"]
    assert sorted(zip(clip["subject"], clip["variant"])) == [(s, t) for s in SUBJECTS for t in ("cap", "img")]
    assert (clip["mapper"] == "-").all()
    # brain embeddings: per subject, each mapper's img and cap; reconstructions: the comparison runs
    # and, on subj01, the conditioning variants, each from the oracle and from the brain
    for subject in SUBJECTS:
        embedded = table[(table["source"] == "brain_embedding") & (table["subject"] == subject)]
        assert sorted(zip(embedded["mapper"], embedded["variant"])) == [
            (m, t) for m in ("cnn", "mlp", "ridge") for t in ("cap", "img")
        ]
    for source in ("oracle", "brain"):
        drawn = table[table["source"] == source]
        assert sorted(zip(drawn["subject"], drawn["mapper"], drawn["variant"])) == sorted(
            [(s, m, "img+cap") for s in SUBJECTS for m in ("cnn", "ridge", "mlp")]
            + [("subj01", "cnn", v) for v in ("img", "cap", "avg")]
        )
        assert drawn["background_colour"].between(0, 1).all() and drawn["chance_largest_shape_position"].notna().all()
    assert table[table["source"].isin(["clip", "brain_embedding"])]["largest_shape_position"].isna().all()
    md = (tiny_run / "results/tables/scene_recovery.md").read_text()
    assert "(chance " in md and "brain_embedding = the same probe" in md


def test_tables_and_figures(tiny_run):
    for name in TABLE_NAMES:
        for ext in ("csv", "md", "tex"):
            assert (tiny_run / f"results/tables/{name}.{ext}").stat().st_size > 0
    for name in FIGURES:
        for ext in ("pdf", "png"):
            assert (tiny_run / f"results/figures/{name}.{ext}").stat().st_size > 0
    def brain_rows(name: str) -> pd.DataFrame:
        table = pd.read_csv(tiny_run / f"results/tables/{name}.csv")
        return table[table["source"] == "brain"]

    conditioning = pd.read_csv(tiny_run / "results/tables/conditioning.csv")
    assert list(brain_rows("conditioning")["variant"]) == ["img", "cap", "img+cap", "avg"]
    assert conditioning["data"].str.contains("SYNTHETIC NSD").all()
    assert list(brain_rows("initialisation")["strategy"]) == ["finetune", "scratch"]
    assert list(brain_rows("training_strategy")["strategy"]) == ["finetune", "e2e"]
    assert list(brain_rows("mapper_losses")["loss"]) == ["mse_cos", "mse_cos_contrastive"]
    md = (tiny_run / "results/tables/comparison.md").read_text()
    assert "ours: ridge" in md and "ours: mlp" in md and "[quoted, not measured]" in md and "Not measured (" in md
    dry = run_snakemake(tiny_run, [], CONFIG, "--dry-run")
    assert "Nothing to be done" in dry.stdout + dry.stderr


def rules_whose_params_changed(dry_run: str) -> set[str]:
    """The rules a dry run plans because their params changed (its closing summary of reasons)."""
    found = re.search(r"params have changed since last execution:\n\s+(.+)", dry_run)
    return set(found.group(1).split(", ")) if found else set()


@pytest.mark.parametrize(
    "change, rules",
    [
        ({"mappers": {"cnn": {"hidden": 5}}}, {"train_mapper"}),
        # fine-tuning's length: not pre-training
        ({"generator": {"finetune": {"kimg": 0.008}}}, {"finetune_generator", "finetune_e2e"}),
        # the caption screening: not the images, nor pre-training
        ({"clip": {"screening": {"rule": "topk_mean"}}}, {"embed_captions"}),
        ({"evaluation": {"figure_images": 3}}, {"fig3", "subject_reconstructions"}),
        # where and how fast jobs run: nothing
        (
            {
                "device": "cpu",
                "cluster": {"max_runtime": 60},
                "mappers": {"threads": 2, "runtime": 9},
                "clip": {"gpus": 1, "mem_mb": 999, "runtime": 9},
                "generator": {
                    "pretrain": {"runtime": 99, "mem_mb": 9000},
                    "reconstruct": {"batch": 3, "gpus": 1, "mem_mb": 999, "runtime": 9},
                },
                "evaluation": {"batch_size": 5, "gpus": 1, "mem_mb": 999, "runtime": 9},
            },
            set(),
        ),
    ],
)
def test_a_config_change_reruns_exactly_the_rules_that_read_it(tiny_run, change, rules):
    dry = run_snakemake(tiny_run, [], deep_update(CONFIG, change), "--dry-run")
    assert rules_whose_params_changed(dry.stdout) == rules, dry.stdout[-3000:]
    if not rules:
        assert "Nothing to be done" in dry.stdout + dry.stderr


def test_report(tiny_run):
    report = tiny_run / "report.html"
    run_snakemake(tiny_run, [], CONFIG, "--report", str(report))
    html = report.read_text(errors="replace")
    assert report.stat().st_size > 10_000
    for name in (
        "fig3.png",
        "retrieval.png",
        "training_curves.png",
        "metrics_conditioning.png",
        "comparison.csv",
        "scene_recovery.csv",
        "scene_recovery.png",
    ):
        assert name in html, name


def test_demo_science_clip_and_ridge_far_above_chance_and_a_shuffled_brain_is_not(tiny_run):
    clip = json.loads((tiny_run / "results/clip/demo/metrics.json").read_text())["heldout"]
    assert (clip["image_to_caption_top1"] + clip["caption_to_image_top1"]) / 2 > 4 * clip["chance"], clip
    ridge = json.loads((tiny_run / "results/mappers/subj01/ridge/mse/img/metrics.json").read_text())
    whole = ridge["retrieval"]["all"]
    assert (whole["image_retrieval"] + whole["brain_retrieval"]) / 2 > 5 * whole["chance"], whole

    # The same ridge fitted here: on the true targets it is far above chance too; with the
    # training targets shuffled over the samples (a brain that says nothing) it is not.
    with h5py.File(tiny_run / "results/prepared/subj01.h5") as f:
        train_ids, train_x = f["train/nsd_id"][()], f["train/betas"][()]
        test_ids, test_x = f["test/nsd_id"][()], f["test/betas"][()]
    with h5py.File(tiny_run / "results/clip/images.h5") as f:
        row = {int(i): r for r, i in enumerate(f["nsd_id"][()])}
        targets = f["target"][()]
    y_train = targets[[row[int(i)] for i in train_ids]]
    y_test = targets[[row[int(i)] for i in test_ids]]
    shuffled = y_train[np.random.default_rng(0).permutation(len(y_train))]
    val = torch.from_numpy(validation_mask(train_ids, 0.15, seed=0))
    alphas = CONFIG["mappers"]["ridge"]["alphas"]
    for targets_used, far_above in ((y_train, True), (shuffled, False)):
        fit = fit_ridge(torch.from_numpy(train_x), torch.from_numpy(targets_used), val, alphas)
        pred = (torch.from_numpy(test_x) @ fit.weight.T + fit.bias).numpy()
        hits = embedding_metrics(pred, y_test, test_ids, pool=len(y_test), draws=1, seed=0)["retrieval"]["all"]
        score = (hits["image_retrieval"] + hits["brain_retrieval"]) / 2
        assert (score > 5 * hits["chance"]) if far_above else (score < 2.5 * hits["chance"]), (far_above, hits)


def test_a_figure_target_plans_only_its_ancestors(tmp_path):
    dry = run_snakemake(tmp_path, ["results/figures/fig3.pdf"], CONFIG, "--dry-run")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", dry.stdout, flags=re.MULTILINE))
    variants = CONFIG["ablations"]["variants"]
    assert int(counts["reconstruct"]) == len(variants) and counts["fig3"] == "1"
    # the main variant's reconstruct job also makes the oracle row's reconstructions
    assert f"results/reconstructions/{MAIN}/img+cap/finetune_oracle.h5" in dry.stdout
    for unrelated in ("evaluate_run", "make_tables", "metric_bars", "training_curves", "retrieval_examples"):
        assert unrelated not in counts, unrelated
    # fig3 shows the main mapper's variants on one subject: no ridge, mlp or other-loss mapper.
    assert int(counts["train_mapper"]) == 2 and int(counts["prepare_subject"]) == len(SUBJECTS)


def test_oracle_off_plans_no_oracle_file(tmp_path):
    on = run_snakemake(tmp_path / "on", [], CONFIG, "--dry-run")
    off_config = tiny_config(**{**TINY_RUN, "evaluation": {**TINY_RUN["evaluation"], "oracle": False}})
    off = run_snakemake(tmp_path / "off", [], off_config, "--dry-run")
    assert "finetune_oracle.h5" in on.stdout and "_oracle.h5" not in off.stdout and "_oracle.json" not in off.stdout
    assert "results/tables/scene_recovery.csv" in off.stdout  # the information table keeps its brain stages


# --- Released demo weights (mindreader.demo_weights): exported by the tiny run, checked against it ---

DEMO_WEIGHTS_CHECK = "results/demo_weights/check.json"


def tiny_prepared(tiny_run) -> list:
    return [tiny_run / f"results/prepared/{subject}.h5" for subject in SUBJECTS]


def release_copy(tiny_run, tmp_path):
    copy = tmp_path / "release"
    shutil.copytree(tiny_run / TINY_RELEASE, copy)
    return copy


def test_the_release_holds_the_runs_clip_and_pretraining_and_checks_against_its_world(tiny_run):
    release = tiny_run / TINY_RELEASE
    manifest = read_json(release / MANIFEST)
    assert sorted(manifest["files"]) == sorted(RELEASE_FILES)
    for name, digest in manifest["files"].items():
        assert sha256_of(release / name) == digest
    assert sha256_of(release / "generator/G_ema.safetensors") == sha256_of(
        tiny_run / "results/generator/pretrained/G_ema.safetensors"
    )
    with h5py.File(tiny_run / "results/prepared/subj01.h5", "r") as f:
        assert set(f["test/nsd_id"][()]) <= set(manifest["made_from"]["held_out_nsd_ids"])
    report = verify(release, tiny_run / CONFIG["nsd_root"], tiny_prepared(tiny_run), CONFIG)
    assert report["reference_max_abs_difference"] < 1e-6


def test_the_release_check_refuses_another_world(tiny_run, tmp_path):
    other = deep_update(CONFIG, {"synthetic": {"seed": CONFIG["synthetic"]["seed"] + 1}})
    write_synthetic_nsd(tmp_path / "nsd", SyntheticSpec.from_config(other["synthetic"]), ["subj01"])
    with pytest.raises(DemoWeightsMismatch, match=r"stimuli .* synthetic\.seed \(0 there, 1 here\).*make demo-weights"):
        verify(tiny_run / TINY_RELEASE, tmp_path / "nsd", tiny_prepared(tiny_run), other)


def test_the_release_check_refuses_another_clip_space(tiny_run):
    other = deep_update(CONFIG, {"clip": {"clamp": 0.02}})
    with pytest.raises(DemoWeightsMismatch, match=r"embedding space .* clip\.clamp \(1\.5 there, 0\.02 here\)"):
        verify(tiny_run / TINY_RELEASE, tiny_run / CONFIG["nsd_root"], tiny_prepared(tiny_run), other)


def test_the_release_check_refuses_a_changed_file_and_leaked_test_images(tiny_run, tmp_path):
    release = release_copy(tiny_run, tmp_path)
    weights = release / "generator/G.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(DemoWeightsMismatch, match=r"generator/G\.safetensors has sha256"):
        verify(release, tiny_run / CONFIG["nsd_root"], tiny_prepared(tiny_run), CONFIG)
    # a subject whose test images include one that pre-training saw
    trained_on = np.setdiff1d(NSD(tiny_run / CONFIG["nsd_root"]).subject_images("subj01", 1), read_json(
        tiny_run / TINY_RELEASE / MANIFEST
    )["made_from"]["held_out_nsd_ids"])[:1]
    leaky = tmp_path / "leaky.h5"
    with h5py.File(leaky, "w") as f:
        f["train/nsd_id"] = np.zeros(0, dtype=np.int64)
        f["test/nsd_id"] = trained_on
    with pytest.raises(DemoWeightsMismatch, match=rf"1 of this run's test images \(nsd ids {trained_on[0]}\) were not held out"):
        verify(tiny_run / TINY_RELEASE, tiny_run / CONFIG["nsd_root"], [leaky], CONFIG)


def test_a_run_from_a_release_checks_it_first_and_trains_neither_clip_nor_pretraining(tiny_run, tmp_path):
    from_release = deep_update(CONFIG, {"demo_weights": str(tiny_run / TINY_RELEASE)})
    # without itc fine-tuning loads no CLIP: it waits for the check through the generator it starts from
    dry = run_snakemake(tmp_path / "fresh", [], deep_update(from_release, {"generator": {"itc": 0}}), "--dry-run")
    planned = set(re.findall(r"^rule (\w+):", dry.stdout, flags=re.M))
    assert {"check_demo_weights", "embed_images", "finetune_generator"} <= planned
    assert not planned & {"train_demo_clip", "pretrain_generator", "export_demo_weights"}
    # every CLIP-loading job and every fine-tuning from the release waits for the check
    for rule in ("embed_images", "embed_captions", "finetune_generator", "finetune_e2e"):
        block = re.search(rf"^rule {rule}:\n    input: (.*)$", dry.stdout, flags=re.M)
        assert DEMO_WEIGHTS_CHECK in block.group(1), rule
    # the check itself, in the tiny run's world: a report, nothing retrained
    made = run_snakemake(tiny_run, [DEMO_WEIGHTS_CHECK], from_release)
    assert "check_demo_weights" in made.stdout + made.stderr
    assert read_json(tiny_run / DEMO_WEIGHTS_CHECK)["reference_max_abs_difference"] < 1e-6
    # fine-tuning's keys and the caption screening do not rerun it (nor, after it, every embedding
    # and mapper); how the CLIP targets are made does
    for change, reruns in (
        ({"generator": {"finetune": {"kimg": 0.008}}, "clip": {"screening": {"rule": "topk_mean"}}}, False),
        ({"clip": {"clamp": 1.0}}, True),
    ):
        dry = run_snakemake(tiny_run, [DEMO_WEIGHTS_CHECK], deep_update(from_release, change), "--dry-run")
        assert ("rule check_demo_weights:" in dry.stdout) == reruns, change
    (tiny_run / DEMO_WEIGHTS_CHECK).unlink()
