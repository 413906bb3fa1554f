"""The feature networks of the evaluation battery, each loaded from a local, checksummed file.

Every network here maps float images (B, 3, H, W) in [0, 1] to named (B, ...) feature tensors.
Preprocessing follows MindEye's metric code (the field's reference): resize the square image to
the network's side (bilinear), ImageNet normalisation for the CNNs. A network whose weights file
is absent (or has no verified checksum) is not built: `load_network` returns the reason instead,
and the metrics that need it are reported missing - never computed with random weights.
"""

from __future__ import annotations

import os
import unittest.mock
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from mindreader.weights import REGISTRY, MissingWeightsError, resolve

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NetworkSpec:
    """How to build one feature network and which features it gives."""

    name: str  # key in evaluation.networks (and, but for swav, in the weights registry)
    build: Callable[[], nn.Module]  # the architecture, randomly initialised (weights load after)
    nodes: Mapping[str, str]  # feature name -> torchvision graph node (empty: the module's output)
    side: int  # input side the network sees after resizing (MindEye's Resize value)
    normalise: bool = True  # ImageNet mean/std after resizing
    prepare_state: Callable[[dict], dict] | None = None  # edits a loaded state dict (key prefixes)
    strict: bool = True  # every key of the state dict must match
    description: str = ""  # what the features are, for the tables' notes


def _swav_state(state: dict) -> dict:
    # The SwAV release holds a DataParallel ResNet-50 ("module." prefix) plus its projection head
    # and prototypes, which the backbone has no place for.
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith(("projection_head", "prototypes"))}


SPECS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        NetworkSpec(
            name="alexnet",
            build=lambda: torchvision.models.alexnet(),
            nodes={"alex2": "features.4", "alex5": "features.11"},
            side=256,
            description="torchvision AlexNet, ReLU after conv2 (features.4) and conv5 (features.11)",
        ),
        NetworkSpec(
            name="inception_v3",
            # transform_input as torchvision sets it for its pretrained weights
            build=lambda: torchvision.models.inception_v3(aux_logits=True, transform_input=True, init_weights=False),
            nodes={"incep": "avgpool"},
            side=342,
            description="torchvision Inception v3, avgpool (2048-d)",
        ),
        NetworkSpec(
            name="efficientnet_b1",
            build=lambda: torchvision.models.efficientnet_b1(),
            nodes={"eff": "avgpool"},
            side=255,
            description="torchvision EfficientNet-B1 (IMAGENET1K_V2 weights), avgpool",
        ),
        NetworkSpec(
            name="swav",
            build=lambda: torchvision.models.resnet50(),
            nodes={"swav": "avgpool"},
            side=224,
            prepare_state=_swav_state,
            strict=False,  # the release has no classifier: fc stays unused (avgpool comes before it)
            description="SwAV ResNet-50 (800 epochs), avgpool",
        ),
    )
}
# FID's network is built by pytorch-fid itself (resizes to 299 and normalises to [-1, 1] inside).
FID_NETWORK = "inception_fid"


class FeatureNetwork(nn.Module):
    """A loaded network: float images (B, 3, H, W) in [0, 1] -> {feature name: (B, D)}."""

    def __init__(
        self,
        body: nn.Module,  # returns a dict of feature tensors (or one tensor, named by `single`)
        side: int,  # input side after resizing
        normalise: bool,  # apply ImageNet mean/std
        single: str | None = None,  # name of the only output when `body` returns a tensor
    ):
        super().__init__()
        self.body = body.eval().requires_grad_(False)
        self.side = side
        self.normalise = normalise
        self.single = single
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images (B, 3, H, W), got {tuple(x.shape)}")
        if self.side and x.shape[-2:] != (self.side, self.side):
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", align_corners=False, antialias=True)
        if self.normalise:
            x = (x - self.mean) / self.std
        out = self.body(x)
        if self.single is not None:
            out = {self.single: out}
        return {name: feats.flatten(1).float() for name, feats in out.items()}


def build_network(name: str, state: dict[str, torch.Tensor]) -> FeatureNetwork:
    """The network `name` with the weights `state` (a state dict already read from its file)."""
    if name == FID_NETWORK:
        return _fid_network(state)
    try:
        spec = SPECS[name]
    except KeyError:
        raise KeyError(f"unknown feature network '{name}'; known: {', '.join([FID_NETWORK, *SPECS])}") from None
    model = spec.build()
    if spec.prepare_state is not None:
        state = spec.prepare_state(state)
    result = model.load_state_dict(state, strict=spec.strict)
    if not spec.strict:
        wanted = [k for k in result.missing_keys if not k.startswith("fc.")]
        if wanted:
            raise ValueError(f"{name}: the weights lack {len(wanted)} backbone tensors, e.g. {wanted[:3]}")
    body = create_feature_extractor(model.eval(), return_nodes={node: name for name, node in spec.nodes.items()})
    return FeatureNetwork(body, spec.side, spec.normalise)


def _fid_network(state: dict[str, torch.Tensor]) -> FeatureNetwork:
    from pytorch_fid import inception as fid_inception

    # pytorch-fid builds its patched Inception and then downloads the weights; hand it the
    # state dict read from the local file instead, so the architecture is exactly its own.
    with unittest.mock.patch.object(fid_inception, "load_state_dict_from_url", lambda *args, **kwargs: state):
        net = fid_inception.InceptionV3(
            [fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True
        )

    class PoolFeatures(nn.Module):
        def __init__(self, inception: nn.Module):
            super().__init__()
            self.inception = inception

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inception(x)[0]

    return FeatureNetwork(PoolFeatures(net), side=0, normalise=False, single="fid")


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch file (never unpickling code)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    return state


def load_network(name: str, cfg: Mapping[str, Any], device: torch.device) -> tuple[FeatureNetwork | None, str | None]:
    """(network, None) when its weights file is there and verified, else (None, why not).

    ``cfg`` is ``evaluation.networks[name]``: ``weights`` (the file), ``weights_name`` (registry
    entry) and ``sha256`` (default: the registry's). A file that is present but fails its
    checksum is an error, not a missing metric.
    """
    registered = cfg.get("weights_name") or None
    sha256 = cfg.get("sha256") or (REGISTRY[registered].sha256 if registered in REGISTRY else None)
    if not sha256:
        return None, (
            f"no verified sha256 for the '{name}' weights: fetch {cfg['weights']} by hand and set "
            f"evaluation.networks.{name}.sha256 to its digest"
        )
    try:
        path = resolve(cfg["weights"], sha256, registered)
    except MissingWeightsError as err:
        return None, str(err)
    return build_network(name, read_weights(path)).to(device), None
