"""Score any method's reconstructions of the NSD shared test images with our battery.

    python -m mindreader.score --subject subj01 --images recons.pt --format mindeye2 \\
        --name mindeye2 --out results/external/mindeye2

The networks, resizes and bootstrap are the config's ``evaluation.*`` (as the workflow's
evaluate_run uses them); the ground truth always comes from the NSD root's stimulus brick by
nsdId. The input is read and checked (mindreader.evaluation.external) before any network runs;
on any failure nothing is written. Writes ``OUT/metrics.json`` (the form of a run's metrics JSON,
plus the source, its sha256 and the resize policy) and ``OUT/per_image.csv`` keyed by nsd_id.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from mindreader.evaluation.battery import FID_PROTOCOLS, METRICS, not_requested
from mindreader.evaluation.bootstrap import mean_ci
from mindreader.evaluation.external import (
    BRAIN_DIFFUSER_SESSIONS,
    EXTERNAL_RETRIEVAL,
    FIELD_SIDE,
    FORMATS,
    read_external,
)
from mindreader.evaluation.networks import SPECS
from mindreader.evaluation.run import (
    battery_config,
    evaluate_reconstructions,
    load_sources,
    retrieval_not_applicable,
    write_run,
)
from mindreader.nsd import NSD
from mindreader.provenance import write_provenance
from mindreader.runtime import select_device, setup_logging

log = logging.getLogger("mindreader.score")

SCHEMA = Path(__file__).resolve().parents[1] / "config" / "schema.yaml"
EXTERNAL_FID_GENERATED = (
    "not applicable to external reconstructions: the generated-sample FID draws new samples from the run's generator"
)


def load_config(path: str | Path) -> dict:
    """A config file merged on the schema's defaults and validated, as the workflow does."""
    from snakemake.utils import validate

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a YAML config ({' '.join(str(err).split()[:12])} ...)") from None
    try:
        validate(config, schema=str(SCHEMA))
    except Exception as err:  # snakemake's WorkflowError carries jsonschema's message
        reason = " ".join(str(err).strip().splitlines()[:2])
        raise ValueError(f"{path}: not a valid config ({reason})") from None
    return config


def resize_policy(image_side: int, via: Sequence[int] = ()) -> dict:
    """How each image reaches each metric (mindreader.evaluation.battery): once, straight from its
    own size (PixCorr and SSIM: through the sides ``via`` first, if any)."""
    steps = " then ".join(f"{side} px" for side in (*via, image_side))
    return {
        "pixels": f"PixCorr and SSIM: both images resized {'once ' if not via else ''}to {steps} (bilinear, antialiased)",
        "networks": {
            **{name: f"resized once to {spec.side} px (bilinear, antialiased)" for name, spec in SPECS.items()},
            "inception_fid": "pytorch-fid's own resize to 299 px",
            "clip": "the CLIP's own preprocessing",
        },
        "ground_truth": "the NSD root's stimulus brick (imgBrick) at its own size, by nsd id",
    }


