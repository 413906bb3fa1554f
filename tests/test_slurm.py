"""The whole workflow on a real one-node SLURM cluster, through the official executor plugin.

The cluster (munge, slurmctld, slurmd) is started on this machine for the module and stopped by
its pid files afterwards. Without the SLURM packages the test skips, except in CI (CI set),
where .ci/run installs them and a skip would hide a broken cluster set-up.

One run of a tiny synthetic config, end to end, shows what a cluster run must survive: a
training longer than any job may ask for (cluster.max_runtime, a partition's limit). The mapper
job is killed by SLURM at that limit, checkpoints on SIGTERM, and Snakemake resubmits it (the
rule's retries, from the training's projected runtime) until one job finishes: the weights equal
those of the same training run uninterrupted, which trains here meanwhile.
"""

from __future__ import annotations

import fcntl
import math
import multiprocessing
import os
import re
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import h5py
import pytest
import torch
from conftest import REPO, deep_update, run_snakemake, tiny_config
from safetensors.torch import load_file
from slurm_cluster import LocalSlurm, unavailable_reason

from mindreader.mappers.pipeline import run_mapper

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

TEST_PROFILE = REPO / "profiles" / "slurm-test"
# One test cluster on this machine at a time (slurm.conf lives at a fixed path).
LOCK_FILE = Path("/tmp/mindreader-slurm-test.lock")
# SLURM checks time limits every 30 s: a job with a limit of m minutes dies 60 m to 60 m + 30 s
# after it starts. Training is planned to outlast that by this margin, so the kill lands in it
# even when the job runs faster than it was timed.
MARGIN_S = 60
# Epochs timed (after warm-up) to measure one: long enough that two timing processes overlap.
TIMED_EPOCHS = 301
# The mappers' projected runtime in jobs of cluster.max_runtime: their rule's retries (the run
# passes --retries 0, so these are all the jobs it gets). On a busy machine a job trains for less
# than its limit, so the training needs more than the two jobs it would need on an idle one.
PROJECTED_JOBS = 8
SUBJECT = "subj01"
MAPPER_RUN = f"{SUBJECT}/cnn/mse_cos_contrastive"
MAPPER_TARGETS = [f"results/mappers/{MAPPER_RUN}/{target}/metrics.json" for target in ("img", "cap")]
# Trainings side by side while the mappers train: the img and cap jobs, and the uninterrupted run.
CONCURRENT_TRAININGS = 3
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
    """Every job the cluster still knows (finished ones stay for MinJobAge): id, state, time limit
    as squeue writes it ([days-][hours:]minutes:seconds), rule, and the job's wildcards."""
    listing = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%l|%k"], capture_output=True, text=True,
                             check=True)
    jobs = []
    for line in listing.stdout.splitlines():
        job_id, state, limit, comment = line.split("|")
        rule, _, wildcards = comment.removeprefix("rule_").partition("_wildcards_")
        jobs.append({"id": job_id, "state": state, "limit": limit, "rule": rule, "wildcards": wildcards})
    return jobs


def limit_minutes(limit: str) -> float:
    days, _, clock = limit.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = 60 * seconds + int(part)
    return int(days or 0) * 1440 + seconds / 60


def groups(name: str, rules: list[str]) -> list[str]:
    """--groups arguments: several small jobs in one SLURM job, fewer status-polling round trips."""
    return [f"{rule}={name}" for rule in rules]


