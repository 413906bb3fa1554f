"""Units of work of the heavy rules at a config's shapes, and their measurement.

A unit is one step of what a rule repeats, built with the project's own builders and random
weights of the real architectures (so that it needs no weights file):
- ``gen:{pretrain,finetune,e2e}:{Gmain,Greg,Dmain,Dreg}``: one phase of a generator training step
  through ``Trainer.run_phase`` (G main with itc through the config's CLIP and itd, path length on
  batch / pl_batch_shrink samples, D main, R1); ``gen:pretrain:Gplain`` is G main without the
  contrastive terms; ``gen:sg2ada:*`` a plain StyleGAN2 step at StyleGAN2-ADA's 256 px "auto"
  config, built from our networks, whose published V100 speed anchors a projection from a CPU;
- ``mapper:{cnn,mlp}``: one training step (forward, mapper_loss, backward, Adam) at the subject's
  voxel count; ``ridge``: fit_ridge with the config's alphas at N x voxels divided by a scale
  (time grows as its cube, memory as its square);
- ``reconstruct``: a batch through G_ema (generate_images); ``embed:images`` (with the config's
  augmented views) and ``embed:captions``: a batch through the config's CLIP;
- ``eval:{network}``: a batch of stimuli through each feature network of the battery (and the
  CLIP of the CLIP metrics); ``eval:statistics``: one bootstrap Frechet distance of each kind at
  the test set's size and PixCorr + SSIM of 8 image pairs.

`build_unit` makes any of them by name; `measure` times one and takes its peak memory (host RSS,
and torch's peak allocation on a GPU).
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import tempfile
import time
import unittest.mock
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from mindreader.names import stage_generator_config
from mindreader.scale.memory import peak_rss_mb, reset_peak_rss, rss_mb

GB = 2**30

# Real NSD at 37 sessions (nsd-format.md; config/nsd.yaml): per subject 8,859 training and 982 test
# images (the shared ones), 750 trials a session, ~5 COCO captions an image, subj01's nsdgeneral
# ROI of 15,724 voxels in an 81 x 104 x 83 volume, 425 px stimuli.
NSD_TRAIN_IMAGES = 8859
NSD_TEST_IMAGES = 982
NSD_TRIALS_PER_SESSION = 750
NSD_CAPTIONS_PER_IMAGE = 5
NSD_ROI_VOXELS = 15724
NSD_VOLUME = (81, 104, 83)
NSD_IMAGE_SIDE = 425
# StyleGAN2-ADA's README: 256 x 256 at its auto config on one V100, 21.6-24.2 s/kimg, 5.0 GB.
SG2ADA_V100_S_PER_KIMG = (21.6, 24.2)
SG2ADA = {"channel_base": 16384, "mapping_layers": 2, "itc": 0.0, "itd": 0.0}
PHASES = ("Gmain", "Greg", "Dmain", "Dreg")
# The end-to-end mappers' own phase (generator.e2e.mapper_phase separate).
MAPPER_PHASE = "Mmain"
STAGES = ("pretrain", "finetune", "e2e")
# The dimension of FID's Inception pool features.
FID_DIM = 2048


# --- the data a config's jobs see ----------------------------------------------------------------


def data_sizes(config: Mapping[str, Any]) -> dict:
    """Counts of what the jobs of ``config`` hold and loop over: per subject its images (train /
    test), training trials (single trials less the test images' share, or one sample an image when
    averaged) and validation trials; every stimulus the subjects saw; voxels; stimulus side.
    Real NSD: the constants above; the synthetic NSD: its config section."""
    prepare = config["prepare"]
    synth = config["synthetic"]
    if synth["enabled"]:
        images = synth["n_shared"] + synth["n_specific"]
        shared, trials_per_session = synth["n_shared"], synth["trials_per_session"]
        voxels, side, captions = synth["roi_voxels"], synth["image_side"], synth["captions_per_image"]
    else:
        images = NSD_TRAIN_IMAGES + NSD_TEST_IMAGES
        shared, trials_per_session = NSD_TEST_IMAGES, NSD_TRIALS_PER_SESSION
        voxels, side, captions = NSD_ROI_VOXELS, NSD_IMAGE_SIDE, NSD_CAPTIONS_PER_IMAGE
    test = shared if prepare["split"] == "shared1000" else math.floor(images * prepare["test_fraction"])
    train = images - test
    trials = prepare["sessions"] * trials_per_session
    train_trials = train if prepare["train_repeats"] == "average" else round(trials * train / images)
    stimuli = len(config["subjects"]) * train + test
    return {
        "train_images": train,
        "test_images": test,
        "train_trials": train_trials,
        "val_trials": round(train_trials * config["mappers"]["train"]["val_fraction"]),
        "stimuli": stimuli,  # every image the subjects saw (embed_images)
        "pretrain_images": stimuli - test,
        "captions_per_image": captions,
        "voxels": voxels,
        "image_side": side,
    }


def voxel_xyz(config: Mapping[str, Any]) -> np.ndarray:
    """Coordinates of an nsdgeneral-sized ROI (the cnn orders its input by them): the synthetic
    NSD's anatomy at its config's sizes, or one of subj01's size in subj01's volume."""
    from mindreader.synth.brain import make_anatomy

    synth = config["synthetic"]
    volume, voxels = (
        (tuple(synth["volume_shape"]), synth["roi_voxels"]) if synth["enabled"] else (NSD_VOLUME, NSD_ROI_VOXELS)
    )
    # make_anatomy's ROI is the brain nearest the back, within 8 % of the size asked: take exactly
    # `voxels` brain voxels from the back
    brain = np.argwhere(make_anatomy(np.random.default_rng(0), volume, voxels) >= 0)
    return brain[np.argsort(brain[:, 1], kind="stable")[:voxels]].astype(np.int32)


def stimuli(n: int, side: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


# --- measuring ---------------------------------------------------------------------------------


def release_memory() -> None:
    """Give back what the last unit freed (Python objects, the CUDA cache, glibc's free lists), so
    that the next unit's memory starts from the process, not from its predecessor's leftovers."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(work: Callable[[], Any], device: torch.device, repeats: int = 1) -> dict:
    """Wall and CPU seconds per call of ``work``, and the peaks of host RSS and GPU memory. On a
    GPU one call first warms up (kernels, cuDNN autotuning, allocator pools), uncounted."""
    if device.type == "cuda":
        work()
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()
    before = rss_mb() / 1024
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
        "gpu_peak_gb": torch.cuda.max_memory_allocated(device) / GB if device.type == "cuda" else None,
    }


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return f"{models[0] if models else 'CPU'}, {torch.get_num_threads()} threads of {os.cpu_count()} cores"


