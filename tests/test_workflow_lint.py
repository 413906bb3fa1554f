"""Workflow hygiene: Snakemake's linter, snakefmt, log/benchmark on the rules, wildcard
constraints, no absolute paths, and dry runs of both configs (the demo, and the paper on an NSD
tree of subjects 1, 2, 5 and 7 planned through the SLURM profile).
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, parse_workflow, run_snakemake, tiny_config
from test_slurm_profile import without_conda

from mindreader.names import get_variant
from mindreader.nsd.paths import (
    CAPTION_SPLITS,
    EXPDESIGN_RELPATH,
    STIM_INFO_RELPATH,
    STIMULI_RELPATH,
    betas_relpath,
    captions_relpath,
    mask_relpath,
)

DEMO_CONFIG = REPO / "config" / "config.yaml"
PROFILE = REPO / "profiles" / "slurm"
NSD_CONFIG = REPO / "config" / "nsd.yaml"
PAPER_SUBJECTS = ["subj01", "subj02", "subj05", "subj07"]
RUN_KEYS = ("subject", "mapper", "loss", "variant", "strategy")
# Subtrees of the demo config that the paper config may leave out: they are switched off there.
DEMO_ONLY = {("synthetic",), ("clip", "demo")}


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("configfile", [DEMO_CONFIG, NSD_CONFIG], ids=["demo", "nsd"])
def test_snakemake_lint_is_clean(configfile, tmp_path):
    # Run in a scratch folder: Snakemake writes its log folder into the working directory.
    options = ("--workflow-profile", "none", "--configfile", str(configfile), "--directory", str(tmp_path))
    result = snakemake("--lint", *options, cwd=tmp_path)
    assert result.returncode == 0, f"snakemake --lint:\n{result.stdout[-8000:]}\n{result.stderr[-8000:]}"


def test_snakefmt_check_is_clean():
    snakefmt = Path(sys.executable).with_name("snakefmt")
    result = subprocess.run([str(snakefmt), "--check", "--diff", "."], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, f"snakefmt --check:\n{result.stdout[-8000:]}\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module", params=[DEMO_CONFIG, NSD_CONFIG], ids=["demo", "nsd"])
def workflow(request):
    return parse_workflow(request.param)


def test_every_rule_logs_and_every_cluster_rule_is_benchmarked(workflow):
    for rule in workflow.rules:
        if rule.norun:
            continue
        assert rule.log, f"rule {rule.name} has no log:"
        if rule.name not in workflow._localrules:
            assert rule.benchmark is not None, f"rule {rule.name} runs as a cluster job but has no benchmark:"


def test_every_wildcard_is_constrained(workflow):
    """Unconstrained wildcards split paths wrongly (cluster.md: `subj01_no`); '/' alone is not enough
    once a value may contain the separator of its neighbours."""
    global_constraints = workflow.wildcard_constraints
    for rule in workflow.rules:
        for name in rule.wildcard_names:
            assert name in global_constraints or name in rule.wildcard_constraints, (
                f"rule {rule.name}: wildcard {{{name}}} has no constraint"
            )


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_no_absolute_paths():
    """The original release hard-coded its authors' paths; every path here is relative to the
    working directory or comes from the config."""
    offenders = []
    for path in [*REPO.glob("config/*.yaml"), *REPO.glob("profiles/*/config.yaml")]:
        offenders += [f"{path.name}: {s}" for s in _strings(yaml.safe_load(path.read_text())) if s.startswith("/")]
    # "/home/me/nsd"-like literals; a lone "/name.h5" is the tail of a path joined in code
    quoted_absolute = re.compile(r"""["'](/[A-Za-z_][^"'/]*/[^"']*)["']""")
    for path in [REPO / "Snakefile", *REPO.glob("rules/*.smk"), *REPO.glob("scripts/*.py")]:
        offenders += [f"{path.name}: {m}" for m in quoted_absolute.findall(path.read_text())]
    assert not offenders, offenders


def _keys(tree: dict, prefix=()) -> set[tuple[str, ...]]:
    keys = set()
    for key, value in tree.items():
        path = (*prefix, key)
        if path in DEMO_ONLY:
            continue
        keys.add(path)
        if isinstance(value, dict):
            keys |= _keys(value, path)
    return keys


def test_paper_config_sets_every_key_the_demo_sets():
    """--configfile config/nsd.yaml is merged over the demo config: a key it leaves out keeps
    the demo's (tiny) value."""
    missing = _keys(yaml.safe_load(DEMO_CONFIG.read_text())) - _keys(yaml.safe_load(NSD_CONFIG.read_text()))
    assert not missing, sorted(".".join(k) for k in missing)