def seconds_per_epoch(workdir: Path, config: dict, folder: str, start) -> float:
    """Seconds of one mapper epoch in this process, timed on the prepared subject from when every
    process timing alongside is ready (``start``, a barrier)."""
    torch.set_num_threads(config["mappers"]["threads"])

    def train(epochs: int) -> float:
        cfg = deep_update(config["mappers"], {"train": {"epochs": epochs}})
        begin = time.perf_counter()
        run_mapper(workdir / UPSTREAM_TARGETS[0], workdir / UPSTREAM_TARGETS[1], workdir / folder, "cnn",
                   "mse_cos_contrastive", "img", cfg, config["seed"], torch.device("cpu"), None, progress=False)
        return time.perf_counter() - begin

    train(1)  # one-off costs (lazy imports, allocator warm-up)
    start.wait()
    one, many = train(1), train(TIMED_EPOCHS)
    per_epoch = (many - one) / (TIMED_EPOCHS - 1)
    assert per_epoch > 0, f"could not time an epoch: 1 in {one} s, {TIMED_EPOCHS} in {many} s"
    return per_epoch


def epochs_for(seconds: float, workdir: Path, config: dict) -> int:
    """Mapper epochs that take about ``seconds`` while CONCURRENT_TRAININGS run side by side, as
    the mapper jobs and the uninterrupted training do: timed in as many processes at once (one
    alone timed here ran twice as fast as two jobs then did)."""
    n = CONCURRENT_TRAININGS
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager, ProcessPoolExecutor(n, mp_context=spawn) as pool:
        start = manager.Barrier(n)
        folders = [f"timing_{i}" for i in range(n)]
        per_epoch = max(pool.map(seconds_per_epoch, [workdir] * n, [config] * n, folders, [start] * n))
    return math.ceil(seconds / per_epoch)


def job_time_limit(workdir: Path, config: dict) -> int:
    """Minutes of the time limit of every mapper job (cluster.max_runtime): enough that a job is
    training, not still starting, when it is killed. A job parses the workflow twice (the
    plugin's job step, then the job itself) before the script starts; on a loaded machine that
    alone can take a minute."""
    start = time.perf_counter()
    run_snakemake(workdir, [], config, "--dry-run", "--workflow-profile", "none")
    startup_s = 3 * (time.perf_counter() - start)
    return max(1, math.ceil((startup_s + 30) / 60))


def resumed_steps(log: str) -> list[int]:
    return [int(step) for step in re.findall(r"resumed from step (\d+) of \d+", log)]


def ran_to_the_end(log: str) -> bool:
    return re.search(r"ran steps \d+ to (\d+) of \1 in this process", log) is not None


