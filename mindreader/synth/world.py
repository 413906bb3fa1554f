"""Write a whole synthetic NSD tree: design, stimuli, captions, masks and betas, marker last.

Everything goes through `mindreader.nsd.write`, so the tree has the real NSD layout and the same
reader serves both. Besides the NSD files, `synthetic/` holds what only a synthetic world can
offer: `world.json` (the parameters, written first), `scenes.json` (every image's scene and
captions with their flaw labels) and `{subject}_voxels.csv` (each ROI voxel's tuning: low- vs
high-level share, reliability, receptive field), so tests and people can check what the
workflow recovers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mindreader.nsd import write as nsd_write
from mindreader.io import atomic_path, write_json
from mindreader.nsd.paths import BETAS_FORMATS, subject_number
from mindreader.synth.brain import make_brain, pooled_pixels, scene_features, session_betas, stimulus_signal
from mindreader.synth.captions import caption_scene
from mindreader.synth.design import N_SUBJECTS, coco_assignment, make_design, stim_info_table
from mindreader.synth.draws import Draws, stream_seed
from mindreader.synth.scenes import Scene, draw_scenes, sample_scenes

log = logging.getLogger(__name__)

MARKER_NAME = ".synthetic_complete.json"
WORLD_RELPATH = "synthetic/world.json"
SCENES_RELPATH = "synthetic/scenes.json"
VOXELS_RELPATH = "synthetic/{subject}_voxels.csv"
# Top-level folders a synthetic tree consists of; rewriting a tree removes them first.
OWNED_FOLDERS = ("nsddata", "nsddata_betas", "nsddata_stimuli", "synthetic")


@dataclass(frozen=True)
class SyntheticSpec:
    """The parameters of a synthetic world (config key `synthetic`, see config/README.md)."""

    seed: int  # seed of every random choice of the world
    image_side: int  # side of the square stimuli, px
    n_shared: int  # images every subject sees
    n_specific: int  # images each subject alone sees
    repeats: int  # presentations of every image
    trials_per_session: int  # trials in one session's betas
    volume_shape: tuple[int, int, int]  # (X, Y, Z) of betas and masks
    roi_voxels: int  # approximate nsdgeneral size (each subject's differs by up to 8%)
    snr: float  # stimulus-driven signal variance / trial noise variance in ROI voxels
    captions_per_image: int  # COCO-style captions per image
    betas_formats: tuple[str, ...]  # "nifti" and/or "hdf5"

    @classmethod
    def from_config(cls, synthetic: dict) -> "SyntheticSpec":
        """From the config's `synthetic` section (as validated, with defaults; `enabled` is ignored)."""
        fields = set(cls.__dataclass_fields__)
        missing = fields - set(synthetic)
        unknown = set(synthetic) - fields - {"enabled"}
        if missing or unknown:
            raise ValueError(f"synthetic config: missing keys {sorted(missing)}, unknown keys {sorted(unknown)}")
        values = {k: synthetic[k] for k in fields}
        values["volume_shape"] = tuple(int(v) for v in values["volume_shape"])
        values["betas_formats"] = tuple(values["betas_formats"])
        bad = set(values["betas_formats"]) - set(BETAS_FORMATS)
        if bad or not values["betas_formats"]:
            raise ValueError(f"synthetic.betas_formats must be a non-empty subset of {BETAS_FORMATS}, got {synthetic['betas_formats']}")
        return cls(**values)


def _rng(spec: SyntheticSpec, *keys: str | int) -> np.random.Generator:
    return np.random.default_rng(stream_seed(spec.seed, *keys))


def clear_previous_tree(root: Path) -> None:
    """Make ``root`` ready for a new tree: remove an earlier synthetic tree, refuse anything else.

    A root with files but no synthetic/world.json may be a real NSD (synthetic.enabled left on by
    mistake): never delete that.
    """
    if not root.exists() or not any(root.iterdir()):
        return
    if not (root / WORLD_RELPATH).exists():
        raise FileExistsError(
            f"{root} holds files but no {WORLD_RELPATH}, so it is not a synthetic NSD this workflow wrote; "
            "refusing to write over it. To read a real NSD there set synthetic.enabled: false, "
            "or point nsd_root at an empty or new folder."
        )
    (root / MARKER_NAME).unlink(missing_ok=True)
    for folder in OWNED_FOLDERS:
        shutil.rmtree(root / folder, ignore_errors=True)


def write_coco_captions(root: Path, spec: SyntheticSpec, scenes: list[Scene], coco_ids: np.ndarray,
                   coco_splits: np.ndarray) -> list[list[dict]]:
    """Write both COCO caption files; return every image's captions as [{caption, flaw}, ...]."""
    draws = Draws(_rng(spec, "captions"))
    per_image = [caption_scene(scene, draws, spec.captions_per_image) for scene in scenes]
    documents = {split: ([], []) for split in ("train2017", "val2017")}
    annotation_id = 0  # unique over both files, as COCO's are
    for nsd_id, captions in enumerate(per_image):
        images, annotations = documents[coco_splits[nsd_id]]
        coco_id = int(coco_ids[nsd_id])
        images.append({"id": coco_id, "file_name": f"{coco_id:012d}.jpg", "width": spec.image_side, "height": spec.image_side})
        for caption in captions:
            annotation_id += 1
            annotations.append({"id": annotation_id, "image_id": coco_id, "caption": caption.text})
    for split, (images, annotations) in documents.items():
        nsd_write.write_captions(root, split, images, annotations)
    return [[{"caption": c.text, "flaw": c.flaw} for c in captions] for captions in per_image]


