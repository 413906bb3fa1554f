"""Trained networks on disk: ``G.safetensors``, ``G_ema.safetensors``, ``D.safetensors`` and
``network.json`` (the constructor arguments of G and D, the conditions, how they were trained).
Loading builds the networks from network.json and reads the weights; nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mindreader.generator.networks import Discriminator, Generator
from mindreader.io import atomic_path, read_json, write_json

NETWORK_FILES = ("G.safetensors", "G_ema.safetensors", "D.safetensors")


def architecture(arch: dict, c_dim: int, n_conditions: int, fusion: str) -> tuple[dict, dict]:
    """Constructor arguments of G and D from the config's architecture keys."""
    precision = {
        "num_fp16_res": arch["num_fp16_res"],
        "conv_clamp": arch["conv_clamp"],
        "precision": arch["precision"],
    }
    g_kwargs = {
        "z_dim": arch["z_dim"],
        "w_dim": arch["w_dim"],
        "img_resolution": arch["resolution"],
        "img_channels": 3,
        "c_dim": c_dim,
        "n_conditions": n_conditions,
        "fusion": fusion,
        "branch_width": arch["branch_width"],
        "branch_lr_multiplier": arch["branch_lr_multiplier"],
        "use_noise": arch["noise_inputs"],
        "channel_base": arch["channel_base"],
        "channel_max": arch["channel_max"],
        "mapping_layers": arch["mapping_layers"],
        **precision,
    }
    d_kwargs = {
        "img_resolution": arch["resolution"],
        "img_channels": 3,
        "c_dim": c_dim,
        "n_conditions": n_conditions,
        "channel_base": arch["channel_base"],
        "channel_max": arch["channel_max"],
        "mbstd_group_size": arch["mbstd_group_size"],
        "projection": arch["projection"],
        "mbstd_grouping": arch["mbstd_grouping"],
        **precision,
    }
    return g_kwargs, d_kwargs


def save_networks(folder: str | Path, G, G_ema, D, g_kwargs: dict, d_kwargs: dict, **meta) -> None:
    """Write the three networks and network.json (last, so it only names complete files)."""
    folder = Path(folder)
    for name, module in zip(NETWORK_FILES, (G, G_ema, D)):
        with atomic_path(folder / name) as tmp:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    write_json(folder / "network.json", {"generator": g_kwargs, "discriminator": d_kwargs, **meta})


def read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise ValueError(f"{path}: unreadable network weights ({err})") from err


def load_networks(folder: str | Path) -> tuple[Generator, Generator, Discriminator, dict]:
    """(G, G_ema, D, network.json) from a folder written by ``save_networks``."""
    folder = Path(folder)
    meta = read_json(folder / "network.json")
    G, G_ema = Generator(**meta["generator"]), Generator(**meta["generator"])
    D = Discriminator(**meta["discriminator"])
    for name, module in zip(NETWORK_FILES, (G, G_ema, D)):
        module.load_state_dict(read_state(folder / name))
    return G, G_ema, D, meta


def load_generator(folder: str | Path) -> tuple[Generator, dict]:
    """G_ema (eval mode) and network.json from a trained run folder."""
    folder = Path(folder)
    meta = read_json(folder / "network.json")
    G = Generator(**meta["generator"])
    G.load_state_dict(read_state(folder / "G_ema.safetensors"))
    return G.eval().requires_grad_(False), meta
