"""The generator stages of the workflow, each a function of a JSON-able job description (so that
torchrun workers can receive it): language-free pre-training, fine-tuning on the frozen mappers'
predictions (from the pre-trained network, or from scratch), and end-to-end fine-tuning.

A job is a dict with keys: stage, nsd_root, output_dir, checkpoint_dir, generator (the config
section), clip (the CLIP config section, for itc), seed, device, and per stage: prepared (list of
prepared subject files), images_h5 (pretrain); pred_train (one file per condition), pretrained
(folder or None), variant, strategy (finetune); prepared, targets (images.h5 / captions.h5 per
condition), mapper_folders, pretrained, variant (e2e); with a pretrained folder, init (what it is:
generator.init, 'pretrain' or the Lafite pickle / folder with its sha256, recorded in network.json).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from pathlib import Path

import h5py
import numpy as np
import torch

from mindreader.generator.conditioning import expand_conditions, get_variant, mapper_predictions
from mindreader.generator.data import end_to_end_set, finetuning_set, pretraining_set, read_betas, read_rows
from mindreader.generator.distributed import rank_and_world
from mindreader.generator.loss import LossConfig
from mindreader.generator.networks import Discriminator, Generator
from mindreader.generator.store import architecture, load_networks, save_networks
from mindreader.generator.training import TrainConfig, Trainer, set_seed_for_init
from mindreader.io import atomic_path
from mindreader.names import GENERATOR_WEIGHT_ARGUMENTS, stage_generator_config

log = logging.getLogger(__name__)

STAGES = ("pretrain", "finetune", "e2e")
# dtype of the mappers trained end to end (float64: the fork's).
MAPPER_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Test predictions of the mappers trained end to end, written into the run folder.
E2E_PREDICTIONS = "e2e_pred_test.h5"


def fingerprint(job: dict) -> str:
    """Identity of a job: a checkpoint of another config or other inputs is not resumed."""
    return hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()[:16]


def r1_gamma(cfg: dict) -> float:
    """The configured R1 weight, or StyleGAN2-ADA's heuristic 0.0002 * resolution^2 / batch."""
    if cfg["r1_gamma"] is not None:
        return float(cfg["r1_gamma"])
    return 0.0002 * cfg["resolution"] ** 2 / cfg["batch"]


def loss_config(cfg: dict, signal_weight: float) -> LossConfig:
    e2e = cfg["e2e"]
    return LossConfig(
        signal_weight=signal_weight,
        itc=cfg["itc"],
        itd=cfg["itd"],
        temperature=cfg["temperature"],
        contrastive_lam=cfg["contrastive_lam"],
        contrastive_form=cfg["contrastive_form"],
        crop_min=cfg["itc_crop"][0],
        crop_max=cfg["itc_crop"][1],
        crop_mode=cfg["itc_crop_mode"],
        train_z=cfg["train_z"],
        style_mixing=cfg["style_mixing"],
        pl_style_mixing=cfg["pl_style_mixing"],
        r1_gamma=r1_gamma(cfg),
        r1_interval=cfg["r1_interval"],
        pl_weight=cfg["pl_weight"],
        pl_interval=cfg["pl_interval"],
        pl_decay=cfg["pl_decay"],
        pl_batch_shrink=cfg["pl_batch_shrink"],
        mapper_mse=e2e["mse"],
        mapper_cos=e2e["cos"],
        mapper_contra=e2e["contra"],
        mapper_adv=e2e["adv"],
        mapper_loss_input=e2e["loss_input"],
        mapper_perturb=e2e["perturb"],
        mapper_phase=e2e["mapper_phase"],
    )