# --- networks with random weights --------------------------------------------------------------


def clip_embed_dim(clip_cfg: Mapping[str, Any]) -> int:
    """The embedding width of the CLIP that ``clip_cfg`` (config clip, or evaluation.clip) names."""
    if clip_cfg.get("train_demo"):
        return int(clip_cfg["demo"]["embed_dim"])
    import open_clip

    return int(open_clip.get_model_config(clip_cfg["model"])["embed_dim"])


def random_clip(clip_cfg: Mapping[str, Any], device: torch.device):
    """The CLIP that ``clip_cfg`` names, with random weights, loaded through create_frozen_clip:
    the demo CLIP's architecture (train_demo), or open_clip's architecture of ``model`` with the
    registered preprocessing of its weights."""
    import open_clip
    from safetensors.torch import save_file

    from mindreader.clip.demo import build_demo_clip, save_demo_clip
    from mindreader.clip.models import create_frozen_clip
    from mindreader.weights import REGISTRY

    with tempfile.TemporaryDirectory() as tmp:
        if clip_cfg.get("train_demo"):
            _, weights = save_demo_clip(build_demo_clip(clip_cfg["demo"])[0], clip_cfg["demo"], tmp)
            return create_frozen_clip(f"local-dir:{tmp}", weights, device=device)
        state = open_clip.create_model(clip_cfg["model"], load_weights=False).state_dict()
        path = Path(tmp) / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        spec = REGISTRY.get(clip_cfg.get("weights_name") or "")
        return create_frozen_clip(clip_cfg["model"], path, spec.preprocess if spec else None, device)


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


