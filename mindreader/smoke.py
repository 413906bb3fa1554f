"""The smoke run at the paper's shapes (`make smoke`): config/nsd.yaml, every rule it runs, on a
small synthetic NSD written at NSD's sizes, with every pretrained network replaced by a seeded,
randomly initialised weights file of its real architecture, and training cut to a step or two by
config overrides alone (no code path of its own).

``python -m mindreader.smoke write OUT`` writes ``OUT/weights/*.safetensors`` and the overlay
``OUT/config.yaml`` (weights paths, their sha256, the synthetic NSD, the cuts, the ablations). Its
paths are relative to OUT: run Snakemake with ``--directory OUT --configfile config/config.yaml
config/nsd.yaml OUT/config.yaml``. ``python -m mindreader.smoke check OUT`` then fails, naming
each, unless every table, figure and the report are there and no metric is missing or non-finite.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import yaml

from mindreader.io import atomic_path, read_json
from mindreader.names import ABLATION_TABLES, TABLE_NAMES
from mindreader.weights import sha256_of

# What the overlay changes in config/nsd.yaml besides the weights (each key config/README.md).
SMOKE_OVERRIDES: dict[str, Any] = {
    "nsd_root": "resources/synthetic_nsd",
    "subjects": ["subj01"],
    # The paper's jobs ask for GPUs: this machine has none, so the CPU is asked for on purpose
    # (with device auto, a GPU job would fail at once without one).
    "device": "cpu",
    # NSD's sizes where the networks see them: subj01's 81 x 104 x 83 volume, an nsdgeneral of
    # subj01's 15,724 voxels, 425 px stimuli. Few images: 4 shared (the test set: evaluation runs
    # 4 x 4 images per run through ViT-L/14, ~1.3 CPU-s each) and 12 of subj01's own, 3 repeats,
    # in 3 sessions of 16 trials.
    "synthetic": {
        "enabled": True,
        "image_side": 425,
        "n_shared": 4,
        "n_specific": 12,
        "repeats": 3,
        "trials_per_session": 16,
        "volume_shape": [81, 104, 83],
        "roi_voxels": 15724,
        "betas_formats": ["nifti"],
    },
    "prepare": {"sessions": 3},
    # One thread per job: two jobs side by side on a 2-core machine.
    "mappers": {
        "threads": 1,
        "train": {"epochs": 1, "batch_size": 8, "batch_size_plain": 8},
    },
    # Batch 2 (the paper's 16 peaked at 21.8 GB of host memory), the least that gives the
    # contrastive terms a choice; one step of every training job. The lazy regularisers (R1 every
    # 16 steps, path length every 4) run at step 0, so both run in every training job at their
    # paper intervals. One thread: two jobs side by side (~5 GB each at most).
    "generator": {
        "batch": 2,
        "threads": 1,
        # pre-training's own batch and GPUs (the paper's 64 on 4, Lafite's) cut to the smoke's one
        # process; its other settings (R1 10, x-flips, exp, random z) stay the paper's
        "pretrain": {"kimg": 0.002, "batch": 2, "gpus": 1},
        "finetune": {"kimg": 0.002},
        # the sample grid at the end of each training: 2 images, not 8 (16 G_ema images at 256 px
        # were a quarter of a smoke training job)
        "sample_images": 2,
    },
    "evaluation": {"threads": 1},
    # Each code path and network shape at real sizes once: the main setting (two conditions,
    # fine-tuned from the one-condition pre-training), on subj01 the avg variant (one condition
    # made of both predictions), e2e (the mappers inside the graph), and the ridge and MLP mappers:
    # 5 runs. The paper's other ablations differ from these only in config values - cap (one
    # condition, as avg), scratch (the main networks from random weights, as pre-training starts)
    # and a second mapper loss - and would train one more generator each; the paper's dry run
    # plans every one of them (tests/test_workflow_lint.py).
    "ablations": {
        "subjects": ["subj01"],
        "variants": ["img+cap", "avg"],
        "strategies": ["finetune", "e2e"],
        "losses": ["mse_cos_contrastive"],
        "mappers": ["cnn", "ridge", "mlp"],
    },
}
WEIGHTS_DIR = "weights"
OVERLAY = "config.yaml"
REPORT = "report.html"
SEED = 0


@dataclass(frozen=True)
class RandomWeights:
    """One pretrained network of the paper config, as a random weights file of its architecture."""

    name: str  # file stem under weights/
    section: tuple[str, ...]  # where the config names it (its weights and sha256 keys)
    build: Callable[[Mapping[str, Any]], dict]  # paper config -> a random state dict, as the loader reads it
    half: bool = False  # stored as float16 (OpenAI's CLIP files are)


def _clip_state(model_name: str) -> dict:
    import open_clip

    # the same factory call as mindreader.clip.models.create_frozen_clip
    return open_clip.create_model(model_name, load_weights=False).state_dict()


def _calibrated(model, side: int, low: float, high: float) -> dict:
    """The state dict after one forward pass in training mode over random images in [low, high]:
    batch norms then hold those images' statistics. With their initial ones (mean 0, var 1) a
    random deep network's features shrink to ~1e-6 and every distance between them vanishes."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average: this batch's statistics
            module.reset_running_stats()
    with torch.no_grad():
        model.train()(torch.rand(4, 3, side, side) * (high - low) + low)
    return model.state_dict()