def uninterrupted_mapper(workdir: Path, config: dict) -> Path:
    """The img mapper of the run trained in one go, in this process, with a job's threads (as
    epochs_for timed it: more threads than cores spin idle beside the jobs); its model file."""
    out = workdir / "uninterrupted"
    threads = torch.get_num_threads()
    torch.set_num_threads(config["mappers"]["threads"])
    try:
        run_mapper(workdir / UPSTREAM_TARGETS[0], workdir / UPSTREAM_TARGETS[1], out, "cnn", "mse_cos_contrastive",
                   "img", config["mappers"], config["seed"], torch.device("cpu"), None, subject=SUBJECT, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out / "model.safetensors"


def job_logs(workdir: Path, jobs: list[dict[str, str]]) -> list[str]:
    return [next(workdir.glob(f".snakemake/slurm_logs/rule_train_mapper/*/{job['id']}.log")).read_text()
            for job in jobs]


def tails(logs: list[str], chars: int = 1500) -> str:
    return "\n".join(f"--- job {i + 1} ---\n{log[-chars:]}" for i, log in enumerate(logs))


def test_workflow_end_to_end_on_slurm_with_training_longer_than_the_time_limit(slurm_cluster, tmp_path):
    config = tiny_config(**TINY)
    # options taking several values come first: the targets follow the last option
    run_snakemake(tmp_path, UPSTREAM_TARGETS, config, "--groups", *groups("upstream", UPSTREAM_RULES),
                  "--profile", str(TEST_PROFILE))

    limit = job_time_limit(tmp_path, config)
    epochs = epochs_for(60 * limit + MARGIN_S, tmp_path, config)
    config = deep_update(config, {"mappers": {"runtime": PROJECTED_JOBS * limit, "train": {"epochs": epochs}}})
    # No job may ask for more than `limit` minutes, and the mappers train for longer. --retries 0:
    # the only retries are those the training rule takes from its projected runtime. Meanwhile, in
    # this process (its main thread: training handles SIGTERM), the same training uninterrupted.
    capped = deep_update(config, {"cluster": {"max_runtime": limit}})
    before = {job["id"] for job in slurm_jobs()}
    with ThreadPoolExecutor(1) as pool:
        capped_run = pool.submit(run_snakemake, tmp_path, MAPPER_TARGETS, capped, "--retries", "0",
                                 "--profile", str(TEST_PROFILE))
        uninterrupted = load_file(uninterrupted_mapper(tmp_path, config))
        capped_run.result()
    mapper_jobs = sorted((job for job in slurm_jobs() if job["id"] not in before), key=lambda job: int(job["id"]))

    # The rest under the config's limit (a group job asks for the sum of its members' runtimes).
    before = {job["id"] for job in slurm_jobs()}
    run_snakemake(tmp_path, [], config, "--groups", *groups("downstream", DOWNSTREAM_RULES),
                  "--profile", str(TEST_PROFILE))
    for path in ["results/figures/fig3.pdf", "results/tables/comparison.csv",
                 f"results/metrics/{MAPPER_RUN}/img+cap/finetune.json"]:
        assert (tmp_path / path).stat().st_size > 0, path
    with h5py.File(tmp_path / f"results/reconstructions/{MAPPER_RUN}/img+cap/finetune.h5") as rec:
        assert rec["images"].shape[0] == len(rec["nsd_id"]) > 0
    downstream_jobs = [job for job in slurm_jobs() if job["id"] not in before]
    assert downstream_jobs and all(job["state"] == "COMPLETED" for job in downstream_jobs), downstream_jobs

    assert {job["rule"] for job in mapper_jobs} == {"train_mapper"}, mapper_jobs
    for target in ("img", "cap"):
        jobs = [job for job in mapper_jobs if job["wildcards"].endswith(f"_{target}")]
        assert len(jobs) >= 2, jobs
        assert [job["state"] for job in jobs] == ["TIMEOUT"] * (len(jobs) - 1) + ["COMPLETED"], jobs
        assert all(limit_minutes(job["limit"]) == limit for job in jobs), f"each job asks for {limit} min: {jobs}"
        logs = job_logs(tmp_path, jobs)
        # The first kill lands in the training, which checkpoints on SIGTERM. A later one may land
        # just after a job's training ended, as it exits (no kill message in its log then):
        # Snakemake deletes the outputs it wrote, and its successor resumes from its checkpoint.
        assert "stopped by signal" in logs[0], tails(logs)
        finished = [ran_to_the_end(log) for log in logs]
        assert all("DUE TO TIME LIMIT" in log or done for log, done in zip(logs[:-1], finished)), tails(logs)
        # every job after the first resumes where the one before stopped, each further on (or
        # where one that finished did); the last one runs the remaining steps to the end
        resumed = [resumed_steps(log) for log in logs]
        assert resumed[0] == [] and all(len(steps) == 1 for steps in resumed[1:]), (resumed, tails(logs))
        steps = [0] + [found[0] for found in resumed[1:]]
        progress = [b > a or (done and b == a) for a, b, done in zip(steps, steps[1:], finished)]
        assert all(progress), (f"no progress in some job: {steps}", tails(logs))
        assert re.search(rf"ran steps {steps[-1] + 1} to (\d+) of \1 in this process", logs[-1]), tails(logs[-1:])
    resumed_weights = load_file(tmp_path / f"results/mappers/{MAPPER_RUN}/img/model.safetensors")
    assert resumed_weights.keys() == uninterrupted.keys()
    differing = [name for name in uninterrupted if not torch.equal(resumed_weights[name], uninterrupted[name])]
    assert not differing, f"the training resumed across jobs differs from the uninterrupted one in {differing}"


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
