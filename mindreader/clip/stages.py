"""The CLIP stage's steps as the rules run them: NSD in, results/clip/* out.

Each function is what one script calls; it joins the NSD reader to the library functions of
this package and writes the rule's outputs atomically.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import torch

from mindreader.clip.demo import CaptionedImages, build_demo_clip, save_demo_clip, train_demo_clip
from mindreader.clip.embed import TargetAugmentation, embed_image_batches, write_image_embeddings
from mindreader.clip.models import load_clip
from mindreader.clip.screening import screen_captions, write_caption_embeddings
from mindreader.io import atomic_path, write_json
from mindreader.nsd import NSD

log = logging.getLogger(__name__)


def stimulus_ids(nsd: NSD, subjects: Sequence[str], sessions: int) -> np.ndarray:
    """Every image any of ``subjects`` saw in sessions 1..``sessions``, each once, ascending."""
    ids = np.unique(np.concatenate([nsd.subject_images(s, sessions) for s in subjects]))
    log.info("%d unique images seen by %s in %d sessions", len(ids), ", ".join(subjects), sessions)
    return ids.astype(np.int64)


def make_image_embeddings(
    nsd_root: str | os.PathLike,
    subjects: Sequence[str],
    sessions: int,  # prepare.sessions: the sessions the workflow reads
    clip_cfg: Mapping[str, Any],  # config["clip"]
    device: torch.device,
    output: str | os.PathLike,  # results/clip/images.h5
) -> None:
    nsd = NSD(nsd_root)
    ids = stimulus_ids(nsd, subjects, sessions)
    clip = load_clip(clip_cfg, device)
    batches = nsd.iter_images(ids, int(clip_cfg["batch_size"]))
    augmentation = TargetAugmentation(**clip_cfg["augment"])
    embeddings = embed_image_batches(clip, batches, len(ids), int(clip_cfg["n_aug"]), augmentation)
    write_image_embeddings(output, embeddings, clip, float(clip_cfg["clamp"]), bool(clip_cfg["normalize"]))


def make_caption_embeddings(
    nsd_root: str | os.PathLike,
    images_h5: str | os.PathLike,  # results/clip/images.h5 (ids and raw image embeddings)
    clip_cfg: Mapping[str, Any],
    device: torch.device,
    seed: int,
    output_h5: str | os.PathLike,  # results/clip/captions.h5
    output_tsv: str | os.PathLike,  # results/clip/captions_selected.tsv
) -> None:
    with h5py.File(images_h5, "r") as f:
        ids, image_raw = f["nsd_id"][()], f["raw"][()]
    clip = load_clip(clip_cfg, device)
    if image_raw.shape[1] != clip.embed_dim:
        raise ValueError(f"{images_h5}: embeddings are {image_raw.shape[1]}-d but the CLIP loaded is {clip.embed_dim}-d; rebuild it")
    screening = clip_cfg["screening"]
    screened = screen_captions(
        clip, ids, image_raw, NSD(nsd_root).captions(ids), screening["rule"], int(screening["k"]), int(clip_cfg["batch_size"]), seed
    )
    write_caption_embeddings(
        output_h5, output_tsv, screened, clip, screening["rule"], int(screening["k"]), float(clip_cfg["clamp"]), bool(clip_cfg["normalize"])
    )


def split_ids(prepared_files: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, held-out ids) over all prepared subjects; an image that is test for any subject is held out."""
    train, test = [], []
    for path in prepared_files:
        with h5py.File(path, "r") as f:
            train.append(f["train/nsd_id"][()])
            test.append(f["test/nsd_id"][()])
    heldout = np.unique(np.concatenate(test))
    return np.setdiff1d(np.concatenate(train), heldout), heldout


# Where the demo CLIP's training images come from (clip.demo.corpus).
DEMO_CORPORA = ("tree", "subjects")


def demo_clip_ids(nsd: NSD, prepared_files: Sequence[str | os.PathLike], corpus: str) -> tuple[np.ndarray, np.ndarray]:
    """(training ids, held-out ids) of the demo CLIP; held out: any prepared subject's test images.

    ``tree``: every stimulus of the tree but the held-out ones, as a real CLIP learns from images
    outside the experiment (the synthetic tree draws all 8 subjects' images). ``subjects``: the
    prepared subjects' training images only.
    """
    train_ids, heldout_ids = split_ids(prepared_files)
    if corpus == "tree":
        train_ids = np.setdiff1d(np.arange(nsd.n_images, dtype=np.int64), heldout_ids)
    elif corpus != "subjects":
        raise ValueError(f"clip.demo.corpus must be one of {DEMO_CORPORA}, got {corpus!r}")
    return train_ids, heldout_ids


def make_demo_clip(
    nsd_root: str | os.PathLike,
    prepared_files: Sequence[str | os.PathLike],  # results/prepared/{subject}.h5 of every subject
    clip_cfg: Mapping[str, Any],
    device: torch.device,
    seed: int,
    output_curve: str | os.PathLike,  # curve.csv beside the model
    output_metrics: str | os.PathLike,  # metrics.json beside the model
) -> None:
    """Train the demo CLIP on its training images' captions; save it to clip_cfg['demo']['dir']."""
    demo_cfg = clip_cfg["demo"]
    nsd = NSD(nsd_root)
    train_ids, heldout_ids = demo_clip_ids(nsd, prepared_files, demo_cfg["corpus"])
    if len(train_ids) == 0 or len(heldout_ids) == 0:
        raise ValueError(f"{', '.join(map(str, prepared_files))}: need training and held-out images, got {len(train_ids)} and {len(heldout_ids)}")
    log.info(
        "demo CLIP: %d training images (corpus %s), %d held out (test images of any subject)",
        len(train_ids), demo_cfg["corpus"], len(heldout_ids),
    )
    torch.manual_seed(seed)
    model, tokenizer = build_demo_clip(demo_cfg)
    captions = nsd.captions(np.concatenate([train_ids, heldout_ids]))
    train = CaptionedImages.from_captions(nsd.read_images(train_ids), [captions[int(i)] for i in train_ids], tokenizer)
    heldout = CaptionedImages.from_captions(nsd.read_images(heldout_ids), [captions[int(i)] for i in heldout_ids], tokenizer)
    curve, metrics = train_demo_clip(train, heldout, demo_cfg, model, device, seed)
    save_demo_clip(model.cpu(), demo_cfg, demo_cfg["dir"])
    with atomic_path(output_curve) as tmp:
        pd.DataFrame(curve).to_csv(tmp, index=False)
    write_json(output_metrics, metrics)
