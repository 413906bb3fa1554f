"""Shared fixtures: the repository root, a tiny synthetic-NSD config, and a Snakemake runner.

Workflow tests run the real Snakefile in a temporary working directory with a tiny config, so
they exercise exactly what a user runs, only smaller.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# A synthetic world small enough that the whole workflow runs in well under a minute per stage.
TINY_OVERRIDES = {
    # the tiny world trains its own demo CLIP and generator (the demo's release is of another world)
    "demo_weights": None,
    "subjects": ["subj01", "subj02"],
    "synthetic": {
        "enabled": True,
        "image_side": 32,
        "n_shared": 12,
        "n_specific": 36,
        "repeats": 3,
        "trials_per_session": 48,
        "volume_shape": [10, 12, 10],
        "roi_voxels": 240,
    },
    "prepare": {"sessions": 3},
}


# A demo CLIP small enough to train in seconds (a few steps: only the plumbing is under test).
TINY_CLIP = {
    "demo": {
        "embed_dim": 16,
        "image_size": 32,
        "vision_width": 8,
        "context_length": 24,
        "text_width": 32,
        "text_layers": 1,
        "text_heads": 2,
        "steps": 4,
        "batch_size": 16,
    },
    "batch_size": 32,
}


# The whole workflow at toy size (rule all: synthetic NSD -> every table, fig3, every figure),
# run once per test session by the ``tiny_run`` fixture and read by the workflow tests. Two
# subjects; on subj01 every ablation axis of the paper (conditioning, initialisation, training
# strategy, mapper loss) and all three mappers on both subjects for the comparison table. The
# demo CLIP trains long enough (seconds) for its retrieval to be far above chance.
TINY_RUN = {
    # 24 test images (chance 1/24) and 800 training images per subject, at TINY's brain size.
    "synthetic": {"n_shared": 24, "n_specific": 400, "trials_per_session": 424},
    "clip": {
        **TINY_CLIP,
        "demo": {
            **TINY_CLIP["demo"],
            "embed_dim": 32,
            "vision_width": 16,
            "text_width": 64,
            "text_layers": 2,
            "steps": 300,
            "batch_size": 64,
        },
    },
    "mappers": {
        "cnn": {"hidden": 4, "blocks": 1, "head_hidden": 8, "pad_multiple": 32},
        "mlp": {"hidden": 32, "blocks": 1, "dropout_in": 0.5, "dropout": 0.15},
        "train": {"epochs": 3},
    },
    "generator": {
        "resolution": 16,
        "z_dim": 8,
        "w_dim": 8,
        "mapping_layers": 1,
        "channel_base": 64,
        "channel_max": 8,
        "branch_width": 8,
        "mbstd_group_size": 2,
        "batch": 8,
        "r1_interval": 2,
        "pl_interval": 2,
        "checkpoint_kimg": 0.0,
        "sample_kimg": 0.0,
        "log_steps": 1,
        "threads": 1,
        # pre-training's own settings, as the paper config's (Lafite's recipe) uses them
        "pretrain": {"kimg": 0.032, "batch": 4, "mirror": True, "contrastive_form": "exp", "train_z": "zero"},
        "finetune": {"kimg": 0.016},
        # the paper config's end-to-end training (the demo runs ours): float64 mappers through the
        # stage, their checkpoint and their written predictions
        "e2e": {"perturb": "raw", "mapper_phase": "separate", "mapper_dtype": "float64"},
    },
    "evaluation": {"bootstrap": 100, "bootstrap_fd": 20, "threads": 1},
    "ablations": {
        "main": {"mapper": "cnn", "loss": "mse_cos_contrastive", "variant": "img+cap", "strategy": "finetune"},
        "subjects": ["subj01"],
        "variants": ["img", "cap", "img+cap", "avg"],
        "strategies": ["finetune", "scratch", "e2e"],
        "losses": ["mse_cos", "mse_cos_contrastive"],
        "mappers": ["cnn", "ridge", "mlp"],
    },
}


# Where the tiny run's release of its demo CLIP and pre-training is exported.
TINY_RELEASE = "results/demo_weights/release"


def deep_update(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, nested dicts key by key (returns a new dict)."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def tiny_config(**overrides) -> dict:
    """The embedded default config shrunk by TINY_OVERRIDES, then ``overrides`` on top."""
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    return deep_update(deep_update(base, TINY_OVERRIDES), overrides)


def run_snakemake(workdir: Path, targets: list[str], config: dict, *extra: str, cores: int = 2, check: bool = True):
    """Run the repository's Snakefile in ``workdir`` with ``config``; return the CompletedProcess."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "test_config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_file),
        "--cores",
        str(cores),
        *extra,
        *targets,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


@cache
def scratch_workdir() -> Path:
    """A working directory for parsing the workflow, removed when the test process ends: Snakemake
    writes its log folder into the working directory, and collecting the tests must write
    nothing into the repository."""
    path = Path(tempfile.mkdtemp(prefix="mindreader-parse-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def parse_workflow(configfile: Path, workdir: Path | None = None):
    """The repository's workflow as Snakemake parses it under ``configfile`` (rules, config), in
    ``workdir`` (by default a scratch folder)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[Path(configfile).resolve()]),
            storage_settings=StorageSettings(),
            snakefile=REPO / "Snakefile",
            workdir=workdir or scratch_workdir(),
        )
        return workflow._workflow


# The two longest modules: the SLURM cluster's chain (mostly waiting on its time limits) and the
# shared tiny run's tests. `make test` (pytest-xdist, each module on one worker, handed out in
# collection order with --no-loadscope-reorder) starts them first, one on each worker, and the
# other modules fill in around them.
LONG_MODULES = ("test_slurm.py", "test_workflow_run.py")


def _module_rank(item) -> int:
    name = item.path.name
    return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)


def pytest_collection_modifyitems(items):
    items.sort(key=_module_rank)  # stable: the rest keep their order


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The working directory of one tiny run of the whole workflow (``TINY_RUN``), made once."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    # and a release of its demo CLIP and pre-trained generator (rule export_demo_weights)
    run_snakemake(workdir, ["all", TINY_RELEASE], tiny_config(**TINY_RUN))
    return workdir


@pytest.fixture
def repo() -> Path:
    return REPO
