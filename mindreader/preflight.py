"""Rule preflight: one short job, run where the workflow's jobs will run, that says before anything
long whether they can run there and fit their asks.

It checks, in this order:
1. The device: ``select_device(config["device"], gpus)``, with ``gpus`` the job's own GPU ask (1
   when any GPU stage asks for one). A GPU asked for and none usable fails here, at once, with
   torch's CUDA build, the driver's CUDA version and CUDA_VISIBLE_DEVICES; otherwise the report
   names the device, torch's CUDA build and the driver's CUDA version.
2. The weights files the config names (rules/common.smk, configured_weights): each present and
   matching its sha256 (the config's, else the registry's).
3. One unit of every stage the workflow plans, at the config's shapes, with random weights of the
   real architectures (`mindreader.scale.units`, so that the step needs no weights file): a
   generator pre-training and fine-tuning step with every phase (G main with the contrastive terms,
   path length, D main, R1; e2e when planned), a mapper training step per planned mapper and batch,
   a ridge fit (at 1/preflight.ridge_scale of its size), a reconstruction batch, an embedding batch
   of images and of captions, an evaluation batch through each feature network and the
   evaluation's statistics. Each runs on its own rule's device (select_device with the rule's GPU
   ask) with its rule's threads, in this one process; GPU memory is torch's peak allocation per
   unit, host memory the process's peak RSS during the unit.
4. Every planned job (rules/common.smk, preflight_jobs: what each asks on its first attempt and
   how many jobs a long training is split into) priced from those units (`mindreader.scale.project`)
   against its asks: s/kimg of pre-training and fine-tuning, the projected GPU-hours of the
   workflow, and a flag on every ask below its projection.

Errors (the job exits non-zero): no usable GPU where one is asked; a weights file missing or
failing its sha256; a unit that fails (out of GPU memory at the config's batch, say); a runtime
ask below its projection (the job would be killed at its limit, or a training would run out of
its planned resumptions). Warnings: a memory ask below its projection (host memory is measured in
one process that also held the units before, so it is an upper bound); a weights file with no
sha256 to check it against; torch built for a newer CUDA than the driver's; a unit whose rule asks
for a GPU measured on the CPU (``device: cpu``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from mindreader.io import atomic_path, write_json
from mindreader.mappers.losses import uses_contrastive
from mindreader.provenance import collect, write_provenance
from mindreader.runtime import cuda_diagnosis, driver_cuda_version, select_device
from mindreader.scale import project as projection
from mindreader.scale import units as scale
from mindreader.scale.memory import rss_mb

log = logging.getLogger(__name__)

GENERATOR_RULES = ("pretrain_generator", "finetune_generator", "finetune_e2e")


# --- 1. the device ---------------------------------------------------------------------------


def check_device(requested: str, gpus: int) -> tuple[dict, list[str]]:
    """(what the job runs on, warnings); raises at once where a GPU is needed and none is usable."""
    device = select_device(requested, gpus)
    info = {
        "requested": requested,
        "gpus_asked": int(gpus),
        "device": str(device),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "driver_cuda": driver_cuda_version(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    warnings = []
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, memory_gb=props.total_memory / scale.GB, capability=f"{props.major}.{props.minor}")
        if _version(info["torch_cuda"]) > _version(info["driver_cuda"]):
            warnings.append(
                f"torch is built for CUDA {info['torch_cuda']}, newer than the driver's {info['driver_cuda']}: "
                "it runs through CUDA's minor-version compatibility, some kernels may not"
            )
    else:
        info.update(name=scale.describe_device(device), diagnosis=cuda_diagnosis())
        if gpus:
            warnings.append(f"the GPU stages run on the CPU, as device: {requested} asks: their times are the CPU's")
    return info, warnings


def _version(text: str | None) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")) if text else ()


# --- 2. the weights files ----------------------------------------------------------------------


def check_weights(entries: list[Mapping[str, Any]]) -> tuple[list[dict], list[str], list[str]]:
    """(one row per configured weights file, errors, warnings): present, and its sha256 (the
    config's, else the registry's) matching, through the loaders' own check (weights.resolve)."""
    from mindreader.weights import REGISTRY, MissingWeightsError, resolve

    rows, errors, warnings = [], [], []
    for entry in entries:
        name, path = entry["name"], entry["path"]
        expected = entry.get("sha256") or (REGISTRY[name].sha256 if name in REGISTRY else None)
        row = {"name": name, "path": path, "sha256": expected}
        try:
            resolve(path, expected, name)
            row["status"] = "verified" if expected else "present, no sha256 to check"
            if not expected:
                warnings.append(f"weights {name} ({path}): no sha256 in the config or the registry to check it")
        except MissingWeightsError as err:
            row["status"] = "missing"
            errors.append(str(err))
        except ValueError as err:
            row["status"] = "sha256 mismatch"
            errors.append(str(err))
        rows.append(row)
    return rows, errors, warnings