def test_paper_config_is_the_paper():
    paper = yaml.safe_load(NSD_CONFIG.read_text())
    assert paper["subjects"] == PAPER_SUBJECTS
    assert paper["synthetic"]["enabled"] is False and paper["clip"]["train_demo"] is False
    assert paper["prepare"]["sessions"] == 37
    assert paper["clip"]["model"].startswith("ViT-B-32") and paper["clip"]["weights"].startswith("resources/weights/")
    assert paper["generator"]["resolution"] == 256
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    axes = schema["properties"]["ablations"]["properties"]
    for axis in ("strategies", "losses", "mappers"):
        assert set(paper["ablations"][axis]) == set(axes[axis]["items"]["enum"]), f"ablations.{axis}: not every value"
    # The conditioning ablation as the paper compares it; our extra fusions are opt-in.
    paper_variants = [v for v in axes["variants"]["items"]["enum"] if get_variant(v).in_paper]
    assert paper["ablations"]["variants"] == paper_variants == ["img", "cap", "img+cap", "avg"]


def test_demo_config_dry_run(tmp_path):
    result = run_snakemake(tmp_path, [], tiny_config(), "--dry-run", "--workflow-profile", "none")
    assert "rule all:" in result.stdout or "all " in result.stdout


def test_fresh_views_with_fewer_views_than_epochs_fail_when_the_workflow_is_parsed(tmp_path):
    """mappers.train.view_draw fresh with clip.n_aug < epochs stops the run before any job (the
    embedding job would otherwise run for hours first)."""
    config = tiny_config(clip={"n_aug": 3}, mappers={"train": {"view_draw": "fresh", "epochs": 4}})
    result = run_snakemake(tmp_path, [], config, "--dry-run", "--workflow-profile", "none", check=False)
    assert result.returncode != 0
    expected = "needs clip.n_aug >= mappers.train.epochs, got clip.n_aug 3 < mappers.train.epochs 4"
    assert expected in result.stdout + result.stderr


def write_nsd_tree(root: Path, subjects: list[str], sessions: int) -> None:
    """Empty files at every NSD path the workflow reads: a dry run checks names, not contents."""
    relpaths = [EXPDESIGN_RELPATH, STIM_INFO_RELPATH, STIMULI_RELPATH]
    relpaths += [captions_relpath(split) for split in CAPTION_SPLITS]
    for subject in subjects:
        relpaths.append(mask_relpath(subject))
        relpaths += [betas_relpath(subject, session) for session in range(1, sessions + 1)]
    for relpath in relpaths:
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        (root / relpath).touch()


def planned_jobs(dry_run_output: str) -> list[dict]:
    """Each job of a dry run's listing: rule, output list, wildcards and resources (dicts)."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output):
        header = re.match(r"(?:local)?rule (\w+):", block)
        if not header:
            continue
        fields = {}
        for name in ("wildcards", "resources"):
            line = re.search(rf"^\s+{name}: (.*)$", block, re.M)
            fields[name] = dict(item.split("=", 1) for item in line.group(1).split(", ")) if line else {}
        output = re.search(r"^\s+output: (.*)$", block, re.M)
        jobs.append({
            "rule": header.group(1),
            "output": output.group(1).split(", ") if output else [],
            **fields,
        })
    return jobs


# A site's own profile at its smallest: the executor and its job limit, an account and the
# partitions file. The rules must bring every other thing their jobs need.
MINIMAL_SITE_PROFILE = {
    "executor": "slurm",
    "jobs": 100,
    "default-resources": {"slurm_account": "lab"},
    "slurm-partition-config": "partitions.yaml",
}


def paper_dry_run(workdir: Path, profile: dict | None = None) -> subprocess.CompletedProcess:
    """The dry run a user starts on the cluster, in ``workdir``: a SLURM profile (``profile``, or
    profiles/slurm less conda, which cannot run here) with profiles/slurm/partitions.yaml beside it,
    config/nsd.yaml, an NSD tree with subjects 1, 2, 5, 7 (37 sessions) and every weights file
    present. bench/paper_scale.py projects the paper's jobs from it too."""
    config = yaml.safe_load(NSD_CONFIG.read_text())
    write_nsd_tree(workdir / config["nsd_root"], PAPER_SUBJECTS, config["prepare"]["sessions"])
    if profile is None:
        profile = without_conda(yaml.safe_load((PROFILE / "config.yaml").read_text()))
    (workdir / "profile").mkdir()
    (workdir / "profile" / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    (workdir / "profile" / "partitions.yaml").write_text((PROFILE / "partitions.yaml").read_text())
    for path in (s for s in _strings(config) if s.startswith("resources/weights/")):
        (workdir / path).parent.mkdir(parents=True, exist_ok=True)
        (workdir / path).touch()
    return snakemake("--directory", str(workdir), "--profile", str(workdir / "profile"), "--configfile",
                     str(NSD_CONFIG), "--dry-run", cwd=workdir)


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory):
    """The jobs of the paper's dry run (paper_dry_run) through a minimal site profile."""
    result = paper_dry_run(tmp_path_factory.mktemp("paper"), MINIMAL_SITE_PROFILE)
    assert result.returncode == 0, f"dry run of config/nsd.yaml failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return planned_jobs(result.stdout)


