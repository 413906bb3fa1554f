"""Every job of the workflow priced from measured units (`mindreader.scale.units`), next to what it
asks the scheduler for, with a flag on every ask below its projection.

A job is a dict: ``rule``, ``wildcards`` (dict), ``resources`` (``gpu``, ``mem_mb``, ``runtime``
of its first attempt, the runtime capped at cluster.max_runtime) and ``attempts``: how many jobs
the rule plans for it (a training longer than cluster.max_runtime runs as ceil(runtime /
max_runtime) jobs, each resuming the last; 1 for the others); comparison_metrics also has
``scored_sets``, the image sets it scores at most. Rule preflight gets the jobs from the
workflow's target functions (rules/common.smk, preflight_jobs); bench/paper_scale.py from a dry run.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Mapping

import numpy as np

from mindreader.names import TRAINING_RULES
from mindreader.scale.units import (
    FID_DIM,
    GB,
    MAPPER_PHASE,
    PHASES,
    SG2ADA_V100_S_PER_KIMG,
    STAGES,
    clip_embed_dim,
    data_sizes,
    evaluation_networks,
    process_batch,
    stage_settings,
)

STAGE_OF_RULE = {
    "prepare_subject": "data",
    "embed_images": "clip",
    "embed_captions": "clip",
    "train_mapper": "mappers",
    "pretrain_generator": "generator: pre-training",
    "finetune_generator": "generator: fine-tuning",
    "finetune_e2e": "generator: fine-tuning",
    "reconstruct": "reconstruction",
    "evaluate_run": "evaluation",
    "fid_generated": "evaluation",
    "fid_generated_oracle": "evaluation",
    "score_external": "evaluation",
    "comparison_metrics": "evaluation",
}


def fit(points: list[dict], key: str, batch: int) -> tuple[float, bool]:
    """(value at ``batch``, measured?): the measurement when one was taken at ``batch``; else time
    proportional to the batch (least squares through the origin: the per-image cost, which two
    noisy small batches give more steadily than an intercept) and memory as a + b * batch."""
    points = sorted((p for p in points if p.get(key) is not None), key=lambda p: p["batch"])
    exact = [p[key] for p in points if p["batch"] == batch]
    if exact:
        return exact[-1], True
    if key in ("wall_s", "cpu_s"):
        per_item = sum(p[key] * p["batch"] for p in points) / sum(p["batch"] ** 2 for p in points)
        return per_item * batch, False
    if len(points) < 2:
        raise ValueError(
            f"{points[0]['unit']}: one measurement at batch {points[0]['batch']} cannot extrapolate to {batch}"
        )
    (b1, y1), (b2, y2) = [(p["batch"], p[key]) for p in points[-2:]]
    return y1 + (y2 - y1) / (b2 - b1) * (batch - b1), False


class Units:
    """The measurements (records of `mindreader.scale.units.measure` with ``unit`` and ``batch``),
    with their values at the batch each rule runs at."""

    def __init__(
        self,
        results: list[dict],  # measurement records; those with an "error" are left out
        batches: Mapping[str, int],  # unit -> the batch its rule runs at (units.rule_batches)
        time_key: str,  # wall_s (the jobs run where it was measured) or cpu_s (another machine)
    ):
        self.by_unit: dict[str, list[dict]] = {}
        for r in results:
            if "error" not in r:
                self.by_unit.setdefault(r["unit"], []).append(r)
        self.batches = batches
        if time_key not in ("wall_s", "cpu_s"):
            raise ValueError(f"time_key must be wall_s or cpu_s, got '{time_key}'")
        self.time_key = time_key

    def __contains__(self, unit: str) -> bool:
        return unit in self.by_unit

    def at(self, unit: str, key: str, batch: int | None = None) -> float:
        if unit not in self.by_unit:
            raise KeyError(f"unit {unit} was not measured")
        value, _ = fit(self.by_unit[unit], key, batch or self.batches[unit])
        return value

    def seconds(self, unit: str, batch: int | None = None) -> float:
        return self.at(unit, self.time_key, batch)

    def per_item(self, unit: str) -> float:
        """Seconds per image (caption) at the rule's batch."""
        return self.seconds(unit) / self.batches[unit]

    def on_gpu(self, unit: str) -> bool:
        return any(p.get("gpu_peak_gb") is not None for p in self.by_unit.get(unit, []))

    def memory(self, unit: str, batch: int | None = None) -> float:
        """Peak memory of the device the unit ran on: GPU memory on a GPU, host RSS on the CPU."""
        return self.at(unit, "gpu_peak_gb" if self.on_gpu(unit) else "rss_peak_gb", batch)

    def host(self, unit: str, batch: int | None = None) -> float:
        return self.at(unit, "rss_peak_gb", batch)

    def base(self, unit: str) -> float:
        """Host memory with the unit's networks built, before its work."""
        return self.at(unit, "rss_before_gb")

    def extra(self, unit: str) -> dict:
        """What the unit recorded besides its time and memory (ridge's scale, the statistics' parts)."""
        if unit not in self.by_unit:
            raise KeyError(f"unit {unit} was not measured")
        return self.by_unit[unit][0]["extra"]

    def measured(self, unit: str) -> bool:
        return fit(self.by_unit[unit], self.time_key, self.batches[unit])[1]

    def phases(self, stage: str) -> list[str]:
        return [phase for phase in (*PHASES, MAPPER_PHASE) if f"gen:{stage}:{phase}" in self]


