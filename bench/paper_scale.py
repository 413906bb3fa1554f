"""Paper scale: one unit of work of every heavy rule at config/nsd.yaml's sizes, measured, and
every job of the paper's DAG on real NSD projected from those units, next to what the SLURM
profile asks for it.

Units (random weights of the real architectures, built with the project's own builders; each
unit in its own subprocess, so that its peak memory is its own):
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

Projection: the jobs a dry run of config/nsd.yaml through profiles/slurm plans (on an empty NSD
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
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import unittest.mock
from pathlib import Path

import numpy as np
import torch
import yaml

from prepare import ROI_VOXELS, VOLUME, peak_rss_mb

REPO = Path(__file__).resolve().parents[1]
# The paper's dry run as tests/test_workflow_lint.py plans it (empty NSD tree, profile without conda).
sys.path.insert(0, str(REPO / "tests"))

# Real NSD at 37 sessions (docs: nsd-format.md; config/nsd.yaml): per subject 8,859 training
# and 982 test images (the shared ones), 750 trials a session, ~5 COCO captions an image.
TRAIN_IMAGES = 8859
TEST_IMAGES = 982
TRIALS_PER_SESSION = 750
CAPTIONS_PER_IMAGE = 5
# StyleGAN2-ADA's README: 256 x 256 at its auto config on one V100, 21.6-24.2 s/kimg, 5.0 GB.
SG2ADA_V100_S_PER_KIMG = (21.6, 24.2)
SG2ADA = {"channel_base": 16384, "mapping_layers": 2, "itc": 0.0, "itd": 0.0}
PHASES = ("Gmain", "Greg", "Dmain", "Dreg")
STAGES = ("pretrain", "finetune", "e2e")
EVAL_NETWORKS = ("inception_fid", "alexnet", "inception_v3", "efficientnet_b1", "swav", "clip")


def paper_config() -> dict:
    """config/nsd.yaml over config/config.yaml, as `--configfile config/nsd.yaml` merges them."""
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "config" / "nsd.yaml").read_text()))
    return config


# --- measuring one unit -----------------------------------------------------------------------


def rss_gb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def reset_peak_rss() -> None:
    """VmHWM back to the current RSS (Linux: writing 5 to clear_refs), so the next peak is the unit's."""
    Path("/proc/self/clear_refs").write_text("5")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(work, device: torch.device, repeats: int) -> dict:
    """Wall and CPU seconds per call of ``work``, and the peaks of host RSS and GPU memory."""
    if device.type == "cuda":
        work()  # warm-up: kernels, cuDNN autotuning, allocator pools
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    before = rss_gb()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        work()
    sync(device)
    wall, cpu = (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_before_gb": before,
        "rss_peak_gb": peak_rss_mb() / 1024,
        "gpu_peak_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


# --- units: each returns a function doing one unit of work, built outside the measurement ----


def voxel_xyz() -> np.ndarray:
    """Coordinates of an nsdgeneral-sized ROI in subj01's volume (the cnn orders its input by them)."""
    from mindreader.synth.brain import make_anatomy

    # make_anatomy's ROI is the brain nearest the back, within 8 % of the size asked: take exactly
    # ROI_VOXELS brain voxels from the back
    brain = np.argwhere(make_anatomy(np.random.default_rng(0), VOLUME, ROI_VOXELS) >= 0)
    return brain[np.argsort(brain[:, 1], kind="stable")[:ROI_VOXELS]].astype(np.int32)


def random_clip(model: str, weights_name: str, device: torch.device):
    """open_clip's architecture with random weights, loaded through the project's create_frozen_clip."""
    import open_clip
    from safetensors.torch import save_file

    from mindreader.clip.models import create_frozen_clip
    from mindreader.weights import get_spec

    state = open_clip.create_model(model, load_weights=False).state_dict()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        return create_frozen_clip(model, path, get_spec(weights_name).preprocess, device)


def random_feature_network(name: str, device: torch.device):
    """An evaluation network of the real architecture with random weights (build_network's path)."""
    from mindreader.evaluation.networks import FID_NETWORK, SPECS, build_network

    if name == FID_NETWORK:
        from pytorch_fid import inception as fid_inception

        # pytorch-fid's own architecture, left at its random initialisation instead of downloading
        with unittest.mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *a, **k: {}):
            with unittest.mock.patch.object(torch.nn.Module, "load_state_dict", lambda *a, **k: None):
                state = fid_inception.fid_inception_v3().state_dict()
    else:
        state = SPECS[name].build().state_dict()
    return build_network(name, state).to(device)


