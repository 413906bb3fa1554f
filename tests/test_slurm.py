"""The workflow on a real one-node SLURM cluster, through the official executor plugin.

The cluster (munge, slurmctld, slurmd) is started on this machine for the module and stopped by
its pid files afterwards. Without the SLURM packages the test skips, except in CI (CI set),
where .ci/run installs them and a skip would hide a broken cluster set-up.

The smallest chain that shows what a cluster run must survive, run once for the module: the
synthetic NSD, the subjects' preparations as one job array, the CLIP targets, then a mapper
whose training is longer than any job may ask for (cluster.max_runtime, a partition's limit).
SLURM kills the mapper job at that limit, the training checkpoints on SIGTERM, and Snakemake
resubmits it (the rule's retries, from the training's projected runtime) until one job
finishes: the weights equal those of the same training run uninterrupted, which trains here
meanwhile. Every other rule runs through the same executor (tests/test_workflow_run.py runs
them all locally; tests/test_slurm_profile.py plans them through the SLURM profiles).
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

import pytest
import torch
from conftest import REPO, deep_update, run_snakemake, tiny_config
from safetensors.torch import load_file
from slurm_cluster import LocalSlurm, unavailable_reason

from mindreader.checkpoint import STATE_FILE
from mindreader.mappers.pipeline import run_mapper

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

TEST_PROFILE = REPO / "profiles" / "slurm-test"
# One test cluster on this machine at a time (slurm.conf lives at a fixed path).
LOCK_FILE = Path("/tmp/mindreader-slurm-test.lock")
# SLURM checks time limits every 30 s: a job with a limit of m minutes dies 60 m to 60 m + 30 s
# after it starts. Training is planned to outlast that by this margin, so the kill lands in it
# even when the job starts at once; should the first job's training still end before its kill
# (the machine ran faster than timed), the training is planned again with twice the margin.
MARGIN_S = 30
PLANNINGS = 3
# Epochs timed (after warm-up) to measure one: long enough that the timing processes overlap.
TIMED_EPOCHS = 301
# The mapper's projected runtime in jobs of cluster.max_runtime: its rule's retries (the run
# passes --retries 0, so these are all the jobs it gets). On a busy machine a job trains for less
# than its limit, so the training may need more than the two jobs it needs on an idle one.
PROJECTED_JOBS = 8
SUBJECTS = ["subj01", "subj02"]
MAPPER_RUN = "subj01/cnn/mse_cos_contrastive"
MAPPER_TARGET = f"results/mappers/{MAPPER_RUN}/img/metrics.json"
# Trainings side by side while the mapper trains: its job and the uninterrupted run.
CONCURRENT_TRAININGS = 2
TINY = {
    "subjects": SUBJECTS,
    "clip": {
        "demo": {"embed_dim": 16, "image_size": 32, "vision_width": 8, "context_length": 24, "text_width": 32,
                 "text_layers": 1, "text_heads": 2, "steps": 4, "batch_size": 16},
        "batch_size": 32,
    },
    "mappers": {"threads": 1, "cnn": {"hidden": 4, "blocks": 1, "head_hidden": 8, "pad_multiple": 32},
                "train": {"epochs": 2, "checkpoint_every": 10}},
}
PREPARED = [f"results/prepared/{subject}.h5" for subject in SUBJECTS]
CLIP_IMAGES = "results/clip/images.h5"
# The CLIP targets in one SLURM job (fewer status-polling round trips); the preparations as an array.
CLIP_GROUP = ["train_demo_clip=clip", "embed_images=clip"]


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


@pytest.fixture(scope="module")
def upstream(slurm_cluster, tmp_path_factory):
    """The working directory with the prepared subjects and the CLIP image targets, made through
    the cluster, and the SLURM jobs that made them."""
    workdir = tmp_path_factory.mktemp("slurm-run")
    before = {job["id"] for job in slurm_jobs()}
    # options taking several values come first: the targets follow the last option
    run_snakemake(workdir, [*PREPARED, CLIP_IMAGES], tiny_config(**TINY), "--groups", *CLIP_GROUP,
                  "--slurm-array-jobs", "prepare_subject", "--profile", str(TEST_PROFILE))
    return workdir, [job for job in slurm_jobs() if job["id"] not in before]


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


def seconds_per_epoch(workdir: Path, config: dict, folder: str, start) -> float:
    """Seconds of one mapper epoch in this process, timed on the prepared subject from when every
    process timing alongside is ready (``start``, a barrier)."""
    torch.set_num_threads(config["mappers"]["threads"])

    def train(epochs: int) -> float:
        cfg = deep_update(config["mappers"], {"train": {"epochs": epochs}})
        begin = time.perf_counter()
        run_mapper(workdir / PREPARED[0], workdir / CLIP_IMAGES, workdir / folder, "cnn", "mse_cos_contrastive",
                   "img", cfg, config["seed"], torch.device("cpu"), None, progress=False)
        return time.perf_counter() - begin

    train(1)  # one-off costs (lazy imports, allocator warm-up)
    start.wait()
    one, many = train(1), train(TIMED_EPOCHS)
    per_epoch = (many - one) / (TIMED_EPOCHS - 1)
    assert per_epoch > 0, f"could not time an epoch: 1 in {one} s, {TIMED_EPOCHS} in {many} s"
    return per_epoch


def epochs_for(seconds: float, workdir: Path, config: dict) -> int:
    """Mapper epochs that take about ``seconds`` while CONCURRENT_TRAININGS run side by side, as
    the mapper job and the uninterrupted training do: timed in as many processes at once (one
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
        run_mapper(workdir / PREPARED[0], workdir / CLIP_IMAGES, out, "cnn", "mse_cos_contrastive", "img",
                   config["mappers"], config["seed"], torch.device("cpu"), None, subject="subj01", progress=False)
    finally:
        torch.set_num_threads(threads)
    return out / "model.safetensors"


def job_logs(workdir: Path, jobs: list[dict[str, str]]) -> list[str]:
    return [next(workdir.glob(f".snakemake/slurm_logs/rule_train_mapper/*/{job['id']}.log")).read_text()
            for job in jobs]


def tails(logs: list[str], chars: int = 1500) -> str:
    return "\n".join(f"--- job {i + 1} ---\n{log[-chars:]}" for i, log in enumerate(logs))


def test_subjects_fan_out_as_one_job_array(upstream):
    """The production profile submits each subject's preparation as a task of one array."""
    workdir, jobs = upstream
    assert all((workdir / target).stat().st_size > 0 for target in [*PREPARED, CLIP_IMAGES])
    tasks = [job for job in jobs if job["rule"] == "prepare_subject"]
    array_ids = {job["id"].split("_")[0] for job in tasks if "_" in job["id"]}
    assert len(tasks) == len(SUBJECTS) and len(array_ids) == 1, tasks
    assert {job["state"] for job in jobs} == {"COMPLETED"}, jobs


def capped_training(workdir: Path, config: dict, limit: int, margin_s: float):
    """The mapper trained through the cluster for about ``limit`` minutes plus ``margin_s`` under
    jobs capped at ``limit`` minutes, and the same training uninterrupted in this process
    meanwhile: the config, the mapper's SLURM jobs in submission order, the uninterrupted weights."""
    epochs = epochs_for(60 * limit + margin_s, workdir, config)
    config = deep_update(config, {"mappers": {"runtime": PROJECTED_JOBS * limit, "train": {"epochs": epochs}}})
    # No job may ask for more than `limit` minutes, and the mapper trains for longer. --retries 0:
    # the only retries are those the training rule takes from its projected runtime. Meanwhile, in
    # this process (its main thread: training handles SIGTERM), the same training uninterrupted.
    capped = deep_update(config, {"cluster": {"max_runtime": limit}})
    before = {job["id"] for job in slurm_jobs()}
    with ThreadPoolExecutor(1) as pool:
        capped_run = pool.submit(run_snakemake, workdir, [MAPPER_TARGET], capped, "--retries", "0",
                                 "--profile", str(TEST_PROFILE))
        uninterrupted = load_file(uninterrupted_mapper(workdir, config))
        capped_run.result()
    jobs = sorted((job for job in slurm_jobs() if job["id"] not in before), key=lambda job: int(job["id"]))
    return config, jobs, uninterrupted


def test_training_longer_than_the_time_limit_resumes_across_jobs_to_the_same_weights(upstream):
    workdir, _ = upstream
    config = tiny_config(**TINY)
    limit = job_time_limit(workdir, config)
    margin_s = MARGIN_S
    for _ in range(PLANNINGS):
        config, jobs, uninterrupted = capped_training(workdir, config, limit, margin_s)
        if "stopped by signal" in job_logs(workdir, jobs[:1])[0]:
            break
        margin_s *= 2
    assert {job["rule"] for job in jobs} == {"train_mapper"}, jobs
    assert len(jobs) >= 2, jobs
    assert [job["state"] for job in jobs] == ["TIMEOUT"] * (len(jobs) - 1) + ["COMPLETED"], jobs
    assert all(limit_minutes(job["limit"]) == limit for job in jobs), f"each job asks for {limit} min: {jobs}"
    logs = job_logs(workdir, jobs)
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
    resumed_weights = load_file(workdir / f"results/mappers/{MAPPER_RUN}/img/model.safetensors")
    assert resumed_weights.keys() == uninterrupted.keys()
    differing = [name for name in uninterrupted if not torch.equal(resumed_weights[name], uninterrupted[name])]
    assert not differing, f"the training resumed across jobs differs from the uninterrupted one in {differing}"


# Runs in every Python process started with its folder on PYTHONPATH; acts only in a mapper's
# training script (Snakemake runs it as .snakemake/scripts/tmp*.train_mapper.py), once:
# when the training has written its first checkpoint, the process dies as on a crash (no
# handler runs), leaving the job id that crashed in the marker file.
CRASH_ONCE = """
import os, sys, threading, time
from pathlib import Path

marker = Path(os.environ["MINDREADER_TEST_CRASH_MARKER"])
state = Path(os.environ["MINDREADER_TEST_CRASH_STATE"])
if sys.argv and sys.argv[0].endswith("train_mapper.py") and not marker.exists():
    def crash_after_the_first_checkpoint():
        while not state.exists():
            time.sleep(0.1)
        marker.write_text(os.environ.get("SLURM_JOB_ID", "no job"))
        os._exit(3)

    threading.Thread(target=crash_after_the_first_checkpoint, daemon=True).start()
"""


def test_a_crashed_training_is_retried_as_a_new_slurm_job_that_resumes(upstream, tmp_path, monkeypatch):
    """A training job that crashes (not a time-limit kill) is not rerun inside its allocation: its
    SLURM job fails, and the retry (the profile's --retries 1) is a second SLURM job that resumes
    from the checkpoint the first wrote. Catches: the rule's own retries kept inside the job
    (Snakemake then reruns the script in the same allocation: one job, which ran it twice), and
    the run's --retries not added to a training rule's (then nothing retries the crash)."""
    workdir, _ = upstream
    # another mapper of the image targets the chain has made (the time-limit test's is done)
    crashing = "subj01/cnn/mse_cos/img"
    checkpoint_state = workdir / "results/checkpoints/mappers" / crashing / STATE_FILE
    marker = tmp_path / "crashed"
    (tmp_path / "sitecustomize.py").write_text(CRASH_ONCE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MINDREADER_TEST_CRASH_MARKER", str(marker))
    monkeypatch.setenv("MINDREADER_TEST_CRASH_STATE", str(checkpoint_state))
    # Several checkpoints' worth of steps, done well within one job's time; projected as three
    # chunks of the time limit, so that its rule has retries of its own (chunks - 1) besides the
    # run's --retries 1: those are what a job must not spend inside its allocation.
    config = deep_update(tiny_config(**TINY), {"cluster": {"max_runtime": 10},
                                               "mappers": {"runtime": 30, "train": {"epochs": 40}}})
    before = {job["id"] for job in slurm_jobs()}
    run_snakemake(workdir, [f"results/mappers/{crashing}/metrics.json"], config, "--retries", "1",
                  "--profile", str(TEST_PROFILE))
    jobs = sorted((job for job in slurm_jobs() if job["id"] not in before and job["rule"] == "train_mapper"),
                  key=lambda job: int(job["id"]))
    logs = job_logs(workdir, jobs)
    assert [job["state"] for job in jobs] == ["FAILED", "COMPLETED"], (jobs, tails(logs))
    assert marker.read_text() == jobs[0]["id"], "the crash was not in the first job"
    assert "resuming from checkpoint" not in logs[0] and "Trying to restart" not in logs[0], tails(logs)
    assert logs[0].count("training samples") == 1, "the first job ran the training more than once"
    resumed = resumed_steps(logs[1])
    assert len(resumed) == 1 and resumed[0] > 0, tails(logs)
    assert (workdir / f"results/mappers/{crashing}/model.safetensors").is_file()