def generator_step(
    units: Units, stage: str, gen: Mapping[str, Any], lazy: bool = True, batch: int | None = None
) -> float:
    """Seconds of one training step of ``stage``'s units, each process at ``batch`` (None: the
    units' own): every phase at its interval."""
    seconds = units.seconds(f"gen:{stage}:Gmain", batch) + units.seconds(f"gen:{stage}:Dmain", batch)
    if f"gen:{stage}:{MAPPER_PHASE}" in units:
        seconds += units.seconds(f"gen:{stage}:{MAPPER_PHASE}", batch)
    if lazy:
        for phase, interval in (("Greg", gen["pl_interval"]), ("Dreg", gen["r1_interval"])):
            if f"gen:{stage}:{phase}" in units:
                seconds += units.seconds(f"gen:{stage}:{phase}", batch) / interval
    return seconds


def s_per_kimg(units: Units, stage: str, gen: Mapping[str, Any]) -> float:
    """Wall seconds per kimg of ``stage`` with ``gen`` its settings (stage_settings): a step of
    the global batch, each of its GPUs running its share."""
    return generator_step(units, stage, gen) * 1000 / gen["batch"]


def v100_ratio(units: Units, stage: str, ours: Mapping[str, Any], plain: Mapping[str, Any]) -> float:
    """Our per-image cost of ``stage`` (settings ``ours``) over the plain StyleGAN2's (``plain``),
    each on one device at its process batch."""
    batch, plain_batch = process_batch(ours), process_batch(plain)
    per_image = generator_step(units, stage, ours, batch=batch) / batch
    return per_image / (generator_step(units, "sg2ada", plain, batch=plain_batch) / plain_batch)


def generator_peak(units: Units, stage: str, host: bool, batch: int | None = None) -> float:
    return max(
        (units.host if host else units.memory)(f"gen:{stage}:{phase}", batch) for phase in units.phases(stage)
    )