def test_paper_dry_run_plans_every_subject_and_fig3(paper_plan):
    subjects = {job["wildcards"].get("subject") for job in paper_plan}
    assert set(PAPER_SUBJECTS) <= subjects
    for rule in ("prepare_subject", "train_mapper", "finetune_generator", "reconstruct"):
        planned = {job["wildcards"]["subject"] for job in paper_plan if job["rule"] == rule}
        assert planned == set(PAPER_SUBJECTS), f"{rule} is planned for {sorted(planned)}"
    assert any("results/figures/fig3.pdf" in job["output"] for job in paper_plan), "fig3 is not planned"


def test_paper_dry_run_evaluates_every_ablation_of_the_paper(paper_plan):
    """Every value of every ablation axis of config/nsd.yaml gets its evaluated run (its table row)
    on the ablation subjects (the mappers on every subject): the runs `make smoke` shares with
    others (cap, scratch, the mapper losses) are still planned in the paper's DAG."""
    ablations = yaml.safe_load(NSD_CONFIG.read_text())["ablations"]
    runs = {tuple(job["wildcards"][k] for k in RUN_KEYS) for job in paper_plan if job["rule"] == "evaluate_run"}
    for axis, key in (("variant", "variants"), ("strategy", "strategies"), ("loss", "losses"), ("mapper", "mappers")):
        subjects = PAPER_SUBJECTS if axis == "mapper" else ablations["subjects"]
        for subject in subjects:
            for value in ablations[key]:
                run = {"subject": subject, **ablations["main"], axis: value}
                if run["mapper"] == "ridge":
                    run["loss"] = "mse"  # what ridge's closed form minimises
                assert tuple(run[k] for k in RUN_KEYS) in runs, f"no evaluation planned for {run}"


# Rules that run neural networks: on the cluster they must get a GPU (ridge mappers excepted).
GENERATOR_TRAINING_RULES = {"pretrain_generator", "finetune_generator", "finetune_e2e"}
GPU_RULES = {
    "embed_images",
    "embed_captions",
    "train_mapper",
    "pretrain_generator",
    "finetune_generator",
    "finetune_e2e",
    "reconstruct",
    "evaluate_run",
    "fid_generated",
    "fid_generated_oracle",
}


class PlannedJob:
    """What the SLURM plugin's partition selection reads of a job, from a dry run's listing."""

    def __init__(self, job: dict, threads: int):
        self.name = job["rule"]
        self.threads = threads
        self.resources = job["resources"]


def test_paper_dry_run_with_a_site_profile_gives_each_job_its_gpu_time_memory_and_partition(paper_plan):
    """Through a site profile that names only the executor, an account and the partitions, each
    cluster job of the paper asks for what the config says it needs: a GPU for every network job
    (not ridge), time and memory for all, all of a generator job's GPUs on one node, and the
    plugin's partition selection sends GPU jobs to the GPU partition and no other job there.
    Catches: a rule's gpu/runtime/mem_mb resource left to a profile, ridge asking for a GPU."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    paper = yaml.safe_load(NSD_CONFIG.read_text())
    partitions = read_partition_file(PROFILE / "partitions.yaml")
    gpu_partitions = {p.name for p in partitions if p.limits.max_gpu > 0}
    workflow = parse_workflow(NSD_CONFIG)
    # (is_local() says every rule is, outside a cluster run)
    local = {rule.name for rule in workflow.rules if rule.name in workflow._localrules or rule.norun}
    cluster_jobs = [job for job in paper_plan if job["rule"] not in local]
    assert {job["rule"] for job in cluster_jobs} >= GPU_RULES, "a network rule is not planned"
    for job in cluster_jobs:
        resources = job["resources"]
        wants_gpu = job["rule"] in GPU_RULES and not (job["rule"] == "train_mapper" and job["wildcards"]["mapper"] == "ridge")
        assert (int(resources.get("gpu", 0)) >= 1) == wants_gpu, job
        assert int(resources["runtime"]) > 0 and int(resources["mem_mb"]) > 0, job
        assert int(resources["runtime"]) <= paper["cluster"]["max_runtime"], job
        threads = workflow.get_rule(job["rule"]).resources["_cores"].value
        partition = get_best_partition(partitions, PlannedJob(job, threads), logging.getLogger("slurm"))
        assert (partition in gpu_partitions) == wants_gpu, (partition, job)
        if job["rule"] in GENERATOR_TRAINING_RULES:
            assert resources.get("nodes") == "1", job
    embed = next(job for job in cluster_jobs if job["rule"] == "embed_images")
    assert int(embed["resources"]["runtime"]) == paper["clip"]["runtime"]
    assert int(embed["resources"]["mem_mb"]) == paper["clip"]["mem_mb"]
    assert workflow.get_rule("embed_images").resources["_cores"].value == paper["clip"]["threads"]