def generator_unit(config: dict, stage: str, phase: str, n: int, device: torch.device):
    """One phase of a training step of ``stage`` at batch ``n`` (path length: n / pl_batch_shrink), as Trainer runs it."""
    from mindreader.generator.conditioning import get_variant
    from mindreader.generator.data import TrainingSet
    from mindreader.generator.stages import ClipImageEncoder, build, loss_config, train_config
    from mindreader.generator.training import Trainer
    from mindreader.mappers.models import build_mapper

    cfg = dict(config["generator"])
    if stage == "sg2ada":
        cfg.update(SG2ADA)
    variant = get_variant(config["ablations"]["main"]["variant"])
    k = variant.n_conditions if stage in ("finetune", "e2e") else 1
    clip = config["clip"]
    c_dim = 512
    encoder = None
    if cfg["itc"] > 0 and phase != "Gplain":
        encoder = ClipImageEncoder(random_clip(clip["model"], clip["weights_name"], device))
        c_dim = encoder.clip.embed_dim
    G, D, _, _ = build(cfg, c_dim, k, variant.fusion if k > 1 else "max", 0)
    size = max(n, 4)
    g = torch.Generator().manual_seed(0)
    res = cfg["resolution"]
    data = dict(
        images=torch.randint(0, 256, (size, 3, res, res), dtype=torch.uint8, generator=g),
        image_index=torch.arange(size),
        nsd_id=np.arange(size),
    )
    mappers = None
    if stage == "e2e":
        kind = config["ablations"]["main"]["mapper"]
        xyz = voxel_xyz()
        mappers = torch.nn.ModuleList(build_mapper(kind, len(xyz), c_dim, config["mappers"], xyz) for _ in range(k))
        data.update(betas=torch.randn(size, len(xyz), generator=g), target=torch.randn(size, k, c_dim, generator=g))
    else:
        data.update(cond=torch.randn(size, 1, k, c_dim, generator=g))
    signal = cfg["pretrain" if stage in ("pretrain", "sg2ada") else "finetune"]["signal_weight"]
    loss_cfg = loss_config(cfg, signal)
    if phase == "Gplain":
        loss_cfg.itc = loss_cfg.itd = 0.0
    schedule = train_config(cfg, 1.0, 0, initialised=stage != "pretrain")
    never_written = Path(tempfile.gettempdir()) / "paper_scale_no_checkpoints"  # a unit saves no checkpoint
    trainer = Trainer(
        G, D, TrainingSet(**data), loss_cfg, schedule, never_written, device, encoder=encoder, mappers=mappers
    )
    # Adam's moments exist in a running job: make them with one zero-gradient step (no change).
    for group, optimizer in {"G": trainer.opt_G, "D": trainer.opt_D, "M": trainer.opt_M}.items():
        if optimizer is not None:
            params = trainer.group_params(group)
            for p in params:
                p.grad = torch.zeros_like(p)
            optimizer.step()
            for p in params:
                p.grad = None
    phases = {p.name: p for p in trainer.phases}
    chosen = phases["Gmain" if phase == "Gplain" else phase]
    batch = trainer.data.batch(torch.arange(n), device)
    return (lambda: trainer.run_phase(chosen, batch, 0)), trainer


def mapper_unit(config: dict, kind: str, n: int, device: torch.device):
    from mindreader.mappers.losses import mapper_loss
    from mindreader.mappers.models import build_mapper

    cfg = config["mappers"]
    loss = config["ablations"]["main"]["loss"]
    xyz = voxel_xyz()
    torch.manual_seed(0)
    model = build_mapper(kind, len(xyz), 512, cfg, xyz).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["train"]["lr"], weight_decay=cfg["train"]["weight_decay"])
    x = torch.randn(n, len(xyz), device=device)
    y = torch.nn.functional.normalize(torch.randn(n, 512, device=device), dim=1)

    def step():
        terms = mapper_loss(loss, model(x), y, cfg)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()

    return step


def training_trials(config: dict) -> int:
    """Training samples of a subject (single trials: its sessions' trials less the test images' share)."""
    trials = config["prepare"]["sessions"] * TRIALS_PER_SESSION
    if config["prepare"]["train_repeats"] == "average":
        return TRAIN_IMAGES
    return round(trials * TRAIN_IMAGES / (TRAIN_IMAGES + TEST_IMAGES))


