"""Released demo weights: the demo CLIP and the demo generator's language-free pre-training, made by
the workflow (`make demo-weights`: rule export_demo_weights) and shipped in the repository, which
`make demo` starts from as the paper starts from released CLIP and Lafite weights (config key
``demo_weights``).

A release folder holds
  manifest.json  the sha256 of every file below and what the weights were made from: the synthetic
                 stimuli's fingerprint, the test images held out of pre-training, the CLIP image
                 targets of a few of them (the embedding space's fingerprint), the config, provenance
  clip/          the demo CLIP as an open_clip folder, with its training curve and metrics
  generator/     the pre-trained generator folder (network.json, G/G_ema/D.safetensors), its losses

``verify`` is the check at the start of a run that uses a release: the weights must be the files
the manifest names, the synthetic world and the CLIP embedding space the ones they were made in,
and none of the run's test images may have been shown in pre-training.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mindreader.io import read_json, write_json
from mindreader.names import GENERATOR_RUN_FILES, GENERATOR_WEIGHT_ARGUMENTS
from mindreader.weights import sha256_of

MANIFEST = "manifest.json"
CLIP_DIR, GENERATOR_DIR = "clip", "generator"
CLIP_FILES = ("open_clip_config.json", "open_clip_model.safetensors", "curve.csv", "metrics.json")
GENERATOR_FILES = GENERATOR_RUN_FILES
RELEASE_FILES = tuple(f"{CLIP_DIR}/{f}" for f in CLIP_FILES) + tuple(f"{GENERATOR_DIR}/{f}" for f in GENERATOR_FILES)
# Held-out test images whose CLIP image targets fingerprint the embedding space (evenly spaced).
N_REFERENCE = 16
# Largest difference allowed between a reference target and the run's (unit vectors, float32 on a
# CPU; another BLAS changes them by ~1e-6, a changed CLIP or target rule by far more than this).
EMBEDDING_ATOL = 1e-4
# The config sections that decide what the weights are; recorded, and named when the world differs.
RECORDED_SECTIONS = ("seed", "synthetic", "clip", "generator")
# The config keys verify reads (rule check_demo_weights reruns when one changes, and only then):
# the world, how the CLIP targets are made, the generator's architecture.
CHECKED_KEYS = (
    "synthetic",
    "clip.demo",
    "clip.clamp",
    "clip.normalize",
    *sorted({f"generator.{key}" for keys in GENERATOR_WEIGHT_ARGUMENTS.values() for key in keys.values()}),
)
REMAKE = (
    "Remake the weights for this world with `make demo-weights` (README, 'Demo weights'), or train the "
    "demo CLIP and generator inside the run with `demo_weights: null`."
)


class DemoWeightsMismatch(ValueError):
    """Released weights that do not belong to this run; the message lists every reason."""


def stimuli_fingerprint(nsd_root: str | os.PathLike) -> dict:
    """Count, side and sha256 of every stimulus image of the tree, in nsd-id order."""
    from mindreader.nsd import NSD

    nsd = NSD(nsd_root)
    digest = hashlib.sha256()
    for _, images in nsd.iter_images(np.arange(nsd.n_images), 256):
        digest.update(np.ascontiguousarray(images).tobytes())
    return {"n_images": int(nsd.n_images), "side": int(nsd.image_side), "sha256": digest.hexdigest()}


def test_ids(prepared_files: Sequence[str | os.PathLike]) -> np.ndarray:
    """Every test image of the prepared subjects, ascending (those pre-training holds out)."""
    from mindreader.clip.stages import split_ids

    return split_ids(prepared_files)[1]


def reference_targets(nsd_root, ids: np.ndarray, clip_cfg: Mapping[str, Any], clip_folder) -> np.ndarray:
    """The CLIP image targets of ``ids`` as the embedding rule makes them, with the CLIP of ``clip_folder``."""
    from mindreader.clip.embed import clip_targets, embed_image_batches
    from mindreader.clip.models import load_clip
    from mindreader.nsd import NSD

    cfg = {**clip_cfg, "train_demo": True, "demo": {**clip_cfg["demo"], "dir": os.fspath(clip_folder)}}
    clip = load_clip(cfg, "cpu")
    raw = embed_image_batches(clip, NSD(nsd_root).iter_images(ids, len(ids)), len(ids))["raw"]
    return clip_targets(raw, float(clip_cfg["clamp"]), bool(clip_cfg["normalize"]))


def export(
    clip_folder: str | os.PathLike,  # the trained demo CLIP (rule train_demo_clip)
    generator_folder: str | os.PathLike,  # the pre-trained generator (rule pretrain_generator)
    nsd_root: str | os.PathLike,
    prepared_files: Sequence[str | os.PathLike],  # the subjects whose test images pre-training held out
    config: Mapping[str, Any],
    output: str | os.PathLike,  # the release folder, written whole or not at all
) -> dict:
    """Write a release folder; return its manifest."""
    from mindreader.provenance import collect

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    held_out = test_ids(prepared_files)
    reference = held_out[np.linspace(0, len(held_out) - 1, min(N_REFERENCE, len(held_out))).round().astype(int)]
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        staged = Path(tmp) / "release"
        for sub, source, names in ((CLIP_DIR, clip_folder, CLIP_FILES), (GENERATOR_DIR, generator_folder, GENERATOR_FILES)):
            (staged / sub).mkdir(parents=True)
            for name in names:
                shutil.copyfile(Path(source) / name, staged / sub / name)
        manifest = {
            "files": {name: sha256_of(staged / name) for name in RELEASE_FILES},
            "made_from": {
                "stimuli": stimuli_fingerprint(nsd_root),
                "held_out_nsd_ids": held_out.tolist(),
                "reference": {
                    "nsd_id": reference.tolist(),
                    "clip_target": reference_targets(nsd_root, reference, config["clip"], staged / CLIP_DIR).tolist(),
                },
            },
            "config": {key: config[key] for key in RECORDED_SECTIONS},
            "provenance": collect(None, config["seed"]),
        }
        write_json(staged / MANIFEST, manifest)
        if output.exists():
            shutil.rmtree(output)
        os.replace(staged, output)
    return manifest


def use_release(config: dict, repository: str | os.PathLike) -> str | None:
    """Point the config's demo CLIP (clip.demo.dir) and generator.init at the release that
    ``config["demo_weights"]`` names (a relative path is the repository's); return the release
    folder, or None when the config names none (the run trains both itself)."""
    name = config.get("demo_weights")
    if not name:
        return None
    folder = os.path.relpath(Path(repository, name))
    if not config["clip"]["train_demo"]:
        raise ValueError(
            f"demo_weights ({name}) is a release of the demo CLIP and generator, but clip.train_demo is false "
            "(a pretrained CLIP): set demo_weights: null"
        )
    if config["generator"]["init"] != "pretrain":
        raise ValueError(
            f"demo_weights ({name}) and generator.init ({config['generator']['init']}) both say where fine-tuning "
            "starts: set generator.init: pretrain, or demo_weights: null"
        )
    if not Path(folder, MANIFEST).is_file():
        raise ValueError(f"demo_weights: {Path(folder, MANIFEST)} not found (expected a release folder). {REMAKE}")
    config["clip"]["demo"]["dir"] = os.path.join(folder, CLIP_DIR)
    config["generator"]["init"] = os.path.join(folder, GENERATOR_DIR)
    return folder


def _differences(recorded: Any, current: Any, path: str) -> list[str]:
    """Dotted keys whose values differ between two config sections."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        return [d for key in sorted(set(recorded) | set(current)) for d in _differences(recorded.get(key), current.get(key), f"{path}.{key}")]
    return [] if recorded == current else [f"{path} ({recorded!r} there, {current!r} here)"]


def verify(
    folder: str | os.PathLike,  # the release folder (config key demo_weights)
    nsd_root: str | os.PathLike,
    prepared_files: Sequence[str | os.PathLike],  # this run's subjects
    config: Mapping[str, Any],  # this run's config
) -> dict:
    """Check a release against this run; raise DemoWeightsMismatch naming every problem, else return
    what was checked."""
    from mindreader.generator.stages import check_architecture
    from mindreader.generator.store import architecture, load_networks

    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DemoWeightsMismatch(f"{folder}: no {MANIFEST} (expected a release folder of `make demo-weights`). {REMAKE}")
    manifest = read_json(manifest_path)
    problems = []
    for name, expected in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif sha256_of(path) != expected:
            problems.append(f"{path} has sha256 {sha256_of(path)}, the manifest {expected}")
    if problems:  # the files themselves are not the release: nothing else is worth checking
        raise DemoWeightsMismatch(f"{folder}: " + "; ".join(problems) + f". {REMAKE}")

    made_from = manifest["made_from"]
    stimuli = stimuli_fingerprint(nsd_root)
    if stimuli != made_from["stimuli"]:
        changed = _differences(manifest["config"]["synthetic"], config["synthetic"], "synthetic")
        problems.append(
            f"the stimuli at {nsd_root} ({stimuli['n_images']} images of {stimuli['side']} px, sha256 "
            f"{stimuli['sha256'][:16]}) are not the ones the weights were made from ({made_from['stimuli']['n_images']} "
            f"of {made_from['stimuli']['side']} px, sha256 {made_from['stimuli']['sha256'][:16]}); "
            + (f"config keys that differ: {', '.join(changed)}" if changed else "the config's synthetic section is the same, so the synthetic world's code has changed")
        )
    leaked = np.setdiff1d(test_ids(prepared_files), made_from["held_out_nsd_ids"])
    if len(leaked):
        problems.append(
            f"{len(leaked)} of this run's test images (nsd ids {', '.join(map(str, leaked[:5]))}"
            f"{', ...' if len(leaked) > 5 else ''}) were not held out of pre-training (prepare.split, subjects)"
        )
    report = {"folder": os.fspath(folder), "files": manifest["files"], "stimuli": stimuli}
    if not problems:  # the embeddings are only comparable on the same stimuli
        ids = np.asarray(made_from["reference"]["nsd_id"], dtype=np.int64)
        expected = np.asarray(made_from["reference"]["clip_target"], dtype=np.float32)
        got = reference_targets(nsd_root, ids, config["clip"], folder / CLIP_DIR)
        gap = float(np.abs(got - expected).max()) if got.shape == expected.shape else float("inf")
        report["reference_max_abs_difference"] = gap
        if not gap <= EMBEDDING_ATOL:
            # the clip keys the check reads (CHECKED_KEYS), less where the demo CLIP is read from
            changed = [
                d
                for key in ("demo", "clamp", "normalize")
                for d in _differences(manifest["config"]["clip"][key], config["clip"][key], f"clip.{key}")
                if not d.startswith("clip.demo.dir ")
            ]
            problems.append(
                f"the CLIP image targets of {len(ids)} reference images differ from the release's by up to {gap:.3g} "
                f"(allowed {EMBEDDING_ATOL}): this run's CLIP embedding space is not the one the generator was trained in; "
                + (f"config keys that differ: {', '.join(changed)}" if changed else "the config's clip section is the same, so the CLIP code has changed")
            )
    _, _, _, meta = load_networks(folder / GENERATOR_DIR)  # strictly, as fine-tuning loads it
    g_kwargs, d_kwargs = architecture(config["generator"], meta["generator"]["c_dim"], 1, meta["generator"]["fusion"])
    try:
        check_architecture(folder / GENERATOR_DIR, meta, g_kwargs, d_kwargs)
    except ValueError as err:
        problems.append(str(err))
    if problems:
        raise DemoWeightsMismatch(f"{folder} does not belong to this run: " + "; ".join(problems) + f". {REMAKE}")
    return report


def install(source: str | os.PathLike, destination: str | os.PathLike, force: bool = False) -> None:
    """Copy a release folder's manifest and files into the repository, each file checked against it."""
    source, destination = Path(source), Path(destination)
    manifest = read_json(source / MANIFEST)
    for name, expected in manifest["files"].items():
        if sha256_of(source / name) != expected:
            raise DemoWeightsMismatch(f"{source / name}: sha256 differs from {source / MANIFEST}; export it again")
    if destination.exists():
        if not force:
            raise FileExistsError(
                f"{destination} already holds a release: give the new one another version "
                f"(DEMO_WEIGHTS=mindreader/released/demo-vN, then demo_weights in config/config.yaml) or replace it with FORCE=1"
            )
        shutil.rmtree(destination)
    for name in (MANIFEST, *manifest["files"]):  # the release alone (not Snakemake's directory marker)
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / name, destination / name)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mindreader.demo_weights", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    put = commands.add_parser("install", help="copy an exported release folder into the repository")
    put.add_argument("source", help="the exported folder (results/demo_weights/release of the demo-weights run)")
    put.add_argument("destination", help="the versioned folder to create, e.g. mindreader/released/demo-v1")
    put.add_argument("--force", action="store_true", help="replace the destination if it exists")
    args = parser.parse_args(argv)
    try:
        install(args.source, args.destination, args.force)
    except (DemoWeightsMismatch, FileExistsError) as err:
        sys.exit(f"error: {err}")
    print(f"installed {args.destination}")


if __name__ == "__main__":
    main()