def _battery_state(name: str) -> dict:
    from mindreader.evaluation.networks import SPECS

    spec = SPECS[name]
    # ImageNet-normalised inputs span about [-2.1, 2.6]
    state = _calibrated(spec.build(), spec.side, -2.0, 2.5)
    if name == "swav":
        # the release's layout: a DataParallel backbone ("module."), no classifier
        state = {f"module.{k}": v for k, v in state.items() if not k.startswith("fc.")}
    return state


def random_fid_inception_state() -> dict:
    """A random state dict of pytorch-fid's Inception, calibrated on [-1, 1] images at 299 px (as
    pytorch-fid feeds them). Its FID blocks keep torchvision's parameter names and shapes, so a
    torchvision Inception3 with 1008 classes has exactly the state dict its download holds."""
    import torchvision

    model = torchvision.models.inception.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    return _calibrated(model, 299, -1.0, 1.0)


RANDOM_WEIGHTS = (
    RandomWeights("clip", ("clip",), lambda cfg: _clip_state(cfg["clip"]["model"]), half=True),
    RandomWeights(
        "evaluation_clip",
        ("evaluation", "clip"),
        lambda cfg: _clip_state(cfg["evaluation"]["clip"]["model"]),
        half=True,
    ),
    RandomWeights("inception_fid", ("evaluation", "networks", "inception_fid"), lambda cfg: random_fid_inception_state()),
    *(
        RandomWeights(name, ("evaluation", "networks", name), lambda cfg, name=name: _battery_state(name))
        for name in ("alexnet", "inception_v3", "efficientnet_b1", "swav")
    ),
)


def write_random_weights(entry: RandomWeights, paper: Mapping[str, Any], folder: Path) -> tuple[Path, str]:
    """Write ``folder/<name>.safetensors`` (seeded: the same bytes on every call) unless a file
    with those bytes is there already (its time stamp then stays, and Snakemake reruns nothing);
    return (path, sha256)."""
    import torch
    from safetensors.torch import save

    torch.manual_seed(SEED + zlib.crc32(entry.name.encode()))
    state = entry.build(paper)
    dtype = torch.float16 if entry.half else None
    tensors = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous() for k, v in state.items()}
    del state
    data = save(tensors)
    del tensors
    digest = hashlib.sha256(data).hexdigest()
    path = folder / f"{entry.name}.safetensors"
    if not (path.is_file() and path.stat().st_size == len(data) and sha256_of(path) == digest):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
    return path, digest


def _set(tree: dict, keys: tuple[str, ...], values: Mapping[str, Any]) -> None:
    for key in keys:
        tree = tree.setdefault(key, {})
    tree.update(values)


def write(out_dir: str | Path, paper_config: str | Path, entries=RANDOM_WEIGHTS) -> Path:
    """The weights files and the overlay config; returns the overlay's path."""
    out_dir = Path(out_dir)
    paper = yaml.safe_load(Path(paper_config).read_text())
    overlay = copy.deepcopy(SMOKE_OVERRIDES)
    for entry in entries:
        path, digest = write_random_weights(entry, paper, out_dir / WEIGHTS_DIR)
        print(f"{path}: sha256 {digest}")
        # relative to out_dir, the workflow's working directory
        _set(overlay, entry.section, {"weights": f"{WEIGHTS_DIR}/{path.name}", "sha256": digest})
    path = out_dir / OVERLAY
    with atomic_path(path) as tmp:
        tmp.write_text(
            "# Written by `python -m mindreader.smoke write`: the smoke run's overlay on config/nsd.yaml.\n"
            f"# Paths are relative to {out_dir}: run Snakemake with --directory {out_dir}.\n"
            + yaml.safe_dump(overlay, sort_keys=False)
        )
    return path


# --- the check ----------------------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def metrics_problems(summary: Mapping[str, Any], where: str) -> list[str]:
    """What a run's metrics JSON reports missing or non-finite. An oracle run's retrieval is not
    applicable (it scores the mappers' predictions), and so not a problem."""
    from mindreader.evaluation.battery import METRICS

    networks = summary.get("networks", {})
    problems = [f"{where}: network {name} {how}" for name, how in networks.items() if not how.startswith("loaded")]
    for metric in METRICS:
        if summary.get("source") == "oracle" and metric.kind == "retrieval":
            continue
        result = summary["metrics"].get(metric.key, {"missing": "absent from the file"})
        if "missing" in result:
            problems.append(f"{where}: {metric.key} missing: {result['missing']}")
        elif not _finite(result.get("value")):
            problems.append(f"{where}: {metric.key} is {result.get('value')!r}, not a finite number")
    return problems