def ridge_unit(config: dict, scale: int, device: torch.device):
    from mindreader.mappers.data import validation_mask
    from mindreader.mappers.ridge import fit_ridge

    n, v = training_trials(config) // scale, ROI_VOXELS // scale
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, v, generator=g)
    y = torch.randn(n, 512, generator=g)
    images = np.arange(n) * TRAIN_IMAGES // n
    val = torch.from_numpy(validation_mask(images, config["mappers"]["train"]["val_fraction"], seed=0))
    ridge = config["mappers"]["ridge"]
    return lambda: fit_ridge(x, y, val, list(ridge["alphas"]), dtype=getattr(torch, ridge["dtype"]))


def reconstruct_unit(config: dict, n: int, device: torch.device):
    from mindreader.generator.conditioning import get_variant
    from mindreader.generator.reconstruct import generate_images
    from mindreader.generator.stages import build

    variant = get_variant(config["ablations"]["main"]["variant"])
    G, _, _, _ = build(config["generator"], 512, variant.n_conditions, variant.fusion, 0)
    G.to(device)
    c = torch.nn.functional.normalize(torch.randn(n, variant.n_conditions, 512), dim=-1)
    rec = config["generator"]["reconstruct"]
    return lambda: generate_images(G, c, rec["z_policy"], rec["seed"], device, n)


def stimuli(n: int, side: int = 425) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def embed_images_unit(config: dict, n: int, device: torch.device):
    from mindreader.clip.embed import TargetAugmentation, embed_image_batches

    clip_cfg = config["clip"]
    clip = random_clip(clip_cfg["model"], clip_cfg["weights_name"], device)
    images = stimuli(n)
    augmentation = TargetAugmentation(**clip_cfg["augment"])
    return lambda: embed_image_batches(clip, [(np.arange(n), images)], n, int(clip_cfg["n_aug"]), augmentation)


def embed_captions_unit(config: dict, n: int, device: torch.device):
    from mindreader.clip.screening import embed_texts

    clip_cfg = config["clip"]
    clip = random_clip(clip_cfg["model"], clip_cfg["weights_name"], device)
    texts = [f"a photo of {i} people standing next to a large red bus on a city street" for i in range(n)]
    return lambda: embed_texts(clip, texts, n)


def eval_network_unit(config: dict, name: str, n: int, device: torch.device):
    from mindreader.evaluation.battery import BatteryConfig, extract_features

    if name == "clip":
        clip_cfg = config["evaluation"]["clip"]
        clip = random_clip(clip_cfg["model"], clip_cfg["weights_name"], device)
        sources = {"clip": lambda x: {"clip": clip.encode_images(x)}}
    else:
        sources = {name: random_feature_network(name, device)}
    ev = config["evaluation"]
    cfg = BatteryConfig(1, 1, n, ev["image_side"], ev["retrieval_pool"], ev["retrieval_draws"], 0, ("paired",))
    images = stimuli(n, ev["image_side"])
    return lambda: extract_features(sources, images, cfg, device, "ground truth")


def eval_statistics_unit(config: dict, device: torch.device):
    """One bootstrap resample of each Frechet distance at the test set's size, and PixCorr + SSIM
    of 8 image pairs (the job does n_bootstrap_fd + 1 of the former per FD metric, and one of the
    latter per test image)."""
    from mindreader import metrics

    rng = np.random.default_rng(0)
    fid_a, fid_b = rng.random((2, TEST_IMAGES, 2048), dtype=np.float32)
    clip_a, clip_b = rng.standard_normal((2, TEST_IMAGES, 768), dtype=np.float32)
    gt, rec = stimuli(8), stimuli(8, config["generator"]["resolution"])
    side = config["evaluation"]["image_side"]
    timings = {}

    def work():
        for name, fn in (
            ("fd_2048", lambda: metrics.frechet_distance_features(fid_a, fid_b)),
            ("fd_768", lambda: metrics.frechet_distance_features(clip_a, clip_b)),
            (
                "pixels_8_pairs",
                lambda: (metrics.pixcorr_per_image(gt, rec, side), metrics.ssim_per_image(gt, rec, side)),
            ),
        ):
            start = time.process_time()
            fn()
            timings[name] = time.process_time() - start

    return work, timings


