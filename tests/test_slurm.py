"""The whole workflow on a real one-node SLURM cluster, through the official executor plugin.

The cluster (munge, slurmctld, slurmd) is started on this machine for the module and stopped by
its pid files afterwards. Without the SLURM packages the test skips, except in CI (CI set),
where .ci/run installs them and a skip would hide a broken cluster set-up.

One run of a tiny synthetic config, end to end, shows the two things a cluster run must
survive: each mapper job is killed by SLURM at its 1-minute time limit (the failure), Snakemake
resubmits it (the retry), and the retry resumes from the checkpoint the killed job wrote.
"""

from __future__ import annotations

import fcntl
import math
import os
import re
import subprocess
import time
from pathlib import Path

import h5py
import pytest
import torch
from conftest import REPO, deep_update, run_snakemake, tiny_config
from slurm_cluster import LocalSlurm, unavailable_reason

from mindreader.mappers.pipeline import run_mapper

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

TEST_PROFILE = REPO / "profiles" / "slurm-test"
# One test cluster on this machine at a time (slurm.conf lives at a fixed path).
LOCK_FILE = Path("/tmp/mindreader-slurm-test.lock")
# SLURM checks time limits every 30 s: a job with a limit of m minutes dies 60 m to 60 m + 30 s
# after it starts. Training is planned to outlast that by this margin, so the kill lands in it.
MARGIN_S = 45
SUBJECT = "subj01"
MAPPER_RUN = f"{SUBJECT}/cnn/mse_cos_contrastive"
TINY = {
    "subjects": [SUBJECT],
    "clip": {
        "demo": {"embed_dim": 16, "image_size": 32, "vision_width": 8, "context_length": 24, "text_width": 32,
                 "text_layers": 1, "text_heads": 2, "steps": 4, "batch_size": 16},
        "batch_size": 32,
    },
    "mappers": {"threads": 1, "cnn": {"hidden": 4, "blocks": 1, "head_hidden": 8, "pad_multiple": 32},
                "train": {"epochs": 2, "checkpoint_every": 10}},
    "generator": {
        "resolution": 16, "z_dim": 8, "w_dim": 8, "mapping_layers": 1, "channel_base": 64, "channel_max": 8,
        "branch_width": 8, "mbstd_group_size": 2, "batch": 8, "r1_interval": 2, "pl_interval": 2,
        "checkpoint_kimg": 0.0, "sample_kimg": 0.0, "log_steps": 1, "threads": 1,
        "pretrain": {"kimg": 0.032}, "finetune": {"kimg": 0.016},
    },
    "evaluation": {"bootstrap": 20, "bootstrap_fd": 10},
    # the main run only: one subject, one reconstruction, its two mappers (img and cap)
    "ablations": {"subjects": [SUBJECT], "variants": ["img+cap"], "strategies": ["finetune"],
                  "losses": ["mse_cos_contrastive"], "mappers": ["cnn"]},
}
UPSTREAM_TARGETS = [
    f"results/prepared/{SUBJECT}.h5",
    "results/clip/images.h5",
    "results/clip/captions.h5",
    "results/generator/pretrained/network.json",
]
UPSTREAM_RULES = ["synthesize_nsd", "prepare_subject", "train_demo_clip", "embed_images", "embed_captions",
                  "pretrain_generator"]
DOWNSTREAM_RULES = ["finetune_generator", "reconstruct", "evaluate_run", "make_tables", "fig3",
                    "subject_reconstructions", "training_curves", "retrieval_examples", "metric_bars"]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM test (.ci/run installs SLURM), but: {reason}")
        pytest.skip(reason)
    with LOCK_FILE.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cluster = LocalSlurm(tmp_path_factory.mktemp("slurm-state"))
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


def slurm_jobs() -> list[dict[str, str]]:
    """Every job the cluster still knows (finished ones stay for MinJobAge): id, state, rule."""
    listing = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%k"], capture_output=True, text=True, check=True)
    jobs = []
    for line in listing.stdout.splitlines():
        job_id, state, comment = line.split("|")
        jobs.append({"id": job_id, "state": state, "rule": comment.removeprefix("rule_").split("_wildcards_")[0]})
    return jobs


def groups(name: str, rules: list[str]) -> list[str]:
    """--groups arguments: several small jobs in one SLURM job, fewer status-polling round trips."""
    return [f"{rule}={name}" for rule in rules]