def score(
    images: str | Path,
    fmt: str,
    config: Mapping[str, Any],
    subject: str,
    out: str | Path,
    name: str | None = None,
    nsd_root: str | Path | None = None,
    ids: str | Path | None = None,
    sessions: int | None = None,
    selection: str | None = None,
    device: str | None = None,
    gpus: int | None = None,  # GPUs the job asked for (default: the config's evaluation.gpus)
) -> Path:
    """Score reconstructions; write OUT/metrics.json and OUT/per_image.csv; return OUT."""
    nsd = NSD(nsd_root or config["nsd_root"])
    external = read_external(images, fmt, nsd, subject, ids, sessions)  # every check, before any network
    ground_truth = nsd.read_images(external.nsd_id)
    torch_device = select_device(device or config["device"], config["evaluation"]["gpus"] if gpus is None else gpus)
    cfg = battery_config(config["evaluation"], config["seed"])
    sources, unavailable, networks = load_sources(config["evaluation"], config["clip"], torch_device)
    generated = {"missing": EXTERNAL_FID_GENERATED if "generated" in cfg.fid_protocols else not_requested("generated")}
    side = int(external.samples[0].shape[1])
    # below the field's 425 px the pixel metrics upsample the reconstruction: flagged with its size
    reconstruction = {
        "resolution": side,
        "size": list(external.samples[0].shape[1:3]),
        f"below_{FIELD_SIDE}_px": side < FIELD_SIDE,
    }
    runs = [
        evaluate_reconstructions(
            sample,
            external.nsd_id,
            ground_truth,
            retrieval_not_applicable(EXTERNAL_RETRIEVAL),
            sources,
            unavailable,
            cfg,
            torch_device,
            generated,
            "external",
            reconstruction,
        )
        for sample in external.samples
    ]
    summary, per_image = runs[0]
    summary.update(
        name=name or Path(images).stem,
        subject=subject,
        external={**external.source, "selection": selection},
        resize_policy=resize_policy(cfg.image_side, cfg.pixel_resize_via),
        networks=networks,
        samples={"n": len(runs), "scored": "sample 0"},
    )
    if len(runs) > 1:
        summary["samples"]["mean_over_samples"] = _mean_over_samples(runs, per_image, cfg.n_boot, cfg.seed)
    out = Path(out)
    write_run(summary, per_image, out / "metrics.json", out / "per_image.csv")
    write_provenance(out / "metrics.json", dict(config), config["seed"], networks=networks, source="external")
    return out


def _mean_over_samples(runs: list, per_image, n_boot: int, seed: int) -> dict:
    """Each metric's per-image mean over the samples (with its bootstrap CI); for the set
    statistics (Frechet distances), the mean of the samples' values. Adds the per-image means to
    ``per_image`` as ``{metric}_mean_over_samples``."""
    means = {}
    for metric in METRICS:
        if metric.key in per_image.columns:
            stacked = np.stack([table[metric.key].to_numpy() for _, table in runs])
            per_image[f"{metric.key}_mean_over_samples"] = stacked.mean(axis=0)
            means[metric.key] = mean_ci(stacked.mean(axis=0), n_boot, seed)
        elif "value" in runs[0][0]["metrics"][metric.key]:
            values = [summary["metrics"][metric.key]["value"] for summary, _ in runs]
            means[metric.key] = {"value": float(np.mean(values)), "per_sample": values}
    return means


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mindreader.score", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configfile", default="config/config.yaml", help="config (evaluation.* and weights; default %(default)s)"
    )
    parser.add_argument("--nsd-root", help="NSD root (default: the config's nsd_root)")
    parser.add_argument("--subject", required=True, help="NSD subject, e.g. subj01")
    parser.add_argument("--images", required=True, help="the reconstructions: a file or a folder")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument("--ids", help="tensor: the nsd ids of its rows (.npy, or one 0-based id per line)")
    parser.add_argument(
        "--sessions",
        type=int,
        help=f"sessions whose shared images form the test set (brain-diffuser: its order; default "
        f"{BRAIN_DIFFUSER_SESSIONS} there, every session of the design otherwise)",
    )
    parser.add_argument("--selection", help="how the method chose among its samples (recorded in metrics.json)")
    parser.add_argument("--name", help="name of the method (default: the file or folder name)")
    parser.add_argument("--out", required=True, help="folder for metrics.json and per_image.csv")
    parser.add_argument("--device", help="cpu, cuda, auto (default: the config's device)")
    parser.add_argument(
        "--pixel-resize-via",
        type=int,
        nargs="*",
        metavar="SIDE",
        help="sides PixCorr/SSIM's images pass through before evaluation.image_side (default: the config's "
        "evaluation.pixel_resize_via; 256: MindEye's evaluation; none given: once, straight)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        config = load_config(args.configfile)
        if args.pixel_resize_via is not None:
            config["evaluation"]["pixel_resize_via"] = args.pixel_resize_via
        out = score(
            args.images,
            args.fmt,
            config,
            args.subject,
            args.out,
            args.name,
            args.nsd_root,
            args.ids,
            args.sessions,
            args.selection,
            args.device,
        )
    except (ValueError, OSError, RuntimeError) as err:  # bad input, missing files, no CUDA
        log.error("%s", err)
        return 1
    log.info("scored %s: %s", args.images, out / "metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