# Unit name prefix -> (builder, batches on the CPU, the paper's batch from the config).
def unit_batches(config: dict, device: torch.device) -> dict[str, tuple[tuple[int, ...], int]]:
    gen = config["generator"]
    cpu = device.type == "cpu"
    out = {}
    for stage in (*STAGES, "sg2ada"):
        for phase in PHASES + (("Gplain",) if stage == "pretrain" else ()):
            out[f"gen:{stage}:{phase}"] = ((2, 4) if cpu else (gen["batch"],), gen["batch"])
    for kind in ("cnn", "mlp"):
        paper = config["mappers"]["train"]["batch_size"]
        out[f"mapper:{kind}"] = (({"cnn": (8, 32), "mlp": (32, 128)}[kind] if cpu else (paper,)), paper)
    out["ridge"] = ((1,), 1)
    out["reconstruct"] = ((4, 16) if cpu else (gen["reconstruct"]["batch"],), gen["reconstruct"]["batch"])
    out["embed:images"] = ((4, 16) if cpu else (config["clip"]["batch_size"],), config["clip"]["batch_size"])
    out["embed:captions"] = ((64, 256) if cpu else (config["clip"]["batch_size"],), config["clip"]["batch_size"])
    for name in EVAL_NETWORKS:
        paper = config["evaluation"]["batch_size"]
        out[f"eval:{name}"] = ((8, 32) if cpu else (paper,), paper)
    out["eval:statistics"] = ((1,), 1)
    return out


def run_unit(name: str, n: int, device: torch.device, ridge_scale: int) -> dict:
    """Build and measure one unit in this process (the child side)."""
    config = paper_config()
    base = rss_gb()
    kind, _, rest = name.partition(":")
    extra = {}
    if kind == "gen":
        stage, phase = rest.split(":")
        work, _ = generator_unit(config, stage, phase, n, device)
    elif kind == "mapper":
        work = mapper_unit(config, rest, n, device)
    elif kind == "ridge":
        work = ridge_unit(config, ridge_scale, device)
        extra = {
            "scale": ridge_scale,
            "samples": training_trials(config) // ridge_scale,
            "voxels": ROI_VOXELS // ridge_scale,
        }
    elif kind == "reconstruct":
        work = reconstruct_unit(config, n, device)
    elif name == "embed:images":
        work = embed_images_unit(config, n, device)
    elif name == "embed:captions":
        work = embed_captions_unit(config, n, device)
    elif name == "eval:statistics":
        work, extra = eval_statistics_unit(config, device)
    elif kind == "eval":
        work = eval_network_unit(config, rest, n, device)
    else:
        raise ValueError(f"unknown unit {name}")
    repeats = 3 if device.type == "cuda" and kind not in ("ridge",) else 1
    result = measure(work, device, repeats)
    return {"unit": name, "batch": n, "device": describe_device(device), "rss_base_gb": base, **result, "extra": extra}


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{models[0] if models else 'CPU'}, {torch.get_num_threads()} threads of {os.cpu_count()} cores"


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
    work, trainer = generator_unit(config, stage, phase, n, device)
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
    """The measurements, with their values at the paper's batch."""

    def __init__(self, results: list[dict], batches: dict, device_type: str):
        self.by_unit = collections.defaultdict(list)
        for r in results:
            if "error" not in r:
                self.by_unit[r["unit"]].append(r)
        self.batches = batches
        self.time_key = "wall_s" if device_type == "cuda" else "cpu_s"

    def __contains__(self, unit: str) -> bool:
        return unit in self.by_unit

    def at(self, unit: str, key: str, batch: int | None = None) -> float:
        value, _ = fit(self.by_unit[unit], key, batch or self.batches[unit][1])
        return value

    def seconds(self, unit: str, batch: int | None = None) -> float:
        return self.at(unit, self.time_key, batch)

    def per_item(self, unit: str) -> float:
        """Seconds per image (caption) at the paper's batch."""
        return self.seconds(unit) / self.batches[unit][1]

    def memory(self, unit: str, batch: int | None = None) -> float:
        return self.at(unit, "gpu_peak_gb" if self.time_key == "wall_s" else "rss_peak_gb", batch)

    def host(self, unit: str, batch: int | None = None) -> float:
        return self.at(unit, "rss_peak_gb", batch)

    def base(self, unit: str) -> float:
        """Host memory with the unit's networks built, before its work."""
        return self.at(unit, "rss_before_gb")

    def measured(self, unit: str) -> bool:
        return fit(self.by_unit[unit], self.time_key, self.batches[unit][1])[1]


def generator_step(units: Units, stage: str, gen: dict, lazy: bool = True) -> float:
    """Seconds of one training step of ``stage``: every phase at its interval."""
    seconds = units.seconds(f"gen:{stage}:Gmain") + units.seconds(f"gen:{stage}:Dmain")
    if lazy:
        seconds += units.seconds(f"gen:{stage}:Greg") / gen["pl_interval"]
        seconds += units.seconds(f"gen:{stage}:Dreg") / gen["r1_interval"]
    return seconds


