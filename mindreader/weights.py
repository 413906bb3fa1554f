"""Pretrained weights: a registry of every external network, checked by sha256, never fetched
while a rule runs.

Compute nodes and the development machines have no internet. Every network the workflow uses is
read from a local file named in the config; ``fetch_weights`` (a local rule, for a login node)
downloads the files the config names and verifies them. Each registry entry carries its checksum
and the preprocessing the network expects, so preprocessing travels with the weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mindreader.io import atomic_path

log = logging.getLogger(__name__)

# Where fetched files go unless the config names another path.
DEFAULT_DIR = Path("resources/weights")


@dataclass(frozen=True)
class WeightsSpec:
    """One downloadable weights file."""

    name: str  # registry key, as the config and `fetch_weights` name it
    url: str  # where a login node downloads it from
    sha256: str  # full hex digest, or the prefix (>= 8 hex digits) a torch-hub file name carries
    filename: str  # file name under resources/weights/ by default
    description: str  # what the network is and what uses it
    preprocess: dict = field(default_factory=dict)  # mean, std, image_size the network expects

    @property
    def default_path(self) -> Path:
        return DEFAULT_DIR / self.filename


REGISTRY: dict[str, WeightsSpec] = {}


def register(spec: WeightsSpec) -> WeightsSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"weights '{spec.name}' registered twice")
    if len(spec.sha256) < 8 or any(c not in "0123456789abcdef" for c in spec.sha256):
        raise ValueError(f"weights '{spec.name}': sha256 must be >= 8 lower-case hex digits, got '{spec.sha256}'")
    REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> WeightsSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown weights '{name}'; known: {', '.join(sorted(REGISTRY))}") from None


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class MissingWeightsError(FileNotFoundError):
    """A weights file the config names is absent; the message says how to fetch it."""


def fetch_command(name: str, dest: str | os.PathLike | None = None) -> str:
    """How to download registry entry ``name`` (to ``dest``), on a machine with internet.

    The `fetch_weights` rule fetches every weights file the config names; the Python call
    fetches this one file alone, to the path the config expects.
    """
    target = f", '{os.fspath(dest)}'" if dest is not None else ""
    return (
        "snakemake --cores 1 fetch_weights (add the --configfile you run with), on a machine with internet; "
        f"or for this file alone: python -c \"from mindreader.weights import fetch; fetch('{name}'{target})\""
    )


def resolve(path: str | os.PathLike, sha256: str | None, name: str | None = None) -> Path:
    """Return ``path`` if it exists and matches ``sha256`` (full digest or prefix); raise otherwise.

    ``name`` is the registry entry, used to tell the user how to fetch a missing file.
    """
    path = Path(path)
    if not path.is_file():
        how = f"Fetch it with: {fetch_command(name, path)}" if name else "Put the file there or point the config at it."
        raise MissingWeightsError(f"weights file not found: {path} (expected {name or 'weights'} there). {how}")
    if sha256:
        actual = sha256_of(path)
        if not actual.startswith(sha256.lower()):
            raise ValueError(f"{path}: sha256 {actual} does not match the expected {sha256}; the file is damaged or not {name or 'the expected weights'}")
    return path


def fetch(name: str, dest: str | os.PathLike | None = None) -> Path:
    """Download the registry entry ``name`` to ``dest`` (default under resources/weights/) and verify it."""
    spec = get_spec(name)
    dest = Path(dest) if dest else spec.default_path
    if dest.is_file() and sha256_of(dest).startswith(spec.sha256):
        log.info("%s: already present and verified at %s", name, dest)
        return dest
    log.info("fetching %s from %s", name, spec.url)
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(spec.url) as response, open(tmp, "wb") as out:
            shutil.copyfileobj(response, out)
        actual = sha256_of(tmp)
        if not actual.startswith(spec.sha256):
            raise ValueError(f"{spec.url}: downloaded file has sha256 {actual}, expected {spec.sha256}")
    return dest


# CLIP: OpenAI's released TorchScript files. URLs and checksums as open_clip 3.3.0 lists them
# (open_clip/pretrained.py, tag "openai"); OpenAI's URLs carry the file's sha256 in their path.
# open_clip architecture to use with them: ViT-B-32-quickgelu / ViT-L-14-quickgelu.
OPENAI_CLIP_PREPROCESS = {
    "mean": (0.48145466, 0.4578275, 0.40821073),
    "std": (0.26862954, 0.26130258, 0.27577711),
    "image_size": 224,
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}
register(
    WeightsSpec(
        name="clip-vit-b-32-openai",
        url="https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        sha256="40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
        filename="ViT-B-32.pt",
        description="OpenAI CLIP ViT-B/32 (512-d): the paper's CLIP space (open_clip model ViT-B-32-quickgelu)",
        preprocess=OPENAI_CLIP_PREPROCESS,
    )
)
register(
    WeightsSpec(
        name="clip-vit-l-14-openai",
        url="https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        sha256="b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
        filename="ViT-L-14.pt",
        description="OpenAI CLIP ViT-L/14 (768-d): the evaluation battery's CLIP (open_clip model ViT-L-14-quickgelu)",
        preprocess=OPENAI_CLIP_PREPROCESS,
    )
)

# Evaluation battery (mindreader.evaluation.networks). Torch-hub file names end in the first
# 8 hex digits of the file's sha256, which torch.hub checks; the URLs are the ones torchvision
# 0.29.1 (models/alexnet.py, inception.py, efficientnet.py) and pytorch-fid 0.3.0
# (inception.py, FID_WEIGHTS_URL) download from. SwAV's release file carries no checksum, so it
# has no entry: evaluation.networks.swav.sha256 must be set by whoever verified the file.
IMAGENET_PREPROCESS = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
register(
    WeightsSpec(
        name="inception_fid",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        sha256="6726825d",
        filename="pt_inception-2015-12-05-6726825d.pth",
        description="InceptionV3 with TensorFlow's 2015-12-05 FID weights (pytorch-fid): FID pool features",
        preprocess={"image_size": 299, "range": "[-1, 1] (scaled inside the network)"},
    )
)
register(
    WeightsSpec(
        name="alexnet",
        url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
        sha256="7be5be79",
        filename="alexnet-owt-7be5be79.pth",
        description="torchvision AlexNet (IMAGENET1K_V1): AlexNet(2)/(5) two-way identification",
        preprocess={**IMAGENET_PREPROCESS, "image_size": 256},
    )
)
register(
    WeightsSpec(
        name="inception_v3",
        url="https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        sha256="0cc3c7bd",
        filename="inception_v3_google-0cc3c7bd.pth",
        description="torchvision Inception v3 (IMAGENET1K_V1): Inception two-way identification",
        preprocess={**IMAGENET_PREPROCESS, "image_size": 342},
    )
)
register(
    WeightsSpec(
        name="efficientnet_b1",
        url="https://download.pytorch.org/models/efficientnet_b1-c27df63c.pth",
        sha256="c27df63c",
        filename="efficientnet_b1-c27df63c.pth",
        description="torchvision EfficientNet-B1 (IMAGENET1K_V2, torchvision's DEFAULT): EffNet-B distance",
        preprocess={**IMAGENET_PREPROCESS, "image_size": 255},
    )
)
