"""CLIP space: loading CLIP offline, the demo CLIP, image and caption embeddings, caption screening.

Public surface: `load_clip(config["clip"], device) -> FrozenClip` (what every stage that needs
CLIP calls), `clip_targets` (the paper's clamp + L2-normalise), `select_captions` (screening
rules). The rules in rules/clip.smk write results/clip/images.h5 and captions.h5.
"""

from mindreader.clip.embed import clip_targets
from mindreader.clip.models import FrozenClip, create_frozen_clip, load_clip, preprocess_images
from mindreader.clip.screening import SCREENING_RULES, caption_scores, select_captions

__all__ = [
    "FrozenClip",
    "SCREENING_RULES",
    "caption_scores",
    "clip_targets",
    "create_frozen_clip",
    "load_clip",
    "preprocess_images",
    "select_captions",
]