# --- 3. the units ------------------------------------------------------------------------------


def planned_units(config: Mapping[str, Any], jobs: list[Mapping[str, Any]]) -> list[tuple[str, int, dict]]:
    """(unit, batch, the job it stands for) of every unit the planned jobs need, in the order they
    are measured: generator stages, mappers, reconstruction, embedding, evaluation."""
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(job["rule"], []).append(job)
    gen, train = config["generator"], config["mappers"]["train"]
    out = []
    generator_jobs = [job for rule in GENERATOR_RULES for job in by_rule.get(rule, [])]
    if generator_jobs:  # every generator job asks for the same (generator.gpus, generator.threads)
        stages = ["pretrain", "finetune"] + (["e2e"] if "finetune_e2e" in by_rule else [])
        out += [
            (f"gen:{stage}:{phase}", scale.process_batch(scale.stage_settings(config, stage)), generator_jobs[0])
            for stage in stages
            for phase in scale.stage_phases(config, stage)
        ]
    seen = set()
    for job in by_rule.get("train_mapper", []):
        w = job["wildcards"]
        if w["mapper"] == "ridge":
            unit, batch = "ridge", 1
        else:
            unit = f"mapper:{w['mapper']}"
            batch = train["batch_size"] if uses_contrastive(w["loss"]) else train["batch_size_plain"]
        if (unit, batch) not in seen:
            seen.add((unit, batch))
            out.append((unit, batch, job))
    for rule, units in (
        ("reconstruct", [("reconstruct", gen["reconstruct"]["batch"])]),
        ("embed_images", [("embed:images", config["clip"]["batch_size"])]),
        ("embed_captions", [("embed:captions", config["clip"]["batch_size"])]),
    ):
        out += [(unit, batch, by_rule[rule][0]) for unit, batch in units if rule in by_rule]
    evaluation = by_rule.get("evaluate_run", []) + by_rule.get("fid_generated", [])
    if evaluation:
        batch = config["evaluation"]["batch_size"]
        networks = scale.evaluation_networks(config) if "evaluate_run" in by_rule else ["inception_fid"]
        out += [(f"eval:{name}", batch, evaluation[0]) for name in networks]
        out.append(("eval:statistics", 1, evaluation[0]))
    return out


def stage_of_unit(unit: str) -> str:
    kind, _, rest = unit.partition(":")
    if kind == "gen":
        return {"pretrain": "generator pre-training", "finetune": "generator fine-tuning", "e2e": "generator e2e"}[
            rest.split(":")[0]
        ]
    if kind == "mapper":
        return f"mapper {rest}"
    return {"ridge": "mapper ridge", "reconstruct": "reconstruction", "embed": f"embedding {rest}"}.get(
        kind, "evaluation"
    )


