"""The workflow on a real one-node SLURM cluster, through the official executor plugin.

The cluster (munge, slurmctld, slurmd) is started on this machine for the module and stopped by
its pid files afterwards. Without the SLURM packages the tests skip, except in CI, where
.ci/run installs them and a skip would hide a broken cluster set-up.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from pathlib import Path

import h5py
import pytest
from conftest import REPO, run_snakemake, tiny_config
from slurm_cluster import LocalSlurm, unavailable_reason

pytestmark = [pytest.mark.slurm, pytest.mark.workflow]

TEST_PROFILE = REPO / "profiles" / "slurm-test"
# One test cluster on this machine at a time (slurm.conf lives at a fixed path).
LOCK_FILE = Path("/tmp/mindreader-slurm-test.lock")


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the SLURM tests (.ci/run installs SLURM), but: {reason}")
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
    """Every job the cluster still knows (finished ones stay for MinJobAge): id, name, state, reason."""
    fields = ["id", "name", "state", "reason", "comment"]
    listing = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%r|%k"], capture_output=True, text=True, check=True
    )
    return [dict(zip(fields, line.split("|"))) for line in listing.stdout.splitlines()]


def run_on_slurm(workdir: Path, targets: list[str], config: dict, *extra: str):
    return run_snakemake(workdir, targets, config, "--profile", str(TEST_PROFILE), *extra)


def test_prepare_stage_runs_as_slurm_jobs(slurm_cluster, tmp_path):
    config = tiny_config(subjects=["subj01"])
    before = {job["id"] for job in slurm_jobs()}
    run_on_slurm(tmp_path, ["results/prepared/subj01.h5"], config)
    with h5py.File(tmp_path / "results" / "prepared" / "subj01.h5") as prepared:
        assert prepared["train/betas"].shape[0] > 0 and prepared["test/betas"].shape[0] > 0
    jobs = [job for job in slurm_jobs() if job["id"] not in before]
    assert {job["state"] for job in jobs} == {"COMPLETED"}, jobs
    rules = {job["comment"].removeprefix("rule_").split("_wildcards_")[0] for job in jobs}
    assert {"synthesize_nsd", "prepare_subject"} <= rules, jobs