def generator_peak(units: Units, stage: str, host: bool) -> float:
    return max((units.host if host else units.memory)(f"gen:{stage}:{phase}") for phase in PHASES)


def nsd_counts(config: dict) -> dict:
    subjects = len(config["subjects"])
    trials = training_trials(config)
    stimuli = subjects * TRAIN_IMAGES + TEST_IMAGES
    return {
        "stimuli": stimuli,  # every image the subjects saw (embed_images)
        "pretrain_images": stimuli - TEST_IMAGES,
        "train_trials": trials,
        "val_trials": round(trials * config["mappers"]["train"]["val_fraction"]),
    }


def job_cost(job: dict, config: dict, units: Units) -> dict:
    """Projected seconds (on the measuring device; CPU seconds on the CPU), memory in GB (host
    and, for a GPU rule, device), and where the figure comes from."""
    from mindreader.generator.conditioning import get_variant
    from mindreader.mappers.losses import uses_contrastive

    rule, w = job["rule"], job["wildcards"]
    gen, counts = config["generator"], nsd_counts(config)
    res = gen["resolution"]
    image_gb = 3 * res * res / 2**30
    betas_gb = ROI_VOXELS * 4 / 2**30
    embedding_gb = 512 * 4 / 2**30
    n_aug = int(config["clip"]["n_aug"])
    if rule == "prepare_subject":
        # bench/prepare.py (README): 5.0-5.2 CPU-s per full-size session, 0.22 GB peak, plus the
        # averaged test samples' float32 sums
        return {
            "seconds": 5.2 * config["prepare"]["sessions"],
            "host_gb": 0.22 + TEST_IMAGES * betas_gb,
            "source": "bench/prepare.py",
        }
    if rule in ("pretrain_generator", "finetune_generator", "finetune_e2e"):
        if rule == "pretrain_generator":
            stage, kimg = "pretrain", gen["pretrain"]["kimg"]
            data_gb = counts["pretrain_images"] * image_gb + counts["pretrain_images"] * embedding_gb
        else:
            k = get_variant(w["variant"]).n_conditions
            stage = "e2e" if rule == "finetune_e2e" else ("finetune" if k > 1 else "pretrain")
            kimg = gen["finetune"]["kimg"]
            data_gb = TRAIN_IMAGES * image_gb + counts["train_trials"] * k * embedding_gb
            if stage == "e2e":
                data_gb += counts["train_trials"] * betas_gb
        steps = math.ceil(kimg * 1000 / gen["batch"])
        out = {
            "seconds": steps * generator_step(units, stage, gen),
            "host_gb": generator_peak(units, stage, True) + data_gb,
            "device_gb": generator_peak(units, stage, False),
            "source": f"gen:{stage}:* x {steps} steps",
        }
        if "gen:sg2ada:Gmain" in units:
            ratio = generator_step(units, stage, gen) / generator_step(units, "sg2ada", gen)
            out["v100_seconds"] = kimg * np.mean(SG2ADA_V100_S_PER_KIMG) * ratio
        if units.time_key == "cpu_s":  # a GPU job's host memory: the process with its networks, and the data
            out["host_gb"] = max(units.base(f"gen:{stage}:{phase}") for phase in PHASES) + data_gb
        return out
    if rule == "train_mapper":
        if w["mapper"] == "ridge":
            unit = "ridge"
            scale = units.by_unit[unit][0]["extra"]["scale"]
            base, peak = units.base(unit), units.host(unit)
            return {
                "seconds": units.seconds(unit) * scale**3,
                "host_gb": base + (peak - base) * scale**2,
                "source": f"ridge at 1/{scale} of N and voxels, x{scale}^3 time, x{scale}^2 memory",
            }
        unit = f"mapper:{w['mapper']}"
        train = config["mappers"]["train"]
        batch = train["batch_size"] if uses_contrastive(w["loss"]) else train["batch_size_plain"]
        n_fit = counts["train_trials"] - counts["val_trials"]
        step = units.seconds(unit, batch)
        # validation: forward only, a third of a training step's work
        seconds = train["epochs"] * (math.ceil(n_fit / batch) + math.ceil(counts["val_trials"] / batch) / 3) * step
        data_gb = (counts["train_trials"] + TEST_IMAGES) * betas_gb + TRAIN_IMAGES * (1 + n_aug) * embedding_gb
        host = units.base(unit) if units.time_key == "cpu_s" else units.host(unit, batch)
        return {
            "seconds": seconds,
            "host_gb": host + data_gb,
            "device_gb": units.memory(unit, batch) + data_gb,
            "source": f"{unit} at batch {batch}",
        }
    if rule in ("embed_images", "embed_captions"):
        unit = "embed:" + rule.split("_")[1]
        items = counts["stimuli"] * (CAPTIONS_PER_IMAGE if rule == "embed_captions" else 1)
        table_gb = counts["stimuli"] * (1 + n_aug) * 2 * embedding_gb
        host = units.base(unit) if units.time_key == "cpu_s" else units.host(unit)
        return {
            "seconds": items * units.per_item(unit),
            "host_gb": host + table_gb,
            "device_gb": units.memory(unit),
            "source": f"{unit} x {items} items",
        }
    sources = 2 if config["evaluation"]["oracle"] else 1
    if rule == "reconstruct":
        images = TEST_IMAGES * sources
        host = units.base("reconstruct") if units.time_key == "cpu_s" else units.host("reconstruct")
        return {
            "seconds": images * units.per_item("reconstruct"),
            "host_gb": host + images * image_gb,
            "device_gb": units.memory("reconstruct"),
            "source": f"reconstruct x {images} images",
        }
    if rule in ("fid_generated", "fid_generated_oracle"):
        seconds = TEST_IMAGES * (units.per_item("reconstruct") + 2 * units.per_item("eval:inception_fid"))
        stats = units.by_unit["eval:statistics"][0]["extra"]
        seconds += stats["fd_2048"]
        host = units.base("reconstruct") + units.base("eval:inception_fid") + 2 * TEST_IMAGES * image_gb
        return {
            "seconds": seconds,
            "host_gb": host,
            "device_gb": units.memory("reconstruct") + units.memory("eval:inception_fid"),
            "source": f"reconstruct + eval:inception_fid x {TEST_IMAGES} images",
        }
    if rule == "evaluate_run":
        ev = config["evaluation"]
        stats = units.by_unit["eval:statistics"][0]["extra"]
        per_pair = sum(units.per_item(f"eval:{name}") for name in EVAL_NETWORKS)
        fd = (ev["bootstrap_fd"] + 1) * (stats["fd_2048"] + stats["fd_768"])
        seconds = sources * (2 * TEST_IMAGES * per_pair + fd + TEST_IMAGES * stats["pixels_8_pairs"] / 8)
        nets = [f"eval:{name}" for name in EVAL_NETWORKS]
        interpreter = min(units.by_unit[u][0]["rss_base_gb"] for u in nets)
        host = interpreter + sum(units.host(u) - units.by_unit[u][0]["rss_base_gb"] for u in nets)
        images_gb = 2 * TEST_IMAGES * 3 * ev["image_side"] ** 2 / 2**30
        return {
            "seconds": seconds,
            "host_gb": host + images_gb,
            "device_gb": sum(units.memory(u) for u in nets),
            "source": "eval:* networks, eval:statistics",
        }
    return {"seconds": None, "source": "light (tables, figures): not projected"}