def evaluation_clip_cfg(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The CLIP of the CLIP metrics: evaluation.clip, or the workflow's CLIP when it is null."""
    return config["evaluation"].get("clip") or config["clip"]


def evaluation_networks(config: Mapping[str, Any]) -> list[str]:
    """The battery's feature networks (evaluation.networks) and the CLIP of the CLIP metrics."""
    return [*config["evaluation"]["networks"], "clip"]


def stage_settings(config: Mapping[str, Any], stage: str) -> dict:
    """generator.* as a training stage runs it (pre-training's own batch, GPUs, ...: names.
    stage_generator_config); sg2ada: the plain StyleGAN2 at fine-tuning's batch."""
    if stage == "sg2ada":
        return {**config["generator"], **SG2ADA}
    return stage_generator_config(config["generator"], stage)


def process_batch(gen: Mapping[str, Any]) -> int:
    """The batch one training process runs a step at: the global batch split over the GPUs."""
    return gen["batch"] // max(int(gen["gpus"]), 1)


def stage_phases(config: Mapping[str, Any], stage: str) -> tuple[str, ...]:
    """The phases of a training step of ``stage`` (e2e with separate mappers: one more)."""
    if stage == "e2e" and config["generator"]["e2e"]["mapper_phase"] == "separate":
        return (*PHASES, MAPPER_PHASE)
    return PHASES


# --- units: each builder returns a function doing one unit of work, built outside the timing ---


def generator_phases(
    config: Mapping[str, Any],  # the workflow's config
    stage: str,  # pretrain | finetune | e2e | sg2ada (a plain StyleGAN2 at StyleGAN2-ADA's config)
    n: int,  # batch (path length: n / pl_batch_shrink)
    device: torch.device,  # where the step runs
    clip=None,  # the CLIP of the itc term (random_clip of config clip); None: built here when itc > 0
    plain: bool = False,  # G main without the contrastive terms (no CLIP)
):
    """({phase name: one run of that phase of a training step}, the Trainer), as the job runs them."""
    from mindreader.generator.conditioning import get_variant
    from mindreader.generator.data import TrainingSet
    from mindreader.generator.stages import ClipImageEncoder, build, loss_config, train_config
    from mindreader.generator.training import Trainer
    from mindreader.mappers.models import build_mapper

    cfg = stage_settings(config, stage)
    variant = get_variant(config["ablations"]["main"]["variant"])
    k = variant.n_conditions if stage in ("finetune", "e2e") else 1
    c_dim = clip_embed_dim(config["clip"])
    encoder = None
    if cfg["itc"] > 0 and not plain:
        encoder = ClipImageEncoder(clip if clip is not None else random_clip(config["clip"], device))
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
        xyz = voxel_xyz(config)
        mappers = torch.nn.ModuleList(build_mapper(kind, len(xyz), c_dim, config["mappers"], xyz) for _ in range(k))
        data.update(betas=torch.randn(size, len(xyz), generator=g), target=torch.randn(size, k, c_dim, generator=g))
    else:
        data.update(cond=torch.randn(size, 1, k, c_dim, generator=g))
    signal = cfg["pretrain" if stage in ("pretrain", "sg2ada") else "finetune"]["signal_weight"]
    loss_cfg = loss_config(cfg, signal)
    if plain:
        loss_cfg.itc = loss_cfg.itd = 0.0
    schedule = train_config(cfg, 1.0, 0, initialised=stage != "pretrain")
    never_written = Path(tempfile.gettempdir()) / "mindreader_scale_no_checkpoints"  # a unit saves none
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
    batch = trainer.data.batch(torch.arange(n), device)
    works = {phase.name: (lambda phase=phase: trainer.run_phase(phase, batch, 0)) for phase in trainer.phases}
    return works, trainer


def mapper_step(config: Mapping[str, Any], kind: str, n: int, device: torch.device):
    """One training step of a cnn or mlp mapper at batch ``n`` with the main loss."""
    from mindreader.mappers.losses import mapper_loss
    from mindreader.mappers.models import build_mapper

    cfg = config["mappers"]
    loss = config["ablations"]["main"]["loss"]
    dim = clip_embed_dim(config["clip"])
    xyz = voxel_xyz(config)
    torch.manual_seed(0)
    model = build_mapper(kind, len(xyz), dim, cfg, xyz).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["train"]["lr"], weight_decay=cfg["train"]["weight_decay"])
    x = torch.randn(n, len(xyz), device=device)
    y = torch.nn.functional.normalize(torch.randn(n, dim, device=device), dim=1)

    def step():
        terms = mapper_loss(loss, model(x), y, cfg)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()

    return step


