"""Mapper construction, saving and loading: one folder holds model.safetensors + model.json."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mindreader.io import atomic_path, read_json, write_json
from mindreader.mappers.cnn import FmriClipRes, voxel_order_index
from mindreader.mappers.mlp import ResidualMLP
from mindreader.mappers.ridge import LinearMapper
from mindreader.mappers.settings import CnnConfig, MlpConfig, read_section

MAPPERS = ("cnn", "ridge", "mlp")
WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"


def architecture(kind: str, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of mapper ``kind`` from the ``mappers`` config section."""
    if kind == "cnn":
        return dataclasses.asdict(read_section(cfg, "cnn", CnnConfig))
    if kind == "mlp":
        return dataclasses.asdict(read_section(cfg, "mlp", MlpConfig))
    if kind == "ridge":
        return {}
    raise ValueError(f"unknown mapper '{kind}': expected one of {', '.join(MAPPERS)}")


def _build(
    kind: str, n_voxels: int, embed_dim: int, hyper: Mapping[str, Any], voxel_xyz: np.ndarray | None = None
) -> nn.Module:
    """Mapper ``kind`` from its hyper-parameters; the cnn's voxel order comes from ``voxel_xyz``,
    or, when None, from the weights loaded into it afterwards (its ``voxel_index`` buffer)."""
    if kind == "cnn":
        layers = {k: v for k, v in hyper.items() if k != "voxel_order"}
        index = None if voxel_xyz is None else voxel_order_index(voxel_xyz, hyper["voxel_order"])
        return FmriClipRes(n_voxels, embed_dim, voxel_index=index, **layers)
    classes = {"mlp": ResidualMLP, "ridge": LinearMapper}
    if kind not in classes:
        raise ValueError(f"unknown mapper '{kind}': expected one of {', '.join(MAPPERS)}")
    return classes[kind](n_voxels, embed_dim, **hyper)


def build_mapper(
    kind: str,  # cnn | ridge | mlp
    n_voxels: int,  # input columns
    embed_dim: int,  # output dimensions
    cfg: Mapping[str, Any],  # config["mappers"]
    voxel_xyz: np.ndarray | None = None,  # (n_voxels, 3) coordinates of the input columns; the cnn needs them
) -> nn.Module:
    """A freshly initialised mapper (B, n_voxels) -> (B, embed_dim)."""
    hyper = architecture(kind, cfg)
    if kind == "cnn":
        if voxel_xyz is None:
            raise ValueError("the cnn mapper needs the voxel coordinates (voxel_xyz) to order its input "
                             "(mappers.cnn.voxel_order)")
        if np.shape(voxel_xyz) != (n_voxels, 3):
            raise ValueError(f"voxel_xyz has shape {np.shape(voxel_xyz)}, expected ({n_voxels}, 3)")
    return _build(kind, n_voxels, embed_dim, hyper, voxel_xyz)


def save_mapper(folder: str | os.PathLike, kind: str, model: nn.Module, hyper: Mapping[str, Any], **info: Any) -> None:
    """Write ``folder``/model.safetensors and model.json (kind, sizes, hyper-parameters, ``info``)."""
    folder = Path(folder)
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    meta = {"kind": kind, "n_voxels": model.n_voxels, "embed_dim": model.embed_dim, "hyper": dict(hyper), **info}
    write_json(folder / META_FILE, meta)


def load_mapper(folder: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The mapper saved in ``folder``, in eval mode (call ``.train()`` to fine-tune it)."""
    folder = Path(folder)
    meta_path, weights_path = folder / META_FILE, folder / WEIGHTS_FILE
    if not meta_path.exists() or not weights_path.exists():
        raise FileNotFoundError(f"{folder}: expected a trained mapper ({META_FILE} and {WEIGHTS_FILE})")
    meta = read_json(meta_path)
    for key in ("kind", "n_voxels", "embed_dim", "hyper"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing key '{key}'")
    model = _build(meta["kind"], meta["n_voxels"], meta["embed_dim"], meta["hyper"])
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as err:
        raise ValueError(f"{weights_path}: weights do not match the mapper described in {meta_path} ({err})") from err
    return model.to(device).eval()