def paper_plan() -> tuple[list[dict], dict[str, int]]:
    """The jobs of the paper's dry run through profiles/slurm (on an empty NSD tree, every weights
    file present), and each rule's own retries (training: one per further cluster.max_runtime)."""
    from conftest import parse_workflow
    from test_workflow_lint import NSD_CONFIG, paper_dry_run, planned_jobs

    with tempfile.TemporaryDirectory() as tmp:
        result = paper_dry_run(Path(tmp))
    if result.returncode != 0:
        raise RuntimeError(f"the dry run of config/nsd.yaml failed:\n{result.stderr[-3000:]}")
    retries = {rule.name: int(rule._restart_times or 0) for rule in parse_workflow(NSD_CONFIG).rules}
    return planned_jobs(result.stdout), retries


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
}


def project(config: dict, units: Units, jobs: list[dict], retries: dict[str, int]) -> list[dict]:
    """One row per (rule, kind of job): count, projected hours and memory, the asks, and flags."""
    rows = {}
    for job in jobs:
        cost = job_cost(job, config, units)
        w = job["wildcards"]
        kind = job["rule"]
        if job["rule"] == "train_mapper":
            kind += f" {w['mapper']}" + ("" if w["mapper"] == "ridge" else f" ({w['loss']})")
        elif job["rule"] == "finetune_generator":
            kind += f" ({get_conditions(w['variant'])} cond.)"
        res = job["resources"]
        ask = {
            "mem_gb": int(res.get("mem_mb", 0)) / 1000,
            "gpus": int(res.get("gpu", 0)),
            "minutes": int(res["runtime"]) * (retries.get(job["rule"], 0) + 1 if job["rule"] in TRAINING_RULES else 1),
        }
        row = rows.setdefault(kind, {"kind": kind, "rule": job["rule"], "jobs": 0, **cost, "ask": ask})
        row["jobs"] += 1
    out = []
    for row in rows.values():
        row["flags"] = flags(row, config, units)
        out.append(row)
    return out