def job_cost(job: Mapping[str, Any], config: Mapping[str, Any], units: Units) -> dict:
    """Projected seconds (on the measuring device; CPU seconds with time_key cpu_s), memory in GB
    (host and, for a GPU rule, device), and where the figure comes from."""
    from mindreader.mappers.losses import uses_contrastive
    from mindreader.names import get_variant

    rule, w = job["rule"], job["wildcards"]
    gen, sizes = config["generator"], data_sizes(config)
    res = gen["resolution"]
    image_gb = 3 * res * res / GB
    betas_gb = sizes["voxels"] * 4 / GB
    embedding_gb = clip_embed_dim(config["clip"]) * 4 / GB
    n_aug = int(config["clip"]["n_aug"])
    test = sizes["test_images"]
    gpu_job = int(job["resources"].get("gpu", 0)) > 0

    def host(unit: str, batch: int | None = None) -> float:
        """The job's process at its peak; measured on the CPU for a GPU job: with its networks
        built (the activations then live on the GPU)."""
        return units.base(unit) if gpu_job and not units.on_gpu(unit) else units.host(unit, batch)

    if rule == "prepare_subject":
        # bench/prepare.py (bench/README.md): 5.0-5.2 CPU-s per full-size session, 0.22 GB peak,
        # plus the averaged test samples' float32 sums
        return {
            "seconds": 5.2 * config["prepare"]["sessions"],
            "host_gb": 0.22 + test * betas_gb,
            "source": "bench/prepare.py",
        }
    if rule in ("pretrain_generator", "finetune_generator", "finetune_e2e"):
        if rule == "pretrain_generator":
            stage, kimg = "pretrain", gen["pretrain"]["kimg"]
            data_gb = sizes["pretrain_images"] * (image_gb + embedding_gb)
        else:
            k = get_variant(w["variant"]).n_conditions
            stage = "e2e" if rule == "finetune_e2e" else ("finetune" if k > 1 else "pretrain")
            kimg = gen["finetune"]["kimg"]
            data_gb = sizes["train_images"] * image_gb + sizes["train_trials"] * k * embedding_gb
            if stage == "e2e":
                data_gb += sizes["train_trials"] * betas_gb
        # a one-condition fine-tuning runs pre-training's networks at fine-tuning's settings
        settings = stage_settings(config, "pretrain" if rule == "pretrain_generator" else "finetune")
        processes = max(int(settings["gpus"]), 1)  # torchrun: each holds its networks and the data
        batch = process_batch(settings)
        steps = math.ceil(kimg * 1000 / settings["batch"])
        out = {
            "seconds": steps * generator_step(units, stage, settings, batch=batch),
            "host_gb": (max(host(f"gen:{stage}:{phase}", batch) for phase in units.phases(stage)) + data_gb)
            * processes,
            "device_gb": generator_peak(units, stage, False, batch),
            "source": f"gen:{stage}:* x {steps} steps" + (f" on {processes} GPUs" if processes > 1 else ""),
        }
        if "gen:sg2ada:Gmain" in units:
            # StyleGAN2-ADA's V100 s/kimg per image, times our ratio, shared by the job's GPUs
            ratio = v100_ratio(units, stage, settings, stage_settings(config, "sg2ada"))
            out["v100_seconds"] = kimg * np.mean(SG2ADA_V100_S_PER_KIMG) * ratio / processes
        return out
    if rule == "train_mapper":
        if w["mapper"] == "ridge":
            unit = "ridge"
            scale = units.extra(unit)["scale"]
            base, peak = units.base(unit), units.host(unit)
            return {
                "seconds": units.seconds(unit) * scale**3,
                "host_gb": base + (peak - base) * scale**2,
                "source": f"ridge at 1/{scale} of N and voxels, x{scale}^3 time, x{scale}^2 memory",
            }
        unit = f"mapper:{w['mapper']}"
        train = config["mappers"]["train"]
        batch = train["batch_size"] if uses_contrastive(w["loss"]) else train["batch_size_plain"]
        n_fit = sizes["train_trials"] - sizes["val_trials"]
        step = units.seconds(unit, batch)
        # validation: forward only, a third of a training step's work
        seconds = train["epochs"] * (math.ceil(n_fit / batch) + math.ceil(sizes["val_trials"] / batch) / 3) * step
        # the betas, and the training images' targets and views; the host also holds the CLIP
        # file's whole table (every subject's stimuli), of which train_network moves those rows
        data_gb = (sizes["train_trials"] + test) * betas_gb + sizes["train_images"] * (1 + n_aug) * embedding_gb
        clip_file_gb = sizes["stimuli"] * (1 + n_aug) * embedding_gb
        return {
            "seconds": seconds,
            "host_gb": host(unit, batch) + data_gb + clip_file_gb,
            "device_gb": units.memory(unit, batch) + data_gb,
            "source": f"{unit} at batch {batch}",
        }
    if rule in ("embed_images", "embed_captions"):
        unit = "embed:" + rule.split("_")[1]
        items = sizes["stimuli"] * (sizes["captions_per_image"] if rule == "embed_captions" else 1)
        table_gb = sizes["stimuli"] * (1 + n_aug) * 2 * embedding_gb
        return {
            "seconds": items * units.per_item(unit),
            "host_gb": host(unit) + table_gb,
            "device_gb": units.memory(unit),
            "source": f"{unit} x {items} items",
        }
    sources = 2 if config["evaluation"]["oracle"] else 1
    if rule == "reconstruct":
        images = test * sources
        return {
            "seconds": images * units.per_item("reconstruct"),
            "host_gb": host("reconstruct") + images * image_gb,
            "device_gb": units.memory("reconstruct"),
            "source": f"reconstruct x {images} images",
        }
    if rule in ("fid_generated", "fid_generated_oracle"):
        wanted = config["evaluation"]["fid_generated_images"]
        generated = test if wanted == "test_set" else int(wanted)
        fid = units.per_item("eval:inception_fid")
        seconds = (
            generated * (units.per_item("reconstruct") + fid) + test * fid + units.extra("eval:statistics")["fd_fid"]
        )
        return {
            "seconds": seconds,
            "host_gb": units.base("reconstruct") + units.base("eval:inception_fid") + (generated + test) * image_gb,
            "device_gb": units.memory("reconstruct") + units.memory("eval:inception_fid"),
            "source": f"reconstruct + eval:inception_fid x {generated} + {test} images",
        }
    if rule in ("evaluate_run", "score_external", "comparison_metrics"):
        # image sets scored: the run's brain and oracle; one external; at most every row of the
        # comparison scored again on the common images
        sources = {"evaluate_run": sources, "score_external": 1}.get(rule) or int(job["scored_sets"])
        ev = config["evaluation"]
        nets = [f"eval:{name}" for name in evaluation_networks(config) if f"eval:{name}" in units]
        if not nets:
            raise KeyError("no unit eval:* was measured")
        per_pair = sum(units.per_item(u) for u in nets)
        stats = units.extra("eval:statistics")
        fd = (ev["bootstrap_fd"] + 1) * (stats["fd_fid"] + stats["fd_clip"])
        seconds = sources * (2 * test * per_pair + fd + test * stats["pixels_8_pairs"] / 8)
        # the process before any network was built, and what each network adds at its peak
        interpreter = min(units.by_unit[u][0]["rss_base_gb"] for u in nets)
        host_gb = interpreter + sum(units.host(u) - units.by_unit[u][0]["rss_base_gb"] for u in nets)
        images_gb = 2 * test * 3 * ev["image_side"] ** 2 / GB
        return {
            "seconds": seconds,
            "host_gb": host_gb + images_gb,
            "device_gb": sum(units.memory(u) for u in nets),
            "source": f"{', '.join(nets)}, eval:statistics",
        }
    return {"seconds": None, "source": "light (tables, figures): not projected"}