def train_config(cfg: dict, kimg: float, seed: int, initialised: bool) -> TrainConfig:
    """The schedule; ``initialised``: training starts from trained weights, so G_ema has no
    ramp-up (StyleGAN2-ADA and Lafite switch it off when resuming from a network)."""
    e2e = cfg["e2e"]
    return TrainConfig(
        kimg=kimg,
        batch=cfg["batch"],
        lr=cfg["lr"],
        betas=tuple(cfg["betas"]),
        mapper_lr=cfg["lr"] if e2e["mapper_lr"] is None else e2e["mapper_lr"],
        mapper_betas=tuple(cfg["betas"] if e2e["mapper_betas"] is None else e2e["mapper_betas"]),
        mapper_lazy_interval=e2e["mapper_lazy_interval"],
        ema_kimg=cfg["ema_kimg"],
        ema_rampup=None if initialised else cfg["ema_rampup"],
        checkpoint_kimg=cfg["checkpoint_kimg"],
        sample_kimg=cfg["sample_kimg"],
        sample_images=cfg["sample_images"],
        log_steps=cfg["log_steps"],
        max_nonfinite_steps=cfg["max_nonfinite_steps"],
        mirror=cfg["mirror"],
        seed=seed,
    )


class ClipImageEncoder(torch.nn.Module):
    """CLIP's image tower as the loss sees it: x in [0, 1] -> (B, D), and its input side (fakes
    are cropped straight to it)."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip
        self.image_size = clip.image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_images(x)


def clip_encoder(job: dict, device: torch.device) -> ClipImageEncoder | None:
    """The frozen CLIP image encoder for the itc term, or None when itc is off."""
    if job["generator"]["itc"] <= 0:
        return None
    from mindreader.clip import load_clip

    return ClipImageEncoder(load_clip(job["clip"], device))


def write_losses(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def build(cfg: dict, c_dim: int, n_conditions: int, fusion: str, seed: int):
    g_kwargs, d_kwargs = architecture(cfg, c_dim, n_conditions, fusion)
    set_seed_for_init(seed)
    return Generator(**g_kwargs), Discriminator(**d_kwargs), g_kwargs, d_kwargs


def check_architecture(folder, meta: dict, g_kwargs: dict, d_kwargs: dict) -> None:
    """Raise, naming the config key, where the config's networks differ from the pre-trained ones."""
    for net, built in (("generator", g_kwargs), ("discriminator", d_kwargs)):
        for arg, key in GENERATOR_WEIGHT_ARGUMENTS[net].items():
            if arg in built and arg in meta[net] and meta[net][arg] != built[arg]:
                raise ValueError(
                    f"{folder}: the pre-trained {net} has {arg} {meta[net][arg]}, the config's generator.{key} "
                    f"gives {built[arg]}; set the config's generator architecture to the pre-trained network's "
                    f"({Path(folder) / 'network.json'})"
                )


def from_pretrained(folder, cfg: dict, c_dim: int, n_conditions: int, fusion: str, seed: int):
    """G, G_ema, D for K conditions initialised from a single-condition pre-trained folder."""
    G0, G0_ema, D0, meta = load_networks(folder)
    if meta["generator"]["c_dim"] != c_dim:
        raise ValueError(
            f"{folder}: pre-trained on {meta['generator']['c_dim']}-d conditions, the mappers predict {c_dim}-d"
        )
    G, D, g_kwargs, d_kwargs = build(cfg, c_dim, n_conditions, fusion, seed)
    check_architecture(folder, meta, g_kwargs, d_kwargs)
    G_ema = Generator(**g_kwargs)
    for src, dst in ((G0, G), (G0_ema, G_ema), (D0, D)):
        dst.load_state_dict(expand_conditions(src.state_dict(), dst.state_dict(), n_conditions))
    return G, G_ema, D, g_kwargs, d_kwargs


