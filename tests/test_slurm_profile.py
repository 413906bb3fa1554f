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


def test_profile_runs_slurm_with_conda_and_retries(profile):
    assert profile["executor"] == "slurm"
    assert profile["software-deployment-method"] == "conda"
    assert profile["retries"] >= 1 and profile["latency-wait"] >= 30
    assert profile["conda-not-block-search-path-envvars"] is True
    assert {"slurm_account", "slurm_partition", "runtime", "mem_mb"} <= set(profile["default-resources"])


def test_profile_names_only_rules_of_the_workflow(profile):
    rules = {name for name, *_ in workflow_rules(NSD_CONFIG)}
    named = set(profile["set-resources"]) | set(profile["set-threads"])
    assert named <= rules, f"the profile sizes rules the workflow does not have: {sorted(named - rules)}"


def test_resource_expressions_evaluate_and_never_shrink_on_retry(profile):
    entries = [("default", profile["default-resources"])] + list(profile["set-resources"].items())
    for rule, resources in entries:
        for name in ("runtime", "mem_mb"):
            if name not in resources:
                continue
            values = [eval(str(resources[name]), {"attempt": attempt}) for attempt in (1, 2, 3)]
            assert all(isinstance(v, int) and v > 0 for v in values), (rule, name, values)
            assert values == sorted(values), (rule, name, values)


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


def test_install_profile_is_found_by_name_with_the_cluster_names(tmp_path):
    config_home = tmp_path / "config-home"
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home)}
    subprocess.run(
        ["make", "--no-print-directory", "install-profile", "SLURM_ACCOUNT=lab42", "SLURM_GPU_PARTITION=gpu_a100"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    installed_file = config_home / "snakemake" / "slurm" / "config.yaml"
    installed = yaml.safe_load(installed_file.read_text())
    assert installed["default-resources"]["slurm_account"] == "lab42"
    assert installed["default-resources"]["slurm_partition"] == ""
    assert installed["set-resources"]["train_mapper"]["slurm_partition"] == "gpu_a100"
    # conda cannot run here (test_envs.py checks the env files): plan without it
    installed_file.write_text(yaml.safe_dump(without_conda(installed), sort_keys=False))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(tiny_config(subjects=["subj01"])))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--profile", "slurm"]
        + ["--configfile", "config.yaml", "--dry-run", "results/clip/images.h5"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "slurm_account=lab42" in result.stdout and "slurm_partition=gpu_a100" in result.stdout


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


def test_no_job_asks_for_more_time_than_cluster_max_runtime(profile, tmp_path):
    """A partition refuses a job that asks for more than its time limit: cluster.max_runtime caps
    each job's ask, whether the profile (embed_images, prepare_subject) or the config (pre-training)
    sets it; a smaller ask (the profile's default) stays as it is."""
    max_runtime = 45
    asked = {
        "embed_images": eval(profile["set-resources"]["embed_images"]["runtime"], {"attempt": 1}),
        "prepare_subject": eval(profile["set-resources"]["prepare_subject"]["runtime"], {"attempt": 1}),
        "pretrain_generator": tiny_config()["generator"]["pretrain"]["runtime"],
        "synthesize_nsd": eval(profile["default-resources"]["runtime"], {"attempt": 1}),
    }
    assert min(asked.values()) < max_runtime < min(asked[rule] for rule in asked if rule != "synthesize_nsd"), asked
    profile_dir = tmp_path / "profile"
    profile_dir.mkdir()
    (profile_dir / "config.yaml").write_text(yaml.safe_dump(without_conda(profile), sort_keys=False))
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = tiny_config(subjects=["subj01"], cluster={"max_runtime": max_runtime})
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--profile", str(profile_dir)]
        + ["--configfile", "config.yaml", "--dry-run", "results/generator/pretrained/network.json"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    runtimes = dry_run_runtimes(result.stdout)
    expected = {rule: min(minutes, max_runtime) for rule, minutes in asked.items()}
    assert {rule: runtimes.get(rule) for rule in expected} == expected, runtimes
    assert max(runtimes.values()) <= max_runtime, runtimes


def test_training_rules_retry_once_per_further_max_runtime_of_their_projected_runtime(tmp_path):
    """A training projected at `runtime` minutes needs ceil(runtime / max_runtime) jobs when each
    may run max_runtime: its rule retries one fewer times than that (plus the profile's retries,
    none when the workflow is only parsed)."""
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
