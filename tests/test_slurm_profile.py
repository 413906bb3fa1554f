"""The production SLURM profile without a cluster: what it names exists, its resource
expressions evaluate, the workflow profile cannot override it, and `make install-profile` makes
`snakemake --profile slurm` work as typed.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import REPO, parse_workflow, tiny_config
from test_envs import workflow_rules

PROFILE = REPO / "profiles" / "slurm"
NSD_CONFIG = REPO / "config" / "nsd.yaml"
# Settings that decide how a cluster run behaves. profiles/default (the workflow profile) is
# applied on top of any --profile and wins, so it must leave these to the cluster profile:
# e.g. its `cores: 2` would cap every cluster job at 2 threads and the whole run at 2 cores.
CLUSTER_SETTINGS = {
    "cores",
    "jobs",
    "executor",
    "retries",
    "latency-wait",
    "keep-going",
    "default-resources",
    "set-resources",
    "set-threads",
    "software-deployment-method",
}


def without_conda(profile: dict) -> dict:
    """The profile as a machine without conda can run it (a dry run creates no env, but still
    calls conda)."""
    return {key: value for key, value in profile.items() if key != "software-deployment-method"}


@pytest.fixture(scope="module")
def profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def test_profile_runs_slurm_with_conda_retries_requeue_and_partitions(profile):
    assert profile["executor"] == "slurm"
    assert profile["software-deployment-method"] == "conda"
    assert profile["retries"] >= 1 and profile["latency-wait"] >= 30
    assert profile["conda-not-block-search-path-envvars"] is True
    assert profile["slurm-requeue"] is True
    # resolved by Snakemake relative to the profile folder (a file there of that name)
    assert (PROFILE / profile["slurm-partition-config"]).is_file()


def test_profile_holds_site_facts_only(profile):
    """Per-rule needs live in the rules (from the config), so that a site's own profile runs the
    workflow as this one does: the profile sizes no rule and sets no time or memory."""
    assert not {"set-resources", "set-threads"} & set(profile), "the profile sizes rules"
    assert set(profile["default-resources"]) <= {"slurm_account", "qos", "constraint"}, profile["default-resources"]


def test_partitions_file_sends_gpu_jobs_to_the_gpu_partition_only():
    from snakemake_executor_plugin_slurm.partitions import read_partition_file

    partitions = {p.name: p.limits for p in read_partition_file(PROFILE / "partitions.yaml")}
    assert [name for name, limits in partitions.items() if limits.max_gpu == 0] == ["cpu"]
    assert [name for name, limits in partitions.items() if limits.max_gpu > 0] == ["gpu"]


def ask(rule, name: str, attempt: int, **wildcards) -> int:
    """A rule's resource `name` on `attempt`, as Snakemake evaluates it for a job."""
    return rule.resources[name].evaluate(SimpleNamespace(**wildcards), attempt=attempt).value


def test_time_grows_with_the_attempt_and_memory_too_except_for_training():
    """As the README says: a retry asks for the first attempt's time x the attempt (at most
    cluster.max_runtime); memory x the attempt too, except for training jobs, whose retries are
    mostly the further time chunks of one training (their memory stays what the config says).
    Catches: a rule whose time or memory shrinks on a retry, or training memory that multiplies."""
    workflow = parse_workflow(NSD_CONFIG)
    paper, max_runtime = workflow.config, workflow.config["cluster"]["max_runtime"]
    cluster_rules = [
        rule for rule in workflow.rules if rule.name not in workflow._localrules and not rule.norun
    ]
    assert len(cluster_rules) >= 10
    for rule in cluster_rules:
        wildcards = {"mapper": "cnn"}
        runtime = [ask(rule, "runtime", attempt, **wildcards) for attempt in (1, 2, 3)]
        mem = [ask(rule, "mem_mb", attempt, **wildcards) for attempt in (1, 2, 3)]
        assert runtime == [min(runtime[0] * a, max_runtime) for a in (1, 2, 3)], (rule.name, runtime)
        if rule.name in TRAINING_RULES:
            assert mem == [mem[0]] * 3, (rule.name, mem)
        else:
            assert mem == [mem[0] * a for a in (1, 2, 3)], (rule.name, mem)
    embed = workflow.get_rule("embed_images")
    assert ask(embed, "runtime", 1) == paper["clip"]["runtime"] and ask(embed, "mem_mb", 2) == 2 * paper["clip"]["mem_mb"]


def test_workflow_profile_leaves_cluster_settings_to_the_cluster_profile():
    default = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text()) or {}
    overriding = sorted(CLUSTER_SETTINGS & set(default))
    assert not overriding, f"profiles/default overrides the cluster profile's {overriding}"


def test_the_snakefile_puts_the_package_on_pythonpath_for_conda_envs():
    """Conda envs do not contain this repository's package; with conda-not-block-search-path-
    envvars the scripts find it through the PYTHONPATH the Snakefile exports."""
    before = os.environ.get("PYTHONPATH")
    try:
        workflow_rules.__wrapped__(NSD_CONFIG)
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
    assert str(REPO) in paths, f"PYTHONPATH after loading the Snakefile: {paths}"


def install_profile(config_home: Path, *names: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home)}
    return subprocess.run(
        ["make", "--no-print-directory", "install-profile", *names], cwd=REPO, env=env, capture_output=True, text=True
    )


