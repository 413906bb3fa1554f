"""Loading CLIP through open_clip from a local weights file, frozen, with its own preprocessing.

Two kinds of weights go through the same path (`create_frozen_clip`): a pretrained network from
the registry in `mindreader.weights` (OpenAI's ViT-B/32 for the paper), read from the file the
config names and checked against its sha256, and the demo CLIP that `mindreader.clip.demo`
trains, saved as an open_clip folder (`open_clip_config.json` + `open_clip_model.safetensors`,
the layout open_clip reads with its `local-dir:` schema). Nothing is ever downloaded here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from mindreader.weights import MissingWeightsError, get_spec, resolve

log = logging.getLogger(__name__)

# The open_clip folder layout of a model with its weights (also how the demo CLIP is saved).
FOLDER_CONFIG = "open_clip_config.json"
FOLDER_WEIGHTS = "open_clip_model.safetensors"
# Keys OpenAI's TorchScript archives carry beside the parameters.
TORCHSCRIPT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
RESIZE_MODES = ("shortest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")


def preprocess_images(
    x: torch.Tensor,  # (B, 3, H, W) float in [0, 1], any H, W
    size: int,  # side of the square input the vision tower takes
    mean: Sequence[float],  # per-channel mean of the weights' training data
    std: Sequence[float],  # per-channel std of the weights' training data
    interpolation: str = "bicubic",  # bicubic | bilinear, as the weights were trained
    resize_mode: str = "shortest",  # shortest: resize the short side, centre crop; squash: resize both
) -> torch.Tensor:
    """open_clip's evaluation preprocessing, on a batch of tensors and differentiable.

    Antialiased resizing as torchvision does for tensors; values are clamped back to [0, 1]
    where bicubic overshoots, as a uint8 round trip through PIL would.
    """
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected float images in [0, 1], got {x.dtype}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    height, width = x.shape[-2:]
    if (height, width) != (size, size):
        if resize_mode == "squash":
            target = (size, size)
        else:
            scale = size / min(height, width)
            target = (max(size, round(height * scale)), max(size, round(width * scale)))
        x = F.interpolate(x, size=target, mode=interpolation, align_corners=False, antialias=True).clamp(0.0, 1.0)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[..., top : top + size, left : left + size]
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class FrozenClip(nn.Module):
    """A CLIP model that never trains: eval mode for good, no gradients into its weights.

    Gradients still flow to the *inputs* of `encode_images`, so a generator can be trained
    through CLIP's image encoder.
    """

    def __init__(
        self,
        model: nn.Module,  # open_clip CLIP with its weights loaded and `visual.preprocess_cfg` set
        tokenizer,  # open_clip tokenizer: list[str] -> (B, context_length) int64 token ids
        name: str,  # model identifier, recorded in the files made with it
        weights: str,  # path of the weights file, recorded likewise
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.weights = weights
        cfg = model.visual.preprocess_cfg
        size = cfg["size"]
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.mean = tuple(float(v) for v in cfg["mean"])
        self.std = tuple(float(v) for v in cfg["std"])
        self.interpolation = cfg.get("interpolation", "bicubic")
        self.resize_mode = cfg.get("resize_mode", "shortest")
        self.embed_dim = int(model.visual.output_dim)  # both towers project to this (open_clip's embed_dim)
        for p in self.model.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenClip":
        # Stays in eval mode even inside a module being trained (BatchNorm statistics, dropout).
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        return preprocess_images(x, self.image_size, self.mean, self.std, self.interpolation, self.resize_mode)

    def encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> (B, D) raw (unnormalised) image embeddings."""
        return self.model.encode_image(self.preprocess(x))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of strings, not one string")
        return self.tokenizer(list(texts)).to(self.device)

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """list of B strings -> (B, D) raw text embeddings."""
        return self.model.encode_text(self.tokenize(texts))


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Parameters of a CLIP weights file without unpickling arbitrary objects.

    safetensors; OpenAI's TorchScript archives (read by TorchScript's own loader, which builds
    only tensors and TorchScript modules); or a plain state dict read with weights_only=True.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if zipfile.is_zipfile(path) and _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but OpenAI's files are TorchScript
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        return {k: v for k, v in state.items() if k not in TORCHSCRIPT_EXTRA_KEYS}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a foreign or damaged file
        raise ValueError(f"{path}: not a readable CLIP weights file (safetensors, TorchScript or a state dict): {err}") from err
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _is_torchscript(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


@contextlib.contextmanager
def _quiet_open_clip():
    # open_clip warns on the root logger that a model built without weights is random;
    # ours are loaded right after, so the warning would only mislead a reader of the log.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def create_frozen_clip(
    model_name: str,  # open_clip architecture name (ViT-B-32-quickgelu) or 'local-dir:<folder>'
    weights: str | os.PathLike,  # local weights file, already checked
    preprocess: Mapping[str, Any] | None = None,  # mean, std, interpolation, resize_mode of the weights
    device: str | torch.device = "cpu",
) -> FrozenClip:
    """Build the architecture with open_clip's factory (no download), load the weights strictly."""
    if not model_name.startswith("local-dir:") and model_name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model '{model_name}'; known: {', '.join(open_clip.list_models())}")
    overrides = {k: v for k, v in (preprocess or {}).items() if k in ("mean", "std", "interpolation", "resize_mode")}
    with _quiet_open_clip():
        model = open_clip.create_model(model_name, load_weights=False, force_preprocess_cfg=overrides or None)
    state = read_state_dict(weights)
    # Buffers open_clip rebuilds rather than stores (the causal attention mask) may be in a TorchScript archive.
    rebuilt = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    state = {k: v for k, v in state.items() if k not in rebuilt}
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights}: weights do not fit open_clip model '{model_name}' "
            f"(missing {len(missing)}: {missing[:5]}; unexpected {len(unexpected)}: {unexpected[:5]})"
        )
    with _quiet_open_clip():
        tokenizer = open_clip.get_tokenizer(model_name)
    log.info("CLIP %s loaded from %s", model_name, weights)
    return FrozenClip(model, tokenizer, model_name, os.fspath(weights)).to(device)


def demo_folder_files(folder: str | os.PathLike) -> tuple[Path, Path]:
    """The config and weights file of a CLIP saved as an open_clip folder."""
    folder = Path(folder)
    return folder / FOLDER_CONFIG, folder / FOLDER_WEIGHTS


def load_clip(clip_cfg: Mapping[str, Any], device: str | torch.device = "cpu") -> FrozenClip:
    """The CLIP that `config["clip"]` names: the trained demo CLIP, or pretrained weights from a file.

    Missing pretrained weights raise `MissingWeightsError` with the command that fetches them.
    """
    if clip_cfg.get("train_demo", False):
        folder = Path(clip_cfg["demo"]["dir"])
        config_file, weights_file = demo_folder_files(folder)
        for path in (config_file, weights_file):
            if not path.is_file():
                raise MissingWeightsError(
                    f"demo CLIP file not found: {path}. Train it with: snakemake --cores 2 {weights_file}"
                )
        return create_frozen_clip(f"local-dir:{folder}", weights_file, device=device)
    name = clip_cfg.get("weights_name") or None
    spec = get_spec(name) if name else None
    sha256 = clip_cfg.get("sha256") or (spec.sha256 if spec else None)
    weights = resolve(clip_cfg["weights"], sha256, name)
    return create_frozen_clip(clip_cfg["model"], weights, spec.preprocess if spec else None, device)