def run(job: dict, device: torch.device, callback=None) -> dict:
    """Run one stage end to end; rank 0 writes the outputs. Returns what network.json holds."""
    if job["stage"] not in STAGES:
        raise ValueError(f"unknown generator stage '{job['stage']}'; choose one of {STAGES}")
    cfg, seed = stage_generator_config(job["generator"], job["stage"]), job["seed"]
    res = cfg["resolution"]
    mappers = None
    G_ema = None
    if job["stage"] == "pretrain":
        data = pretraining_set(
            job["nsd_root"], job["images_h5"], job["prepared"], res, cfg["pretrain"]["use_augmented"]
        )
        conditions, fusion = ["img"], "max"
        G, D, g_kwargs, d_kwargs = build(cfg, data.cond.shape[-1], 1, fusion, seed)
        signal, kimg = cfg["pretrain"]["signal_weight"], cfg["pretrain"]["kimg"]
    else:
        variant = get_variant(job["variant"])
        conditions, fusion = list(variant.targets), variant.fusion
        if job["stage"] == "finetune":
            data = finetuning_set(job["nsd_root"], job["pred_train"], res, variant.n_conditions)
            c_dim = data.cond.shape[-1]
        else:
            from mindreader.mappers import load_mapper

            data = end_to_end_set(job["nsd_root"], job["prepared"], job["targets"], res)
            c_dim = data.target.shape[-1]
            mappers = torch.nn.ModuleList(load_mapper(folder) for folder in job["mapper_folders"]).to(
                MAPPER_DTYPES[cfg["e2e"]["mapper_dtype"]]
            )
        if job.get("pretrained"):
            G, G_ema, D, g_kwargs, d_kwargs = from_pretrained(
                job["pretrained"], cfg, c_dim, variant.n_conditions, fusion, seed
            )
        else:
            G, D, g_kwargs, d_kwargs = build(cfg, c_dim, variant.n_conditions, fusion, seed)
        signal, kimg = cfg["finetune"]["signal_weight"], cfg["finetune"]["kimg"]
    out = Path(job["output_dir"])
    trainer = Trainer(
        G,
        D,
        data,
        loss_config(cfg, signal),
        train_config(cfg, kimg, seed, initialised=G_ema is not None),
        job["checkpoint_dir"],
        device,
        G_ema=G_ema,
        encoder=clip_encoder(job, device),
        mappers=mappers,
        fingerprint=fingerprint(job),
        grid_dir=out,
        callback=callback,
    )
    result = trainer.train()
    meta = {
        "stage": job["stage"],
        "conditions": conditions,
        "variant": job.get("variant"),
        "strategy": job.get("strategy"),
        "init": job.get("init"),
        "train_z": cfg["train_z"],
        "kimg": result.steps * cfg["batch"] / 1000,
        "steps": result.steps,
        "train_seconds": round(result.seconds, 1),
        "n_samples": len(data),
        "processes": rank_and_world()[1],
    }
    if rank_and_world()[0] == 0:
        if mappers is not None:
            write_e2e_predictions(out, mappers, job, device)
        write_losses(out / "losses.csv", result.rows)
        save_networks(out, result.G, result.G_ema, result.D, g_kwargs, d_kwargs, **meta)
    return meta


@torch.no_grad()
def write_e2e_predictions(out: Path, mappers, job: dict, device: torch.device) -> None:
    """The jointly trained mappers' test predictions: e2e_pred_test.h5 with nsd_id (N,), pred and
    target (N, K, D) in the prepared file's test order, attrs conditions."""
    nsd_id, betas = read_betas(job["prepared"], "test")
    mappers.eval()
    chunks = [
        mapper_predictions(mappers, torch.from_numpy(betas[i : i + 256]).to(device)).float().cpu()
        for i in range(0, len(betas), 256)
    ]
    truth = [read_rows(path, nsd_id, ("target",))["target"] for path in job["targets"]]
    with atomic_path(out / E2E_PREDICTIONS) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("nsd_id", data=nsd_id.astype(np.int64))
            f.create_dataset("pred", data=torch.cat(chunks).numpy())
            f.create_dataset("target", data=np.stack(truth, axis=1))
            f.attrs["conditions"] = ",".join(get_variant(job["variant"]).targets)