def ridge_fit(config: Mapping[str, Any], scale: int):
    """(fit_ridge with the config's alphas at the training trials x voxels divided by ``scale``,
    what it was measured at). On the CPU, as the ridge jobs ask for no GPU."""
    from mindreader.mappers.data import validation_mask
    from mindreader.mappers.ridge import fit_ridge

    sizes = data_sizes(config)
    n, v = max(sizes["train_trials"] // scale, 8), max(sizes["voxels"] // scale, 2)
    g = torch.Generator().manual_seed(0)
    dim = clip_embed_dim(config["clip"])
    x = torch.randn(n, v, generator=g)
    y = torch.randn(n, dim, generator=g)
    images = np.arange(n) * sizes["train_images"] // n
    val = torch.from_numpy(validation_mask(images, config["mappers"]["train"]["val_fraction"], seed=0))
    ridge = config["mappers"]["ridge"]
    work = lambda: fit_ridge(x, y, val, list(ridge["alphas"]), dtype=getattr(torch, ridge["dtype"]))  # noqa: E731
    return work, {"scale": scale, "samples": n, "voxels": v}


def reconstruct_batch(config: Mapping[str, Any], n: int, device: torch.device):
    """A batch of ``n`` conditions of the main variant through G (generate_images)."""
    from mindreader.generator.conditioning import get_variant
    from mindreader.generator.reconstruct import generate_images
    from mindreader.generator.stages import build

    variant = get_variant(config["ablations"]["main"]["variant"])
    dim = clip_embed_dim(config["clip"])
    G, _, _, _ = build(config["generator"], dim, variant.n_conditions, variant.fusion, 0)
    G.to(device)
    c = torch.nn.functional.normalize(torch.randn(n, variant.n_conditions, dim), dim=-1)
    rec = config["generator"]["reconstruct"]
    return lambda: generate_images(G, c, rec["z_policy"], rec["seed"], device, n)


def embed_images_batch(config: Mapping[str, Any], n: int, device: torch.device, clip=None):
    """A batch of ``n`` stimuli and their clip.n_aug augmented views through the CLIP."""
    from mindreader.clip.embed import TargetAugmentation, embed_image_batches

    clip_cfg = config["clip"]
    clip = clip if clip is not None else random_clip(clip_cfg, device)
    images = stimuli(n, data_sizes(config)["image_side"])
    n_aug = int(clip_cfg["n_aug"])
    augmentation = TargetAugmentation(**clip_cfg["augment"]) if n_aug else None
    return lambda: embed_image_batches(clip, [(np.arange(n), images)], n, n_aug, augmentation)


def embed_captions_batch(config: Mapping[str, Any], n: int, device: torch.device, clip=None):
    """A batch of ``n`` COCO-length captions through the CLIP's text tower."""
    from mindreader.clip.screening import embed_texts

    clip = clip if clip is not None else random_clip(config["clip"], device)
    texts = [f"a photo of {i} people standing next to a large red bus on a city street" for i in range(n)]
    return lambda: embed_texts(clip, texts, n)


def eval_network_batch(config: Mapping[str, Any], name: str, n: int, device: torch.device, clip=None):
    """A batch of ``n`` stimuli through the feature network ``name`` (extract_features)."""
    from mindreader.evaluation.battery import BatteryConfig, extract_features

    if name == "clip":
        clip = clip if clip is not None else random_clip(evaluation_clip_cfg(config), device)
        sources = {"clip": lambda x: {"clip": clip.encode_images(x)}}
    else:
        sources = {name: random_feature_network(name, device)}
    ev = config["evaluation"]
    cfg = BatteryConfig(1, 1, n, ev["image_side"], ev["retrieval_pool"], ev["retrieval_draws"], 0, ("paired",))
    images = stimuli(n, data_sizes(config)["image_side"])
    return lambda: extract_features(sources, images, cfg, device, "ground truth")


def eval_statistics(config: Mapping[str, Any]):
    """(work, CPU seconds of its parts once it ran): one Frechet distance of each kind at the
    test set's size (FID's and the CLIP metrics' dimensions), and PixCorr + SSIM of 8 image pairs
    (the job does bootstrap_fd + 1 of the former per FD metric, its half-samples on N/2 images, and
    one of the latter per test image)."""
    from mindreader import metrics

    sizes = data_sizes(config)
    rng = np.random.default_rng(0)
    fid_a, fid_b = rng.random((2, sizes["test_images"], FID_DIM), dtype=np.float32)
    clip_dim = clip_embed_dim(evaluation_clip_cfg(config))
    clip_a, clip_b = rng.standard_normal((2, sizes["test_images"], clip_dim), dtype=np.float32)
    gt, rec = stimuli(8, sizes["image_side"]), stimuli(8, config["generator"]["resolution"])
    side = config["evaluation"]["image_side"]
    timings = {}

    def work():
        for name, fn in (
            ("fd_fid", lambda: metrics.frechet_distance_features(fid_a, fid_b)),
            ("fd_clip", lambda: metrics.frechet_distance_features(clip_a, clip_b)),
            (
                "pixels_8_pairs",
                lambda: (metrics.pixcorr_per_image(gt, rec, side), metrics.ssim_per_image(gt, rec, side)),
            ),
        ):
            start = time.process_time()
            fn()
            timings[name] = time.process_time() - start

    return work, timings


def rule_batches(config: Mapping[str, Any]) -> dict[str, int]:
    """The batch each unit runs at in its rule (config keys); 1 for the unbatched units."""
    gen, ev = config["generator"], config["evaluation"]
    out = {
        f"gen:{stage}:{phase}": process_batch(stage_settings(config, stage))
        for stage in (*STAGES, "sg2ada")
        for phase in stage_phases(config, stage)
    }
    out["gen:pretrain:Gplain"] = out["gen:pretrain:Gmain"]
    out.update({f"mapper:{kind}": config["mappers"]["train"]["batch_size"] for kind in ("cnn", "mlp")})
    out.update(ridge=1, reconstruct=gen["reconstruct"]["batch"])
    out["embed:images"] = out["embed:captions"] = config["clip"]["batch_size"]
    out.update({f"eval:{name}": ev["batch_size"] for name in evaluation_networks(config)})
    out["eval:statistics"] = 1
    return out


def build_unit(
    name: str,  # unit name (module docstring)
    config: Mapping[str, Any],  # the workflow's config
    n: int,  # batch
    device: torch.device,  # where it runs
    ridge_scale: int = 1,  # ridge at 1/scale of N and voxels
    clip=None,  # a random CLIP of config clip to share between units (None: each builds its own)
) -> tuple[Callable[[], Any], dict]:
    """(one unit of work, what to record with it: a dict the work may fill)."""
    kind, _, rest = name.partition(":")
    if kind == "gen":
        stage, phase = rest.split(":")
        works, _ = generator_phases(config, stage, n, device, clip, plain=phase == "Gplain")
        return works["Gmain" if phase == "Gplain" else phase], {}
    if kind == "mapper":
        return mapper_step(config, rest, n, device), {}
    if kind == "ridge":
        return ridge_fit(config, ridge_scale)
    if kind == "reconstruct":
        return reconstruct_batch(config, n, device), {}
    if name == "embed:images":
        return embed_images_batch(config, n, device, clip), {}
    if name == "embed:captions":
        return embed_captions_batch(config, n, device, clip), {}
    if name == "eval:statistics":
        return eval_statistics(config)
    if kind == "eval":
        return eval_network_batch(config, rest, n, device), {}
    raise ValueError(f"unknown unit {name}")