def write_subject(root: Path, spec: SyntheticSpec, subject: str, design, low_features: np.ndarray,
                  high_features: np.ndarray) -> int:
    """Write a subject's nsdgeneral mask and every session's betas; return its ROI size."""
    number = subject_number(subject)
    brain = make_brain(_rng(spec, "brain", number), spec.volume_shape, spec.roi_voxels, high_features.shape[1])
    nsd_write.write_mask(root, subject, brain.mask)
    with atomic_path(root / VOXELS_RELPATH.format(subject=subject)) as tmp:
        brain.voxel_table().to_csv(tmp, index=False, float_format="%.5g")
    slot_ids = design.subjectim[number - 1]
    slot_signal = stimulus_signal(brain.tuning, low_features[slot_ids], high_features[slot_ids])
    per_session = spec.trials_per_session
    for session in tqdm(range(1, design.n_sessions + 1), desc=f"{subject} betas", unit="session"):
        slots = design.masterordering[(session - 1) * per_session : session * per_session]
        noise_rng = _rng(spec, "noise", number, session)
        volume = session_betas(noise_rng, brain, slot_signal[slots], spec.snr)
        nsd_write.write_betas(root, subject, session, volume, formats=spec.betas_formats)
    n_roi = int((brain.mask > 0).sum())
    log.info("%s: %d brain voxels, %d in nsdgeneral, %d sessions", subject, int((brain.mask >= 0).sum()), n_roi, design.n_sessions)
    return n_roi


def write_synthetic_nsd(root: str | os.PathLike, spec: SyntheticSpec, subjects: list[str]) -> dict:
    """Write a synthetic NSD at ``root`` with betas for ``subjects``; return the marker's content.

    The design covers all 8 NSD subjects (so stim info and expdesign look like NSD's); betas and
    masks are written for ``subjects`` only. Each subject's brain depends only on the seed and its
    number, not on which other subjects are configured. The marker `<root>/.synthetic_complete.json`
    is written last: its presence means the tree is complete.
    """
    root = Path(root)
    unknown = [s for s in subjects if not 1 <= subject_number(s) <= N_SUBJECTS]
    if unknown:
        raise ValueError(f"synthetic NSD has subjects subj01..subj{N_SUBJECTS:02d}; got {unknown}")
    clear_previous_tree(root)
    write_json(root / WORLD_RELPATH, {"spec": asdict(spec), "subjects": list(subjects)})

    design = make_design(_rng(spec, "design"), spec.n_shared, spec.n_specific, spec.repeats, spec.trials_per_session)
    log.info("design: %d images, %d slots, %d sessions of %d trials", design.n_images, design.subjectim.shape[1],
             design.n_sessions, design.trials_per_session)
    nsd_write.write_expdesign(root, design.masterordering, design.subjectim, design.sharedix)
    coco_ids, coco_splits = coco_assignment(_rng(spec, "coco"), design.n_images)
    nsd_write.write_stim_info(root, stim_info_table(design, coco_ids, coco_splits, spec.repeats))

    scenes = sample_scenes(Draws(_rng(spec, "scenes")), design.n_images)
    images = draw_scenes(scenes, spec.image_side)
    nsd_write.write_stimuli(root, images)
    captions = write_coco_captions(root, spec, scenes, coco_ids, coco_splits)
    scene_records = [
        {"nsdId": i, "cocoId": int(coco_ids[i]), "cocoSplit": str(coco_splits[i]), **scene.to_dict(), "captions": captions[i]}
        for i, scene in enumerate(scenes)
    ]
    with atomic_path(root / SCENES_RELPATH) as tmp:
        # one image per line: readable, and far faster to write than indented JSON
        tmp.write_text("[\n" + ",\n".join(json.dumps(r) for r in scene_records) + "\n]\n")
    log.info("stimuli: %d scenes at %d px with %d captions each", len(scenes), spec.image_side, spec.captions_per_image)

    low_features = pooled_pixels(images)
    high_features = scene_features(scenes)
    roi_sizes = {s: write_subject(root, spec, s, design, low_features, high_features) for s in subjects}

    marker = {
        "spec": asdict(spec),
        "subjects": list(subjects),
        "n_images": design.n_images,
        "n_sessions": design.n_sessions,
        "trials_per_session": design.trials_per_session,
        "nsdgeneral_voxels": roi_sizes,
    }
    write_json(root / MARKER_NAME, marker)
    return marker