def test_install_profile_is_found_by_name_with_the_cluster_names(tmp_path):
    config_home = tmp_path / "config-home"
    result = install_profile(config_home, "SLURM_ACCOUNT=lab42", "SLURM_PARTITION=cpu_long", "SLURM_GPU_PARTITION=gpu_a100")
    assert result.returncode == 0, result.stderr
    installed_dir = config_home / "snakemake" / "slurm"
    installed = yaml.safe_load((installed_dir / "config.yaml").read_text())
    assert installed["default-resources"]["slurm_account"] == "lab42"
    partitions = yaml.safe_load((installed_dir / "partitions.yaml").read_text())["partitions"]
    assert partitions["cpu_long"]["max_gpu"] == 0 and partitions["gpu_a100"]["max_gpu"] > 0
    # conda cannot run here (test_envs.py checks the env files): plan without it
    (installed_dir / "config.yaml").write_text(yaml.safe_dump(without_conda(installed), sort_keys=False))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config(subjects=["subj01"])))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--profile", "slurm"]
        + ["--configfile", "config.yaml", "--dry-run", "results/clip/images.h5"],
        cwd=workdir,
        env={**os.environ, "XDG_CONFIG_HOME": str(config_home)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "slurm_account=lab42" in result.stdout


def test_install_profile_never_overwrites_a_profile(tmp_path):
    """A user's own `slurm` profile stays as it is: install-profile refuses, says what to add to
    it, and writes nothing. Catches: the existence check removed (the site profile overwritten)."""
    site = tmp_path / "config-home" / "snakemake" / "slurm"
    site.mkdir(parents=True)
    (site / "config.yaml").write_text("executor: slurm\njobs: 10\n")
    result = install_profile(tmp_path / "config-home", "SLURM_ACCOUNT=lab42")
    assert result.returncode != 0
    assert "already holds a profile" in result.stderr and "slurm-partition-config" in result.stderr
    assert (site / "config.yaml").read_text() == "executor: slurm\njobs: 10\n"
    assert sorted(p.name for p in site.iterdir()) == ["config.yaml"]


# Training rules: their retries follow their projected runtime (rules/common.smk: training_retries).
TRAINING_RULES = {
    "train_mapper": ("mappers", "runtime"),
    "pretrain_generator": ("generator", "pretrain", "runtime"),
    "finetune_generator": ("generator", "finetune", "runtime"),
    "finetune_e2e": ("generator", "finetune", "runtime"),
}


def dry_run_runtimes(stdout: str) -> dict[str, int]:
    """The runtime (minutes) of each job a dry run lists, by rule."""
    runtimes, rule = {}, None
    for line in stdout.splitlines():
        if match := re.match(r"(?:local)?rule (\w+):", line):
            rule = match.group(1)
        elif rule is not None and (match := re.search(r"\bresources: .*\bruntime=(\d+)", line)):
            runtimes[rule] = int(match.group(1))
    return runtimes


def dry_run_asks(profile: dict, workdir: Path, config: dict) -> dict[str, int]:
    profile_dir = workdir / "profile"
    profile_dir.mkdir(parents=True)
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(without_conda(profile), sort_keys=False))
    (profile_dir / "partitions.yaml").write_text((PROFILE / "partitions.yaml").read_text())
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--profile", str(profile_dir)]
        + ["--configfile", "config.yaml", "--dry-run", "results/generator/pretrained/network.json"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return dry_run_runtimes(result.stdout)


def test_no_job_asks_for_more_time_than_cluster_max_runtime(profile, tmp_path):
    """A partition refuses a job that asks for more than its time limit: cluster.max_runtime caps
    each job's ask, whatever its rule asks for (prepare_subject, pre-training); a smaller ask
    (synthesize_nsd's, the embeddings') stays as it is."""
    max_runtime = 45
    asked = dry_run_asks(profile, tmp_path / "uncapped", tiny_config(subjects=["subj01"]))
    assert min(asked.values()) < max_runtime < max(asked.values()), asked
    config = tiny_config(subjects=["subj01"], cluster={"max_runtime": max_runtime})
    runtimes = dry_run_asks(profile, tmp_path / "capped", config)
    assert runtimes == {rule: min(minutes, max_runtime) for rule, minutes in asked.items()}, (asked, runtimes)


def test_training_rules_retry_once_per_further_max_runtime_of_their_projected_runtime(tmp_path):
    """A training projected at `runtime` minutes needs ceil(runtime / max_runtime) jobs when each
    may run max_runtime: its rule retries one fewer times than that (the run's own retries are
    added when it starts: add_failure_retries, tested on the SLURM cluster)."""
    max_runtime = 25
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(tiny_config(cluster={"max_runtime": max_runtime})))
    workflow = parse_workflow(configfile)
    retries = {}
    for rule in workflow.rules:
        if rule.name in TRAINING_RULES:
            # the rule's own retries: directive (restart_times also needs the settings of a run)
            retries[rule.name] = rule._restart_times
    expected = {}
    for rule, keys in TRAINING_RULES.items():
        runtime = workflow.config
        for key in keys:
            runtime = runtime[key]
        expected[rule] = math.ceil(runtime / max_runtime) - 1
    assert retries == expected
    assert max(expected.values()) >= 2 and min(expected.values()) >= 1, "the demo's runtimes show nothing here"
