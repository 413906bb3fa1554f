"""Paper scale: one unit of work of every heavy rule at config/nsd.yaml's sizes, measured, and
every job of the paper's DAG on real NSD projected from those units, next to what the SLURM
profile asks for it.

Units (mindreader/scale/units.py, which rule preflight measures too: random weights of the real
architectures, built with the project's own builders; here each unit in its own subprocess, so
that its peak memory is its own):
- gen:{pretrain,finetune,e2e}:{Gmain,Greg,Dmain,Dreg}: one phase of a generator training step
  through Trainer.run_phase (G main with itc through CLIP ViT-B/32 and itd, path length on
  batch / pl_batch_shrink samples, D main, R1); gen:pretrain:Gplain is
  G main without the contrastive terms; gen:sg2ada:* a plain StyleGAN2 step at StyleGAN2-ADA's
  256 px "auto" config (channel base 16384, 2 mapping layers, no contrastive terms), built from
  our networks, whose published V100 speed (21.6-24.2 s/kimg, their README) anchors the GPU
  projection;
- mapper:{cnn,mlp}: one training step (forward, mapper_loss, backward, Adam) at subj01's
  15,724 voxels; ridge: fit_ridge with the config's alphas at NSD's N x voxels divided by
  --ridge-scale (time scales as its cube, memory as its square; fit_ridge against RidgeCV:
  bench/mappers.py);
- reconstruct: generate_images of G_ema; embed:images (ViT-B/32 with the config's augmented
  views) and embed:captions (its text tower); eval:{network}: a batch of 425 px images through
  each feature network; eval:statistics: one bootstrap Frechet distance at 982 test images, FID's
  2048 and CLIP ViT-L/14's 768 dimensions, and PixCorr + SSIM per image pair.

On the CPU every batched unit runs at two reduced batches; time is extrapolated to the paper's
batch in proportion to the batch and memory as a + b * batch (printed as "projected"). With
--device cuda each runs once at the paper's batch ("measured"). Host memory is the process's
peak RSS (VmHWM, reset before the unit); GPU memory torch's peak allocation.

Projection (mindreader/scale/project.py, as rule preflight projects): the jobs a dry run of config/nsd.yaml through profiles/slurm plans (on an empty NSD
tree), each priced from the units and its step counts (kimg / batch, epochs x batches, images),
with its data held in memory; asks come from that dry run (mem_mb, runtime, gpu) and the rule's
retries from the parsed workflow; a flag marks every ask below its projection.

Usage: .venv/bin/python bench/paper_scale.py [--device cpu|cuda] [--threads T] [--units PREFIX,..]
       [--ridge-scale S] [--json OUT] [--from-json IN] [--saved-tensors]
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from mindreader.names import TRAINING_RULES
from mindreader.scale import units as scale
from mindreader.scale.memory import rss_mb
from mindreader.scale.project import (
    Units,
    generator_table,
    project,
    projection_table,
    units_table,
)

REPO = Path(__file__).resolve().parents[1]
# The paper's dry run as tests/test_workflow_lint.py plans it (empty NSD tree, profile without conda).
sys.path.insert(0, str(REPO / "tests"))


def paper_config() -> dict:
    """config/nsd.yaml over config/config.yaml, as `--configfile config/nsd.yaml` merges them."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "config" / "nsd.yaml").read_text()))
    return config


# Unit name -> batches measured on this device (the rule's batch: scale.rule_batches).
def unit_batches(config: dict, device: torch.device) -> dict[str, tuple[int, ...]]:
    paper = scale.rule_batches(config)
    cpu = device.type == "cpu"
    out = {}
    for stage in (*scale.STAGES, "sg2ada"):
        for phase in scale.stage_phases(config, stage) + (("Gplain",) if stage == "pretrain" else ()):
            out[f"gen:{stage}:{phase}"] = (2, 4) if cpu else (paper[f"gen:{stage}:{phase}"],)
    for kind in ("cnn", "mlp"):
        out[f"mapper:{kind}"] = {"cnn": (8, 32), "mlp": (32, 128)}[kind] if cpu else (paper[f"mapper:{kind}"],)
    out["ridge"] = (1,)
    out["reconstruct"] = (4, 16) if cpu else (paper["reconstruct"],)
    out["embed:images"] = (4, 16) if cpu else (paper["embed:images"],)
    out["embed:captions"] = (64, 256) if cpu else (paper["embed:captions"],)
    for name in scale.evaluation_networks(config):
        out[f"eval:{name}"] = (8, 32) if cpu else (paper[f"eval:{name}"],)
    out["eval:statistics"] = (1,)
    return out