def job_kind(job: Mapping[str, Any]) -> str:
    """The projection's row of a job: its rule, the mapper and loss batch of a mapper, the number of
    conditions of a fine-tuning."""
    from mindreader.names import get_variant

    w, kind = job["wildcards"], job["rule"]
    if kind == "train_mapper":
        kind += f" {w['mapper']}" + ("" if w["mapper"] == "ridge" else f" ({w['loss']})")
    elif kind == "finetune_generator":
        kind += f" ({get_variant(w['variant']).n_conditions} cond.)"
    return kind


def project(config: Mapping[str, Any], units: Units, jobs: list[Mapping[str, Any]]) -> list[dict]:
    """One row per kind of job (job_kind): count, projected seconds and memory, the asks
    (GB, minutes over all its planned attempts, GPUs), and flags."""
    rows = {}
    for job in jobs:
        res = {key: _ask(job["resources"].get(key)) for key in ("mem_mb", "gpu", "runtime")}
        ask = {
            "mem_gb": res["mem_mb"] / 1000 if res["mem_mb"] is not None else None,
            "gpus": res["gpu"] or 0,
            "minutes": res["runtime"] * int(job.get("attempts", 1)) if res["runtime"] is not None else None,
        }
        kind = job_kind(job)
        if kind not in rows:
            try:
                cost = job_cost(job, config, units)
            except KeyError as err:  # a unit it needs failed or was not measured
                cost = {"seconds": None, "source": f"not projected: {err.args[0]}"}
            if not ask["gpus"] and units.time_key == "wall_s":
                cost.pop("device_gb", None)  # a CPU job measured where it runs: host memory is all
            rows[kind] = {"kind": kind, "rule": job["rule"], "jobs": 0, **cost, "ask": ask}
        rows[kind]["jobs"] += 1
    for row in rows.values():
        row["hours"], row["how"] = job_hours(row, config, units)
        row["flags"] = flags(row)
    return list(rows.values())


