"""Rule preflight (rules/preflight.smk, mindreader/preflight.py): on a tiny synthetic world at the
demo's shapes on the CPU it measures a unit of every stage and projects every planned job against
its asks, failing on an ask below its projection; asked for a GPU where there is none it fails at
once with the CUDA versions; the jobs it prices are the ones the workflow plans, asks included."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import parse_workflow, run_snakemake, tiny_config
from test_clip_workflow import stand_in_weights
from test_workflow_lint import NSD_CONFIG, paper_dry_run, planned_jobs

from mindreader.names import TRAINING_RULES
from mindreader.scale.project import STAGE_OF_RULE

REPORT = "results/preflight/report.json"
KEPT = "results/logs/preflight/report.json"
LOG = "results/logs/preflight/preflight.log"
STAGES = {
    "generator pre-training",
    "generator fine-tuning",
    "generator e2e",
    "mapper cnn",
    "mapper mlp",
    "mapper ridge",
    "reconstruction",
    "embedding images",
    "embedding captions",
    "evaluation",
}
# The job kinds the tiny config plans (tiny_config: conftest), fid_generated* because the
# stand-in FID weights are there.
JOB_KINDS = {
    "embed_images",
    "embed_captions",
    "train_mapper cnn (mse_cos_contrastive)",
    "train_mapper cnn (mse_cos)",
    "train_mapper mlp (mse_cos_contrastive)",
    "train_mapper ridge",
    "pretrain_generator",
    "finetune_generator (1 cond.)",
    "finetune_generator (2 cond.)",
    "finetune_e2e",
    "reconstruct",
    "evaluate_run",
    "fid_generated",
    "fid_generated_oracle",
}


def preflight_config(tmp_path, **overrides) -> dict:
    """The demo's shapes on the tiny world, on the CPU, every weights file a verified stand-in; a
    batch of 4 through each feature network (at 32, seconds each on one thread)."""
    config = tiny_config(device="cpu", evaluation={"batch_size": 4}, **overrides)
    folder = tmp_path / "resources/weights"
    folder.mkdir(parents=True)
    stand_in_weights(config, folder)
    return config


@pytest.mark.workflow
def test_preflight_measures_every_stage_and_projects_every_job(tmp_path):
    run_snakemake(tmp_path, ["preflight"], preflight_config(tmp_path))
    report = json.loads((tmp_path / REPORT).read_text())
    assert report["status"] == "passed" and report["errors"] == [], report["errors"]
    assert report["device"]["device"] == "cpu" and "torch_cuda" in report["device"]
    assert report["weights"] and {w["status"] for w in report["weights"]} == {"verified"}
    assert set(report["stages"]) == STAGES
    for name, stage in report["stages"].items():
        assert stage["seconds"] > 0 and stage["peak_gb"] > 0 and stage["memory"] == "host RSS", name
    for name in ("generator pre-training", "generator fine-tuning", "generator e2e"):
        stage = report["stages"][name]
        assert stage["s_per_kimg"] == pytest.approx(stage["seconds"] * 1000 / 16)
    rows = {row["kind"]: row for row in report["projection"]["rows"]}
    assert set(rows) == JOB_KINDS
    for kind, row in rows.items():
        assert row["hours"] > 0 and row["host_gb"] > 0 and row["flags"] == [], kind
    assert rows["finetune_generator (2 cond.)"]["jobs"] == 8 and rows["pretrain_generator"]["ask"]["minutes"] == 60
    assert report["projection"]["totals"]["total"]["cpu_job_hours"] > 0
    assert (tmp_path / "results/preflight/report.md").read_text().startswith("# Preflight: passed")
    assert (tmp_path / "results/preflight/report.provenance.json").is_file()


@pytest.mark.workflow
def test_preflight_fails_on_a_runtime_ask_below_its_projection(tmp_path):
    # 1 minute for 100,000 epochs of the cnn and mlp mappers (ridge has no epochs: its ask holds)
    config = preflight_config(tmp_path, mappers={"runtime": 1, "train": {"epochs": 100000}})
    result = run_snakemake(tmp_path, ["preflight"], config, check=False)
    assert result.returncode != 0
    assert not (tmp_path / REPORT).exists()  # Snakemake removes a failed job's outputs ...
    report = json.loads((tmp_path / KEPT).read_text())  # ... not its logs
    assert report["status"] == "failed"
    rows = {row["kind"]: row for row in report["projection"]["rows"]}
    flagged = {kind for kind, row in rows.items() if row["flags"]}
    assert flagged == {
        "train_mapper cnn (mse_cos_contrastive)",
        "train_mapper cnn (mse_cos)",
        "train_mapper mlp (mse_cos_contrastive)",
    }
    for kind in flagged:
        assert [flag["ask"] for flag in rows[kind]["flags"]] == ["runtime"]
        assert rows[kind]["hours"] * 60 > rows[kind]["ask"]["minutes"] == 1
        assert any(error.startswith(f"{kind}: runtime ask 1 min <") for error in report["errors"])
    assert len(report["errors"]) == len(flagged)
    assert "FAILED" in (tmp_path / LOG).read_text()


@pytest.mark.workflow
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a usable GPU")
def test_preflight_without_a_gpu_fails_at_once_with_the_cuda_versions(tmp_path):
    config = preflight_config(tmp_path, mappers={"gpus": 1})
    config["device"] = "auto"
    result = run_snakemake(tmp_path, ["preflight"], config, check=False)
    assert result.returncode != 0
    log = (tmp_path / LOG).read_text()
    assert "no usable CUDA device is visible" in log and "the job asked for 1 GPU(s)" in log
    assert f"built for CUDA {torch.version.cuda}" in log and "CUDA_VISIBLE_DEVICES=" in log
    assert "unit " not in log  # at once: before any unit was built
    report = json.loads((tmp_path / KEPT).read_text())
    assert report["status"] == "failed" and "no usable CUDA device" in report["errors"][0]


def test_preflight_prices_the_jobs_the_workflow_plans(tmp_path):
    """The jobs rule preflight prices (rules/common.smk, preflight_jobs) are the paper's dry run's
    heavy jobs, each with the gpu, mem_mb and (capped) runtime the dry run shows, and each training
    split into the jobs its rule's retries allow."""
    result = paper_dry_run(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    priced = set(STAGE_OF_RULE) - {"prepare_subject"}
    planned = {
        (job["rule"], tuple(sorted(job["wildcards"].items()))): {
            key: int(job["resources"].get(key, 0)) for key in ("gpu", "mem_mb", "runtime")
        }
        for job in planned_jobs(result.stdout)
        if job["rule"] in priced
    }
    workflow = parse_workflow(NSD_CONFIG, workdir=tmp_path)
    jobs = workflow._rules["preflight"].params.jobs
    ours = {(job["rule"], tuple(sorted(job["wildcards"].items()))): job["resources"] for job in jobs}
    assert ours == planned
    # pre-training asks for its own GPUs (generator.pretrain.gpus: Lafite's 4), fine-tuning for one
    asks = {rule: res["gpu"] for (rule, _), res in planned.items()}
    assert asks["pretrain_generator"] == 4 and asks["finetune_generator"] == 1
    retries = {rule.name: int(rule._restart_times or 0) for rule in workflow.rules}
    for job in jobs:
        assert job["attempts"] == (retries[job["rule"]] + 1 if job["rule"] in TRAINING_RULES else 1), job
    assert max(job["attempts"] for job in jobs) == 5  # pre-training: 7200 minutes in 1440-minute jobs
    assert workflow._rules["preflight"].resources["gpu"].value == 1


def test_a_stage_that_fails_is_an_error_and_the_others_still_run(tmp_path, monkeypatch):
    """A unit that raises (CUDA out of memory at the config's batch, say) is reported with its
    stage, its jobs are not projected, and the other stages are still measured and projected."""
    from conftest import TINY_RUN

    import mindreader.preflight as preflight
    from mindreader.scale import units as scale

    config = tiny_config(device="cpu", generator=TINY_RUN["generator"])
    asks = {"gpu": 0, "mem_mb": 8000, "runtime": 60}
    ridge = {"subject": "subj01", "mapper": "ridge", "loss": "mse", "target": "img"}
    jobs = [
        {"rule": "pretrain_generator", "wildcards": {}, "threads": 1, "resources": asks, "attempts": 1},
        {"rule": "train_mapper", "wildcards": ridge, "threads": 1, "resources": asks, "attempts": 1},
    ]
    build = scale.generator_phases

    def out_of_memory_in_d_main(*args, **kwargs):
        works, trainer = build(*args, **kwargs)
        works["Dmain"] = lambda: torch.empty(0).new_empty(2**62)  # more than any machine has
        return works, trainer

    monkeypatch.setattr(scale, "generator_phases", out_of_memory_in_d_main)
    outputs = {name: tmp_path / f"{name}.json" for name in ("json", "md", "kept")}
    assert preflight.run(config, jobs, [], 0, outputs) == 1
    report = json.loads(outputs["kept"].read_text())
    # pre-training's units at its own batch (the tiny config's generator.pretrain.batch 4)
    assert [error.split(" failed: ")[0] for error in report["errors"]] == [
        "gen:pretrain:Dmain at batch 4 on cpu",
        "gen:finetune:Dmain at batch 8 on cpu",
    ]
    rows = {row["kind"]: row for row in report["projection"]["rows"]}
    assert rows["pretrain_generator"]["hours"] is None and "gen:pretrain:Dmain" in rows["pretrain_generator"]["how"]
    assert rows["train_mapper ridge"]["hours"] > 0 and report["stages"]["mapper ridge"]["seconds"] > 0
    assert report["stages"]["generator pre-training"]["seconds"] is None


def test_pre_training_on_several_gpus_is_priced_at_its_own_batch_and_shared_by_its_gpus():
    # generator.pretrain batch 64 on 4 GPUs (Lafite's recipe): each process steps at 16, so a step
    # costs what the units give at 16; kimg / 64 steps; StyleGAN2-ADA's V100 s/kimg times our
    # per-image ratio, divided over the 4 GPUs; every torchrun process holds its networks and data.
    # Caught: the global batch taken as the per-process one, or the GPUs not sharing the work.
    import yaml
    from conftest import REPO, deep_update

    from mindreader.scale.project import Units, job_cost
    from mindreader.scale.units import PHASES, SG2ADA_V100_S_PER_KIMG, rule_batches

    paper = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    pretrain = {"kimg": 100, "batch": 64, "gpus": 4, "r1_gamma": 10.0}
    paper = deep_update(paper, {"generator": {"batch": 16, "gpus": 1, "pretrain": pretrain}})
    per_image = {"pretrain": 2.0, "sg2ada": 1.0}  # seconds of each phase per image
    records = [
        {"unit": f"gen:{stage}:{phase}", "batch": b, "wall_s": per_image[stage] * b}
        | {"rss_before_gb": 0.9 + b / 1000, "rss_peak_gb": 1 + b / 100}
        for stage in per_image
        for phase in PHASES
        for b in (2, 4)
    ]
    batches = rule_batches(paper)
    assert batches["gen:pretrain:Gmain"] == 16 and batches["gen:finetune:Gmain"] == 16
    units = Units(records, batches, "wall_s")
    job = {"rule": "pretrain_generator", "wildcards": {}, "resources": {"gpu": 4}}
    cost = job_cost(job, paper, units)
    gen = paper["generator"]
    step = 2.0 * 16 * (2 + 1 / gen["pl_interval"] + 1 / gen["r1_interval"])
    assert cost["seconds"] == pytest.approx(math.ceil(100 * 1000 / 64) * step)
    assert cost["v100_seconds"] == pytest.approx(100 * sum(SG2ADA_V100_S_PER_KIMG) / 2 * 2.0 / 4)
    one_gpu = job_cost(job, deep_update(paper, {"generator": {"pretrain": {"batch": 16, "gpus": 1}}}), units)
    assert cost["host_gb"] == pytest.approx(4 * one_gpu["host_gb"]) and "on 4 GPUs" in cost["source"]
    assert one_gpu["v100_seconds"] == pytest.approx(4 * cost["v100_seconds"])