# Rules whose runtime key is the whole training's projected length: each retry resumes it.
TRAINING_RULES = ("train_mapper", "pretrain_generator", "finetune_generator", "finetune_e2e")


def get_conditions(variant: str) -> int:
    from mindreader.generator.conditioning import get_variant

    return get_variant(variant).n_conditions


def job_hours(row: dict, config: dict, units: Units) -> tuple[float | None, str]:
    """(wall hours of one job where it runs, how they were obtained), or (None, why not)."""
    if row.get("seconds") is None:
        return None, "light"
    if row["ask"]["gpus"] == 0:
        threads = config["mappers"]["threads"] if row["rule"] == "train_mapper" else 1
        if units.time_key == "wall_s":
            return row["seconds"] / 3600, "measured wall"
        return row["seconds"] / threads / 3600, f"CPU time / {threads} threads"
    if units.time_key == "wall_s":
        return row["seconds"] / 3600, "GPU wall"
    if row.get("v100_seconds") is not None:
        return row["v100_seconds"] / 3600, "V100 via StyleGAN2-ADA's s/kimg"
    return None, "no GPU measurement"


def flags(row: dict, config: dict, units: Units) -> list[str]:
    out = []
    hours, _ = job_hours(row, config, units)
    if hours is not None and hours * 60 > row["ask"]["minutes"]:
        out.append(f"runtime ask {row['ask']['minutes']} min < {hours * 60:.0f} min projected")
    if row.get("host_gb") is not None and row["host_gb"] > row["ask"]["mem_gb"]:
        out.append(f"mem ask {row['ask']['mem_gb']:.0f} GB < {row['host_gb']:.1f} GB projected")
    return out


# --- reporting ----------------------------------------------------------------------------------


def print_units(units: Units, config: dict) -> None:
    what = "CPU s" if units.time_key == "cpu_s" else "wall s"
    print(f"\n## Units at the paper's batch ({what}; projected: time per image x batch, memory a + b * batch)\n")
    print(f"| unit | measured at batch | paper batch | {what} | host peak GB | GPU peak GB | |")
    print("|---|---|---|---|---|---|---|")
    for unit, points in units.by_unit.items():
        paper = units.batches[unit][1]
        gpu = units.at(unit, "gpu_peak_gb") if points[0]["gpu_peak_gb"] is not None else None
        label = "measured" if units.measured(unit) else "projected"
        batches = ", ".join(str(p["batch"]) for p in sorted(points, key=lambda p: p["batch"]))
        gpu_text = f"{gpu:.2f}" if gpu is not None else "-"
        print(
            f"| {unit} | {batches} | {paper} | {units.seconds(unit):.2f} | {units.host(unit):.2f} | {gpu_text} | {label} |"
        )
    stats = units.by_unit.get("eval:statistics")
    if stats:
        extra = stats[0]["extra"]
        print(
            f"\neval:statistics: one Frechet distance at {TEST_IMAGES} images: {extra['fd_2048']:.2f} CPU s (2048-d), "
            f"{extra['fd_768']:.2f} CPU s (768-d); PixCorr + SSIM: {extra['pixels_8_pairs'] / 8:.3f} CPU s per pair"
        )
    ridge = units.by_unit.get("ridge")
    if ridge:
        extra = ridge[0]["extra"]
        print(f"ridge: measured at {extra['samples']} samples x {extra['voxels']} voxels (1/{extra['scale']} of NSD's)")