def _ask(value: Any) -> int | None:
    """A resource as a dry run prints it, or as the rules give it: None where it is unknown (a
    dry run's <TBD>, a default from the input's size; absent)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def job_hours(row: Mapping[str, Any], config: Mapping[str, Any], units: Units) -> tuple[float | None, str]:
    """(wall hours of one job where it runs, how they were obtained), or (None, why not)."""
    if row.get("seconds") is None:
        return None, row.get("source", "light")
    if units.time_key == "wall_s":
        return row["seconds"] / 3600, "measured wall"
    if row["ask"]["gpus"] == 0:
        threads = config["mappers"]["threads"] if row["rule"] == "train_mapper" else 1
        return row["seconds"] / threads / 3600, f"CPU time / {threads} threads"
    if row.get("v100_seconds") is not None:
        return row["v100_seconds"] / 3600, "V100 via StyleGAN2-ADA's s/kimg"
    return None, "no GPU measurement"


def flags(row: Mapping[str, Any]) -> list[dict]:
    """Each ask below its projection: {"ask": "runtime" or "mem_mb", "text": what and by how much}."""
    out = []
    hours, ask = row.get("hours"), row["ask"]
    if hours is not None and ask["minutes"] is not None and hours * 60 > ask["minutes"]:
        out.append({"ask": "runtime", "text": f"runtime ask {ask['minutes']} min < {hours * 60:.0f} min projected"})
    if row.get("host_gb") is not None and ask["mem_gb"] is not None and row["host_gb"] > ask["mem_gb"]:
        out.append(
            {"ask": "mem_mb", "text": f"mem ask {row['ask']['mem_gb']:.1f} GB < {row['host_gb']:.1f} GB projected"}
        )
    return out


def stage_totals(rows: list[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per stage (STAGE_OF_RULE): GPU-hours (hours x jobs x GPUs of the GPU rules), hours of the
    CPU rules (hours x jobs), and hours of work on the measuring device (seconds x jobs); "total"
    last."""
    keys = ("gpu_hours", "cpu_job_hours", "work_hours")
    totals = collections.defaultdict(lambda: dict.fromkeys(keys, 0.0))
    for row in rows:
        if row.get("seconds") is None:
            continue
        total = totals[STAGE_OF_RULE.get(row["rule"], "report")]
        total["work_hours"] += row["seconds"] / 3600 * row["jobs"]
        if row.get("hours") is not None:
            key = "gpu_hours" if row["ask"]["gpus"] else "cpu_job_hours"
            total[key] += row["hours"] * row["jobs"] * max(row["ask"]["gpus"], 1)
    out = dict(totals)
    out["total"] = {key: sum(total[key] for total in totals.values()) for key in keys}
    return out


# --- tables (markdown lines) ---------------------------------------------------------------------