def epochs_for(seconds: float, workdir: Path, config: dict) -> int:
    """Mapper epochs that take about ``seconds`` on this machine, timed on the prepared subject."""
    torch.set_num_threads(config["mappers"]["threads"])
    elapsed = {}
    for epochs in (1, 1, 101):  # the first run pays one-off costs (lazy imports, allocator warm-up)
        cfg = deep_update(config["mappers"], {"train": {"epochs": epochs}})
        start = time.perf_counter()
        run_mapper(workdir / UPSTREAM_TARGETS[0], workdir / UPSTREAM_TARGETS[1], workdir / "timing", "cnn",
                   "mse_cos_contrastive", "img", cfg, config["seed"], torch.device("cpu"), None, progress=False)
        elapsed[epochs] = time.perf_counter() - start
    per_epoch = (elapsed[101] - elapsed[1]) / 100
    assert per_epoch > 0, f"could not time an epoch: {elapsed}"
    return math.ceil(seconds / per_epoch)


def first_time_limit(workdir: Path, config: dict) -> int:
    """Minutes of the first attempt's time limit: enough that the job is training, not still
    starting, when it is killed. A job parses the workflow twice (the plugin's job step, then
    the job itself) before the script starts; on a loaded machine that alone can take a minute."""
    start = time.perf_counter()
    run_snakemake(workdir, [], config, "--dry-run", "--workflow-profile", "none")
    startup_s = 3 * (time.perf_counter() - start)
    return max(1, math.ceil((startup_s + 30) / 60))


def epoch_numbers(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"epoch (\d+)/\d+:", log)]


def test_workflow_end_to_end_on_slurm_with_a_time_limit_kill_and_resume(slurm_cluster, tmp_path):
    config = tiny_config(**TINY)
    # options taking several values come first: the targets follow the last option
    run_snakemake(tmp_path, UPSTREAM_TARGETS, config, "--groups", *groups("upstream", UPSTREAM_RULES),
                  "--profile", str(TEST_PROFILE))

    limit = first_time_limit(tmp_path, config)
    epochs = epochs_for(60 * limit + MARGIN_S, tmp_path, config)
    config = deep_update(config, {"mappers": {"train": {"epochs": epochs}}})
    before = {job["id"] for job in slurm_jobs()}
    run_snakemake(tmp_path, [], config, "--groups", *groups("downstream", DOWNSTREAM_RULES),
                  # the first attempt is cut short; the retry gets enough time to finish
                  "--set-resources", f"train_mapper:runtime={limit} if attempt == 1 else {limit + 15}",
                  "--profile", str(TEST_PROFILE))

    for path in ["results/figures/fig3.pdf", "results/tables/comparison.csv",
                 f"results/metrics/{MAPPER_RUN}/img+cap/finetune.json"]:
        assert (tmp_path / path).stat().st_size > 0, path
    with h5py.File(tmp_path / f"results/reconstructions/{MAPPER_RUN}/img+cap/finetune.h5") as rec:
        assert rec["images"].shape[0] == len(rec["nsd_id"]) > 0

    jobs = [job for job in slurm_jobs() if job["id"] not in before]
    mapper_states = sorted(job["state"] for job in jobs if job["rule"] == "train_mapper")
    assert mapper_states == ["COMPLETED", "COMPLETED", "TIMEOUT", "TIMEOUT"], jobs
    assert all(job["state"] == "COMPLETED" for job in jobs if job["rule"] != "train_mapper"), jobs
    for target in ("img", "cap"):
        slurm_logs = [p.read_text() for p in tmp_path.glob(f".snakemake/slurm_logs/rule_train_mapper/*_{target}/*.log")]
        killed = [text for text in slurm_logs if "DUE TO TIME LIMIT" in text]
        assert len(killed) == 1 and "stopped by signal" in killed[0], "the killed job checkpoints on SIGTERM"
        # the retry's log (the rule's log file, rewritten) begins after the epochs done before the kill
        resumed = epoch_numbers((tmp_path / f"results/logs/mappers/{MAPPER_RUN}/{target}.log").read_text())
        assert resumed and resumed[0] > 1 and resumed[-1] == config["mappers"]["train"]["epochs"], resumed[:3]


def test_subjects_fan_out_as_one_job_array(slurm_cluster, tmp_path):
    """The production profile submits each subject's preparation as a task of one array."""
    config = tiny_config(subjects=["subj01", "subj02"])
    targets = [f"results/prepared/{subject}.h5" for subject in config["subjects"]]
    before = {job["id"] for job in slurm_jobs()}
    run_snakemake(tmp_path, targets, config, "--slurm-array-jobs", "prepare_subject", "--profile", str(TEST_PROFILE))
    assert all((tmp_path / target).stat().st_size > 0 for target in targets)
    tasks = [job for job in slurm_jobs() if job["id"] not in before and job["rule"] == "prepare_subject"]
    array_ids = {job["id"].split("_")[0] for job in tasks if "_" in job["id"]}
    assert len(tasks) == 2 and len(array_ids) == 1, tasks
    assert {job["state"] for job in tasks} == {"COMPLETED"}, tasks