def table_problems(frame: pd.DataFrame, columns: tuple[str, ...], where: str) -> list[str]:
    """Cells of the measured rows (source brain or oracle; not the quoted ones) that are not
    finite: every metric and its CI bounds, but the oracle's retrieval (not applicable) and the
    generated-sample FID's CI (one value, as StyleGAN2-ADA reports it)."""
    from mindreader.evaluation.battery import METRIC_BY_KEY

    problems = []
    measured = frame[frame["source"].isin(("brain", "oracle"))]
    if measured.empty:
        return [f"{where}: no measured rows"]
    for index, row in measured.iterrows():
        for key in columns:
            if row["source"] == "oracle" and METRIC_BY_KEY[key].kind == "retrieval":
                continue
            cells = [key] if key == "fid_generated" else [key, f"{key}_lo", f"{key}_hi"]
            bad = [c for c in cells if not _finite(row.get(c))]
            if bad:
                problems.append(f"{where} row {index} ({row['source']}): {', '.join(bad)} not measured")
    return problems


def expected_rows(name: str, ablations: Mapping[str, Any]) -> list[str]:
    """The axis values an ablation table has a row for (the ablations section of the config)."""
    from mindreader.evaluation.tables import STRATEGIES_OF

    axis = dict((n, a) for n, a, _ in ABLATION_TABLES)[name]
    values = ablations[{"variant": "variants", "strategy": "strategies", "loss": "losses"}[axis]]
    return [v for v in values if v in STRATEGIES_OF.get(name, values)]


def check(workdir: str | Path) -> list[str]:
    """Every problem of a finished smoke run in ``workdir`` (empty: it passed)."""
    from mindreader.evaluation.run import ORACLE_RETRIEVAL
    from mindreader.evaluation.tables import ABLATION_COLUMNS, COMPARISON_COLUMNS

    workdir = Path(workdir)
    overlay = yaml.safe_load((workdir / OVERLAY).read_text())
    ablations = overlay["ablations"]
    problems = []
    expected = [
        *(f"results/tables/{name}.{ext}" for name in (*TABLE_NAMES, "scene_recovery") for ext in ("csv", "md", "tex")),
        "results/figures/fig3.pdf",
        REPORT,
    ]
    problems += [f"{path}: not written" for path in expected if not (workdir / path).is_file()]
    runs = sorted(
        p
        for p in (workdir / "results" / "metrics").rglob("*.json")
        if not p.name.endswith((".provenance.json", ".fid_generated.json"))
    )
    if not runs:
        problems.append("results/metrics: no run's metrics")
    for path in runs:
        problems += metrics_problems(read_json(path), str(path.relative_to(workdir)))
    for name in TABLE_NAMES:
        csv = workdir / "results" / "tables" / f"{name}.csv"
        if not csv.is_file():
            continue
        frame = pd.read_csv(csv)
        columns = COMPARISON_COLUMNS if name == "comparison" else ABLATION_COLUMNS
        problems += table_problems(frame, columns, str(csv.relative_to(workdir)))
        if name == "comparison":
            wanted = {f"ours: {m}" for m in ablations["mappers"]}
            found = {m.split(" (")[0] for m in frame.loc[frame["source"] == "brain", "method"]}
        else:
            axis = dict((n, a) for n, a, _ in ABLATION_TABLES)[name]
            wanted = set(expected_rows(name, ablations))
            found = {str(v).split(" (")[0] for v in frame.loc[frame["source"] == "brain", axis]}
        if found != wanted:
            problems.append(f"{csv.relative_to(workdir)}: rows {sorted(found)}, expected {sorted(wanted)}")
        markdown = csv.with_suffix(".md")
        if markdown.is_file():
            problems += [
                f"{markdown.relative_to(workdir)}: {line.strip()}"
                for line in markdown.read_text().splitlines()
                if line.startswith("Not measured") and ORACLE_RETRIEVAL not in line
            ]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mindreader.smoke", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    writer = commands.add_parser("write", help="write OUT/weights/*.safetensors and the overlay OUT/config.yaml")
    writer.add_argument("out_dir")
    writer.add_argument("--paper-config", default="config/nsd.yaml", help="the config whose networks to mimic")
    checker = commands.add_parser("check", help="fail unless the smoke run in OUT measured every metric")
    checker.add_argument("out_dir")
    args = parser.parse_args(argv)
    if args.command == "write":
        print(f"wrote {write(args.out_dir, args.paper_config)}")
        return 0
    problems = check(args.out_dir)
    for problem in problems:
        print(f"smoke: {problem}", file=sys.stderr)
    if problems:
        print(f"smoke check FAILED: {len(problems)} problems in {args.out_dir}", file=sys.stderr)
        return 1
    print(f"smoke check passed: every table, figure, the report and every metric in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