def _number(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def units_table(units: Units) -> list[str]:
    what = "CPU s" if units.time_key == "cpu_s" else "wall s"
    lines = [
        f"| unit | measured at batch | rule's batch | {what} | host peak GB | GPU peak GB | |",
        "|---|---|---|---|---|---|---|",
    ]
    for unit, points in units.by_unit.items():
        gpu = units.at(unit, "gpu_peak_gb") if units.on_gpu(unit) else None
        label = "measured" if units.measured(unit) else "projected"
        batches = ", ".join(str(p["batch"]) for p in sorted(points, key=lambda p: p["batch"]))
        lines.append(
            f"| {unit} | {batches} | {units.batches[unit]} | {units.seconds(unit):.3f} | "
            f"{units.host(unit):.2f} | {_number(gpu)} | {label} |"
        )
    stats = units.by_unit.get("eval:statistics")
    if stats:
        extra = stats[0]["extra"]
        lines += [
            "",
            f"eval:statistics: one Frechet distance at the test set's size: {extra['fd_fid']:.2f} CPU s ({FID_DIM}-d), "
            f"{extra['fd_clip']:.2f} CPU s (the CLIP metrics'); PixCorr + SSIM: {extra['pixels_8_pairs'] / 8:.3f} CPU s per pair",
        ]
    ridge = units.by_unit.get("ridge")
    if ridge:
        extra = ridge[0]["extra"]
        lines.append(
            f"ridge: measured at {extra['samples']} samples x {extra['voxels']} voxels (1/{extra['scale']} of the job's)"
        )
    return lines


def generator_table(units: Units, config: Mapping[str, Any]) -> list[str]:
    """A generator step per stage: its phases, the step with and without the lazy regularisers,
    s/kimg on its GPUs (and a one-V100 projection where the plain StyleGAN2 step was measured),
    peak memory."""
    gen = config["generator"]
    plain = stage_settings(config, "sg2ada")
    lines = [
        f"| stage | batch (per process x processes) | G main (of it: contrastive terms) | path length / {gen['pl_interval']} "
        f"| D main | R1 / {gen['r1_interval']} | mappers' phase | step without / with lazy regs | s/kimg | "
        "V100 s/kimg, one GPU (projected) | peak memory GB per phase |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for stage in (*STAGES, "sg2ada"):
        if f"gen:{stage}:Gmain" not in units or f"gen:{stage}:Dmain" not in units:
            continue
        settings = stage_settings(config, stage)
        s = {
            phase: units.seconds(f"gen:{stage}:{phase}") if f"gen:{stage}:{phase}" in units else None
            for phase in (*PHASES, MAPPER_PHASE)
        }
        contrastive = ""
        if f"gen:{stage}:Gplain" in units:
            contrastive = f" ({s['Gmain'] - units.seconds(f'gen:{stage}:Gplain'):.1f})"
        step = generator_step(units, stage, settings)
        v100 = "-"
        if "gen:sg2ada:Gmain" in units:
            v100 = f"{np.mean(SG2ADA_V100_S_PER_KIMG) * v100_ratio(units, stage, settings, plain):.1f}"
        greg = _number(s["Greg"] / gen["pl_interval"] if s["Greg"] is not None else None, 3)
        dreg = _number(s["Dreg"] / gen["r1_interval"] if s["Dreg"] is not None else None, 3)
        peaks = ", ".join(f"{phase} {units.memory(f'gen:{stage}:{phase}'):.2f}" for phase in units.phases(stage))
        processes = max(int(settings["gpus"]), 1)
        lines.append(
            f"| {stage} | {process_batch(settings)} x {processes} | {s['Gmain']:.3f}{contrastive} | {greg} | "
            f"{s['Dmain']:.3f} | {dreg} | {_number(s[MAPPER_PHASE], 3)} | "
            f"{generator_step(units, stage, settings, lazy=False):.3f} / {step:.3f} | "
            f"{s_per_kimg(units, stage, settings):.1f} | {v100} | {peaks} |"
        )
    return lines


def projection_table(rows: list[Mapping[str, Any]], units: Units) -> list[str]:
    on_cpu = units.time_key == "cpu_s"
    device = "device GB (from a CPU run: its peak RSS, an upper bound)" if on_cpu else "device GB"
    work = "CPU-hours of work (the measuring CPU)" if on_cpu else "GPU-hours (jobs x hours x GPUs)"
    lines = [
        f"| job | jobs | wall per job where it runs | how | {work} | host GB | {device} | ask: GB, min, GPUs | flags |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(STAGE_OF_RULE)
    for row in sorted(rows, key=lambda r: order.index(r["rule"]) if r["rule"] in order else len(order)):
        hours = row.get("hours")
        if on_cpu:
            worked = row["seconds"] / 3600 * row["jobs"] if row.get("seconds") is not None else None
        else:
            worked = hours * row["jobs"] * row["ask"]["gpus"] if hours is not None and row["ask"]["gpus"] else None
        ask = row["ask"]
        lines.append(
            f"| {row['kind']} | {row['jobs']} | {_number(hours, 3) + (' h' if hours is not None else '')} | "
            f"{row['how']} | {_number(worked)} | "
            f"{_number(row.get('host_gb'), 1)} | {_number(row.get('device_gb'), 1)} | "
            f"{_number(ask['mem_gb'], 0)}, {ask['minutes'] or '-'}, {ask['gpus']} | "
            f"{'; '.join(f['text'] for f in row['flags']) or 'ok'} |"
        )
    worked = "CPU-hours of work (the measuring CPU)" if on_cpu else "hours of work (the measuring device)"
    lines += ["", f"| stage | GPU-hours | hours of CPU jobs | {worked} |", "|---|---|---|---|"]
    for stage, total in stage_totals(rows).items():
        lines.append(
            f"| {stage} | {total['gpu_hours']:.2f} | {total['cpu_job_hours']:.2f} | {total['work_hours']:.2f} |"
        )
    return lines