def print_generator(units: Units, config: dict) -> None:
    gen = config["generator"]
    batch = gen["batch"]
    print(f"\n## Generator step at batch {batch} (path length on {batch // gen['pl_batch_shrink']} of them)\n")
    print(
        "| stage | G main (of it: contrastive terms) | path length / {pl} | D main | R1 / {r1} | step without / with lazy regs | s/kimg | V100 s/kimg (projected) |".format(
            pl=gen["pl_interval"], r1=gen["r1_interval"]
        )
    )
    print("|---|---|---|---|---|---|---|---|")
    plain = generator_step(units, "sg2ada", gen) if "gen:sg2ada:Gmain" in units else None
    for stage in (*STAGES, "sg2ada"):
        if f"gen:{stage}:Gmain" not in units:
            continue
        s = {phase: units.seconds(f"gen:{stage}:{phase}") for phase in PHASES}
        step = generator_step(units, stage, gen)
        contrastive = ""
        if f"gen:{stage}:Gplain" in units:
            contrastive = f" ({s['Gmain'] - units.seconds(f'gen:{stage}:Gplain'):.1f})"
        v100 = f"{np.mean(SG2ADA_V100_S_PER_KIMG) * step / plain:.1f}" if plain else "-"
        print(
            f"| {stage} | {s['Gmain']:.1f}{contrastive} | {s['Greg'] / gen['pl_interval']:.1f} | {s['Dmain']:.1f} | "
            f"{s['Dreg'] / gen['r1_interval']:.1f} | {generator_step(units, stage, gen, lazy=False):.1f} / {step:.1f} | "
            f"{step * 1000 / batch:.0f} | {v100} |"
        )
    print("\nPeak memory per phase at the paper's batch (host RSS GB on the CPU / GPU GB on a GPU):")
    for stage in (*STAGES, "sg2ada"):
        if f"gen:{stage}:Gmain" in units:
            peaks = ", ".join(f"{phase} {units.memory(f'gen:{stage}:{phase}'):.1f}" for phase in PHASES)
            print(f"- {stage}: {peaks}")


def print_projection(rows: list[dict], config: dict, units: Units) -> None:
    on_cpu = units.time_key == "cpu_s"
    print("\n## The paper's DAG on real NSD, projected (asks from profiles/slurm)\n")
    device = "device GB (from a CPU run: its peak RSS, an upper bound)" if on_cpu else "GPU GB"
    work = "CPU-hours of work (the measuring CPU)" if on_cpu else "hours (the measuring GPU)"
    print(
        f"| job | jobs | wall per job where it runs | how | {work} | host GB | {device} | ask: GB, min, GPUs | flags |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    totals = collections.defaultdict(collections.Counter)
    for row in sorted(rows, key=lambda r: list(STAGE_OF_RULE).index(r["rule"]) if r["rule"] in STAGE_OF_RULE else 99):
        hours, how = job_hours(row, config, units)
        stage = STAGE_OF_RULE.get(row["rule"], "report")
        if hours is not None and row["ask"]["gpus"]:
            totals[stage]["gpu"] += hours * row["jobs"] * row["ask"]["gpus"]
        worked = None
        if row.get("seconds") is not None and (on_cpu or not row["ask"]["gpus"]):
            worked = row["seconds"] / 3600
            totals[stage]["cpu"] += worked * row["jobs"]
        cells = [f"{hours:.2f} h" if hours is not None else "-", f"{worked:.2f}" if worked is not None else "-"]
        cells += [f"{row[key]:.1f}" if row.get(key) is not None else "-" for key in ("host_gb", "device_gb")]
        ask = row["ask"]
        print(
            f"| {row['kind']} | {row['jobs']} | {cells[0]} | {how} | {cells[1]} | {cells[2]} | {cells[3]} | "
            f"{ask['mem_gb']:.0f}, {ask['minutes']}, {ask['gpus']} | {'; '.join(row['flags']) or 'ok'} |"
        )
    cpu_what = "CPU-hours of work (the measuring CPU)" if on_cpu else "CPU-hours (CPU rules)"
    print(f"\n| stage | GPU-hours | {cpu_what} |")
    print("|---|---|---|")
    grand = collections.Counter()
    for stage, total in totals.items():
        grand.update(total)
        print(f"| {stage} | {total['gpu']:.1f} | {total['cpu']:.1f} |")
    print(f"| total | {grand['gpu']:.1f} | {grand['cpu']:.1f} |")
    if units.time_key == "cpu_s":
        print(
            "\nGPU-hours from a CPU run: generator training only, from StyleGAN2-ADA's published V100 s/kimg times the "
            "ratio of our step to its auto config's step measured here; the other GPU rules need --device cuda."
        )


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
    batches = unit_batches(config, device)
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
        for unit, (measured, _) in batches.items():
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
    units = Units(results, batches, "cuda" if any(r.get("gpu_peak_gb") is not None for r in results) else "cpu")
    print_units(units, config)
    if "gen:pretrain:Gmain" in units:
        print_generator(units, config)
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
        jobs, retries = paper_plan()
        print_projection(project(config, units, jobs, retries), config, units)
    else:
        print(f"\nno projection: units missing: {sorted(needed - set(units.by_unit))}")


if __name__ == "__main__":
    main()