def measure_units(
    config: Mapping[str, Any],  # the workflow's config
    jobs: list[Mapping[str, Any]],  # the planned jobs (preflight_jobs)
    ridge_scale: int,  # ridge at 1/ridge_scale of its N and voxels
) -> tuple[list[dict], list[str]]:
    """(one measurement record per unit, errors): each unit of planned_units on its rule's device
    with its rule's threads; a unit that fails is an error and the others still run. Only what
    the unit itself holds is alive while it runs (a generator stage's networks serve its phases,
    one CLIP both embedding units), so that its peak memory is its own."""
    results, errors = [], []
    held: dict[str, Any] = {}  # what the next unit may reuse: key, and the networks
    for unit, batch, job in planned_units(config, jobs):
        device = select_device(config["device"], int(job["resources"].get("gpu", 0)))
        threads = int(job.get("threads", 1))
        torch.set_num_threads(threads)
        log.info("unit %s at batch %d on %s, %d thread(s)", unit, batch, device, threads)
        kind, _, rest = unit.partition(":")
        key = (rest.split(":")[0] if kind == "gen" else kind, str(device))
        work, extra = None, {}
        if held.get("key") != key:
            held.clear()
            held["key"] = key
        if kind != "gen" or "phases" not in held:
            scale.release_memory()
            held["base"] = rss_mb() / 1024  # the process before the unit's networks are built
        try:
            if kind == "gen":
                if "phases" not in held:
                    held["phases"], _ = scale.generator_phases(config, rest.split(":")[0], batch, device)
                phase = rest.split(":")[1]
                if phase not in held["phases"]:
                    continue  # a regulariser switched off (pl_weight or r1_gamma 0)
                work = held["phases"][phase]
            elif kind == "embed":
                held.setdefault("clip", scale.random_clip(config["clip"], device))
                builder = scale.embed_images_batch if unit == "embed:images" else scale.embed_captions_batch
                work = builder(config, batch, device, held["clip"])
            else:
                work, extra = scale.build_unit(unit, config, batch, device, ridge_scale=ridge_scale)
            record = scale.measure(work, device, repeats=3 if device.type == "cuda" else 1)
        except Exception as err:  # noqa: BLE001 (every failure is reported, the other units still run)
            log.exception("unit %s failed", unit)
            errors.append(f"{unit} at batch {batch} on {device} failed: {type(err).__name__}: {err}")
            held.clear()
            continue
        finally:
            del work
        results.append(
            {
                "unit": unit,
                "batch": batch,
                "device": scale.describe_device(device),
                "threads": threads,
                "rss_base_gb": held["base"],
                **record,
                "extra": extra,
            }
        )
        log.info(
            "unit %s: %.3f s wall, host peak %.2f GB%s",
            unit,
            record["wall_s"],
            record["rss_peak_gb"],
            f", GPU peak {record['gpu_peak_gb']:.2f} GB" if record["gpu_peak_gb"] is not None else "",
        )
    held.clear()
    scale.release_memory()
    return results, errors


def stage_summary(units: projection.Units, config: Mapping[str, Any]) -> dict[str, dict]:
    """Per stage: its unit's seconds (a generator step with its lazy regularisers, a mapper step,
    a ridge fit, a batch) at the rule's batch, s/kimg of the generator stages, and peak memory (GPU
    where the units ran on one, else host RSS)."""
    out: dict[str, dict] = {}
    for unit in units.by_unit:
        stage = stage_of_unit(unit)
        entry = out.setdefault(
            stage, {"units": [], "peak_gb": 0.0, "memory": "GPU" if units.on_gpu(unit) else "host RSS"}
        )
        entry["units"].append(unit)
        entry["peak_gb"] = max(
            entry["peak_gb"],
            max(p["gpu_peak_gb"] if units.on_gpu(unit) else p["rss_peak_gb"] for p in units.by_unit[unit]),
        )
    for stage, entry in out.items():
        if stage.startswith("generator"):
            name = entry["units"][0].split(":")[1]
            settings = scale.stage_settings(config, name)
            entry["what"] = (
                f"training step at batch {scale.process_batch(settings)} per process, lazy regularisers at their intervals"
            )
            try:
                entry.update(
                    seconds=projection.generator_step(units, name, settings),
                    s_per_kimg=projection.s_per_kimg(units, name, settings),
                )
            except KeyError as err:  # a phase failed: the errors say why
                entry.update(seconds=None, missing=err.args[0])
        elif stage == "evaluation":
            nets = [u for u in entry["units"] if u != "eval:statistics"]
            entry.update(
                what=f"a batch of {config['evaluation']['batch_size']} through each network",
                seconds=sum(units.seconds(u) for u in nets),
                per_network={u: units.seconds(u) for u in entry["units"]},
            )
        else:
            points = {p["batch"]: p["wall_s"] for u in entry["units"] for p in units.by_unit[u]}
            batch = max(points)
            entry.update(
                what=f"one unit at batch {batch}" if stage != "mapper ridge" else "one fit", seconds=points[batch]
            )
    return out


# --- 4. the report ------------------------------------------------------------------------------