def run_unit(name: str, n: int, device: torch.device, ridge_scale: int) -> dict:
    """Build and measure one unit in this process (the child side)."""
    config = paper_config()
    base = rss_mb() / 1024
    if name == "ridge":
        device = torch.device("cpu")  # the ridge jobs ask for no GPU
    work, extra = scale.build_unit(name, config, n, device, ridge_scale=ridge_scale)
    repeats = 3 if device.type == "cuda" else 1
    result = scale.measure(work, device, repeats)
    return {
        "unit": name,
        "batch": n,
        "device": scale.describe_device(device),
        "rss_base_gb": base,
        **result,
        "extra": extra,
    }


def run_child(name: str, n: int, args) -> dict:
    command = [sys.executable, __file__, "--child", name, "--batch", str(n), "--device", args.device]
    command += ["--threads", str(args.threads), "--ridge-scale", str(args.ridge_scale)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode != 0:
        return {"unit": name, "batch": n, "error": child.stderr.strip().splitlines()[-1:]}
    return json.loads(child.stdout.strip().splitlines()[-1])


# --- where the memory of a generator phase goes ---------------------------------------------


def saved_tensors_by_module(name: str, n: int, device: torch.device, top: int = 12) -> dict:
    """Bytes of the tensors autograd keeps for backward in one generator phase (each storage once,
    weights left out), by the module that saved them; tensors saved outside any module are the
    loss terms' and, for R1 and path length, those of the gradient graph kept for the second
    backward."""
    from mindreader.generator.networks import block_dtypes

    config = paper_config()
    _, stage, phase = name.split(":")
    works, trainer = scale.generator_phases(config, stage, n, device, plain=phase == "Gplain")
    work = works["Gmain" if phase == "Gplain" else phase]
    names = {}
    for root, module in (("G", trainer.G), ("D", trainer.D), ("M", trainer.mappers)):
        for path, sub in module.named_modules() if module is not None else ():
            names[id(sub)] = ".".join([root, *path.split(".")[:3]]).rstrip(".")
    if trainer.loss.encoder is not None:
        for sub in trainer.loss.encoder.modules():
            names[id(sub)] = "CLIP image tower"
    stack = []
    by_module = collections.Counter()
    # Weights are saved for backward too, but are held anyway: count only what the step adds.
    modules = [trainer.G, trainer.D, trainer.mappers, trainer.loss.encoder]
    seen = {t.untyped_storage().data_ptr() for m in modules if m is not None for t in [*m.parameters(), *m.buffers()]}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            by_module[stack[-1] if stack else "outside modules"] += storage.nbytes()
        return tensor

    def enter(module, inputs):
        stack.append(names.get(id(module), stack[-1] if stack else "outside modules"))

    def leave(module, inputs, output):
        stack.pop()

    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(enter),
        torch.nn.modules.module.register_module_forward_hook(leave),
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            work()
    finally:
        for handle in handles:
            handle.remove()
    total = sum(by_module.values())
    # On a GPU the top num_fp16_res resolutions compute in reduced precision: their share halves.
    gen = config["generator"]
    dtypes = block_dtypes(
        trainer.G.synthesis.block_resolutions, gen["resolution"], gen["num_fp16_res"], gen["precision"]
    )
    reduced = sum(
        size
        for module, size in by_module.items()
        if (match := re.search(r"\.b(\d+)\b", module)) and dtypes[int(match.group(1))] != torch.float32
    )
    return {
        "unit": name,
        "batch": n,
        "total_gb": total / 2**30,
        "reduced_precision_share": reduced / total,
        "top": [(module, size / 2**30) for module, size in by_module.most_common(top)],
    }


# --- projection of the paper's DAG -------------------------------------------------------------


def paper_plan() -> list[dict]:
    """The jobs of the paper's dry run through profiles/slurm (on an empty NSD tree, every weights
    file present), each with the jobs its rule plans for it (training: one per cluster.max_runtime
    of its projected length, the rule's retries in the parsed workflow, plus one)."""
    from conftest import parse_workflow
    from test_workflow_lint import NSD_CONFIG, paper_dry_run, planned_jobs

    with tempfile.TemporaryDirectory() as tmp:
        result = paper_dry_run(Path(tmp))
    if result.returncode != 0:
        raise RuntimeError(f"the dry run of config/nsd.yaml failed:\n{result.stderr[-3000:]}")
    retries = {rule.name: int(rule._restart_times or 0) for rule in parse_workflow(NSD_CONFIG).rules}
    jobs = planned_jobs(result.stdout)
    for job in jobs:
        job["attempts"] = retries.get(job["rule"], 0) + 1 if job["rule"] in TRAINING_RULES else 1
    return jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads of each unit")
    parser.add_argument("--units", default="", help="comma-separated unit name prefixes to measure (default: all)")
    parser.add_argument(
        "--ridge-scale", type=int, default=None, help="ridge at 1/S of N and voxels (default 2 on the CPU, 1 on CUDA)"
    )
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument(
        "--from-json", type=Path, nargs="*", help="project from these measurements instead of measuring"
    )
    parser.add_argument("--saved-tensors", action="store_true", help="where a generator phase's memory goes, by module")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.ridge_scale = args.ridge_scale or (1 if device.type == "cuda" else 2)
    if args.child:
        print(json.dumps(run_unit(args.child, args.batch, device, args.ridge_scale)))
        return
    config = paper_config()
    if args.saved_tensors:
        for phase in ("Gmain", "Gplain", "Greg", "Dmain", "Dreg"):
            result = saved_tensors_by_module(f"gen:pretrain:{phase}", 2, device)
            print(
                f"\ngen:pretrain:{phase} at batch 2: {result['total_gb']:.2f} GB saved for backward, "
                f"{result['reduced_precision_share']:.0%} of it in the blocks that compute in fp16 on a GPU"
            )
            for module, gb in result["top"]:
                print(f"  {module:32s} {gb * 1024:8.0f} MB")
        return
    if args.from_json:
        results = [r for path in args.from_json for r in json.loads(path.read_text())]
    else:
        prefixes = [p for p in args.units.split(",") if p]
        results = []
        for unit, measured in unit_batches(config, device).items():
            if prefixes and not any(unit.startswith(p) for p in prefixes):
                continue
            for n in measured:
                results.append(run_child(unit, n, args))
                r = results[-1]
                print(
                    f"{unit} batch {n}: "
                    + (
                        f"error {r['error']}"
                        if "error" in r
                        else f"{r['wall_s']:.2f} s wall, {r['cpu_s']:.2f} s CPU, host {r['rss_before_gb']:.2f} -> {r['rss_peak_gb']:.2f} GB"
                        + (f", GPU {r['gpu_peak_gb']:.2f} GB" if r["gpu_peak_gb"] is not None else "")
                    ),
                    flush=True,
                )
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    devices = sorted({r["device"] for r in results if "device" in r})
    print(f"\nmeasured on: {'; '.join(devices)}")
    on_gpu = any(r.get("gpu_peak_gb") is not None for r in results)
    units = Units(results, scale.rule_batches(config), "wall_s" if on_gpu else "cpu_s")
    what = "wall s" if on_gpu else "CPU s"
    print(f"\n## Units at the rule's batch ({what}; projected: time per image x batch, memory a + b * batch)\n")
    print("\n".join(units_table(units)))
    if "gen:pretrain:Gmain" in units:
        shrink = config["generator"]["pl_batch_shrink"]
        print(f"\n## Generator step per process (path length on 1 of {shrink} of its samples)\n")
        print("\n".join(generator_table(units, config)))
    needed = {
        "gen:pretrain:Gmain",
        "gen:finetune:Gmain",
        "gen:e2e:Gmain",
        "mapper:cnn",
        "mapper:mlp",
        "ridge",
        "reconstruct",
        "embed:images",
        "embed:captions",
        "eval:statistics",
    }
    if needed <= set(units.by_unit):
        print("\n## The paper's DAG on real NSD, projected (asks from profiles/slurm)\n")
        print("\n".join(projection_table(project(config, units, paper_plan()), units)))
        if not on_gpu:
            print(
                "\nGPU-hours from a CPU run: generator training only, from StyleGAN2-ADA's published V100 s/kimg times "
                "the ratio of our step to its auto config's step measured here; the other GPU rules need --device cuda."
            )
    else:
        print(f"\nno projection: units missing: {sorted(needed - set(units.by_unit))}")


if __name__ == "__main__":
    main()