def report_markdown(report: Mapping[str, Any], units: projection.Units | None, rows: list[dict], config) -> str:
    device = report["device"]
    lines = [
        f"# Preflight: {'passed' if report['status'] == 'passed' else 'FAILED'}",
        "",
        f"Device: {device['device']} ({device.get('name', '')}); torch {device['torch']} built for CUDA "
        f"{device['torch_cuda'] or 'none'}; the driver supports "
        f"{'CUDA ' + device['driver_cuda'] if device['driver_cuda'] else 'no CUDA (no NVIDIA driver)'}; "
        f"CUDA_VISIBLE_DEVICES={device['cuda_visible_devices']}"
        + (
            f"; {device['memory_gb']:.1f} GB, compute capability {device['capability']}"
            if "memory_gb" in device
            else ""
        ),
        "",
    ]
    for title, items in (("Errors", report["errors"]), ("Warnings", report["warnings"])):
        if items:
            lines += [f"## {title}", "", *(f"- {item}" for item in items), ""]
    lines += ["## Weights", "", "| name | path | sha256 | status |", "|---|---|---|---|"]
    lines += [f"| {w['name']} | {w['path']} | {(w['sha256'] or '-')[:16]} | {w['status']} |" for w in report["weights"]]
    lines += [
        "",
        "## Stages at the config's shapes (wall seconds)",
        "",
        "| stage | what | s | s/kimg | peak GB | of |",
        "|---|---|---|---|---|---|",
    ]
    for stage, entry in report["stages"].items():
        per_kimg = f"{entry['s_per_kimg']:.1f}" if "s_per_kimg" in entry else "-"
        seconds = f"{entry['seconds']:.3f}" if entry["seconds"] is not None else "-"
        lines.append(
            f"| {stage} | {entry['what']} | {seconds} | {per_kimg} | {entry['peak_gb']:.2f} | {entry['memory']} |"
        )
    if units is not None and "gen:pretrain:Gmain" in units:
        lines += [
            "",
            "## Generator step (wall seconds per phase)",
            "",
            *projection.generator_table(units, config),
        ]
    if units is not None:
        lines += ["", "## Units", "", *projection.units_table(units)]
        lines += ["", "## The workflow's jobs, projected from the units", "", *projection.projection_table(rows, units)]
    return "\n".join(lines) + "\n"


def run(
    config: Mapping[str, Any],  # the workflow's config
    jobs: list[Mapping[str, Any]],  # preflight_jobs(): every planned heavy job with its asks
    weights: list[Mapping[str, Any]],  # configured_weights(config)
    gpus: int,  # the preflight job's own GPU ask
    outputs: Mapping[str, str | os.PathLike],  # json, md: the report; kept: a copy that survives a failure
) -> int:
    """Run every check, write the report, return the exit status (0: passed, 1: an error)."""
    report: dict[str, Any] = {"status": "running", "errors": [], "warnings": []}
    try:
        report["device"], warnings = check_device(config["device"], gpus)
    except RuntimeError as err:  # a GPU asked for and none usable: nothing else is worth running
        log.error("%s", err)
        write_json(outputs["kept"], {"status": "failed", "errors": [str(err)], "warnings": [], "device": None})
        return 1
    report["warnings"] += warnings
    log.info("device: %s", report["device"])
    report["weights"], errors, warnings = check_weights(weights)
    report["errors"] += errors
    report["warnings"] += warnings
    results, errors = measure_units(config, jobs, int(config["preflight"]["ridge_scale"]))
    report["errors"] += errors
    report["units"] = results
    units = projection.Units(results, scale.rule_batches(config), "wall_s")
    rows = projection.project(config, units, jobs)
    report["stages"] = stage_summary(units, config)
    report["projection"] = {"rows": rows, "totals": projection.stage_totals(rows)}
    for row in rows:
        for flag in row["flags"]:
            (report["errors"] if flag["ask"] == "runtime" else report["warnings"]).append(
                f"{row['kind']}: {flag['text']}"
            )
    report["status"] = "failed" if report["errors"] else "passed"
    report["provenance"] = collect(config, config["seed"])
    text = report_markdown(report, units if results else None, rows, config)
    for line in text.splitlines():
        log.info("%s", line)
    for path in (outputs["json"], outputs["kept"]):
        write_json(path, report)
    with atomic_path(outputs["md"]) as tmp:
        Path(tmp).write_text(text)
    if report["errors"]:
        return 1  # Snakemake removes the outputs; the kept copy holds the provenance
    write_provenance(outputs["json"], config, config["seed"])
    return 0
