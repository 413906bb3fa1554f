"""Scene recovery on the synthetic NSD: does a reconstruction show the planted scene?

The synthetic tree's `synthetic/scenes.json` describes every image exactly, so a reconstruction
can be scored against planted truth from its pixels alone, at whatever resolution it has:

- ``background_colour``: the mean colour of the pixels outside every shape's mask (masks drawn
  from the scene description at the reconstruction's resolution by the synthetic NSD's own
  `draw_scene`; anti-aliased edge pixels count as inside), mapped to the nearest palette colour,
  is the scene's background.
- ``largest_shape_colour`` (position-free): among the pixels whose nearest palette colour differs
  from the background colour recovered above, the most frequent palette colour is the largest
  shape's colour.
- ``largest_shape_position``: the centroid of the pixels of that most frequent colour lies inside
  the largest shape's bounding box. Only that colour's pixels count, so that other shapes do not
  pull the centroid away from a correctly drawn largest shape.

Nearest palette colours are taken in RGB: the palette's closest pair (orange, yellow) is 80 apart.
The largest shape is the one with the largest visible area in the drawn scene (after later shapes
cover earlier ones), measured at AREA_SIDE px, so it does not depend on a reconstruction's
resolution. An image without any pixel of a non-background colour fails both shape items.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from mindreader.evaluation.bootstrap import mean_ci
from mindreader.synth.scenes import COLOURS, PALETTE, Scene, Shape, draw_scene, shape_outline

SCORES = ("background_colour", "largest_shape_colour", "largest_shape_position")
# Planted factors a linear probe reads from embeddings (mindreader.evaluation.probes).
FACTORS = ("background_colour", "largest_shape_colour", "largest_shape_kind", "largest_shape_quadrant", "shape_count")
QUADRANTS = ("top_left", "top_right", "bottom_left", "bottom_right")
# Side at which shapes' visible areas are measured to find the largest (fine enough that the
# anti-aliased edge is a small share of even the smallest shape).
AREA_SIDE = 128
# Candidate points per axis when searching the best image-independent position (chance level).
POSITION_GRID = 256
PALETTE_RGB = np.array([PALETTE[c] for c in COLOURS], dtype=np.float64)


def read_scenes(path: str | os.PathLike) -> dict[int, Scene]:
    """nsdId -> Scene from a synthetic tree's scenes.json (`mindreader.synth.SCENES_RELPATH`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no scene descriptions; scene recovery needs a synthetic NSD's scenes.json")
    records = json.loads(path.read_text())
    if not isinstance(records, list) or not all(isinstance(r, dict) and "nsdId" in r for r in records):
        raise ValueError(f"{path}: expected a JSON list of records with nsdId, background and shapes")
    return {int(r["nsdId"]): Scene.from_dict(r) for r in records}


def scenes_of(scenes: Mapping[int, Scene], nsd_ids: Sequence[int], source: str = "scenes.json") -> list[Scene]:
    """The scenes of ``nsd_ids`` in their order; an id without a scene is an error naming it."""
    missing = [int(i) for i in nsd_ids if int(i) not in scenes]
    if missing:
        raise KeyError(f"{source}: no scene for nsdIds {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    return [scenes[int(i)] for i in nsd_ids]


def shape_coverage(shape: Shape, side: int) -> np.ndarray:
    """Float (side, side) share of each pixel that ``shape`` covers when drawn at ``side`` px.

    Drawn by `draw_scene` itself (the shape in white on black), so the mask is exactly what the
    stimulus shows, anti-aliasing included.
    """
    alone = Scene("black", (dataclasses.replace(shape, colour="white"),))
    drawn = draw_scene(alone, side)[..., 0].astype(np.float64)
    black, white = PALETTE["black"][0], PALETTE["white"][0]
    return np.clip((drawn - black) / (white - black), 0.0, 1.0)


def visible_areas(scene: Scene, side: int = AREA_SIDE) -> np.ndarray:
    """Each shape's visible area as a fraction of the image, later shapes covering earlier ones."""
    coverages = [shape_coverage(s, side) for s in scene.shapes]
    areas = []
    for i, coverage in enumerate(coverages):
        visible = coverage.copy()
        for later in coverages[i + 1 :]:
            visible *= 1.0 - later
        areas.append(visible.mean())
    return np.array(areas)


def largest_shape(scene: Scene) -> Shape:
    """The shape with the largest visible area (the first drawn of equals)."""
    if not scene.shapes:
        raise ValueError("a scene without shapes has no largest shape")
    return scene.shapes[int(np.argmax(visible_areas(scene)))]


def quadrant(centre: tuple[float, float]) -> str:
    """The quadrant of a point given as (x, y) fractions of the side, y downwards; a point on a
    midline belongs to the right or bottom half."""
    x, y = centre
    return ("bottom_" if y >= 0.5 else "top_") + ("right" if x >= 0.5 else "left")


def scene_factors(scene: Scene) -> dict:
    """The planted factors a probe reads: FACTORS -> label."""
    largest = largest_shape(scene)
    return {
        "background_colour": scene.background,
        "largest_shape_colour": largest.colour,
        "largest_shape_kind": largest.kind,
        "largest_shape_quadrant": quadrant(largest.centre),
        "shape_count": len(scene.shapes),
    }


def factor_table(scenes: Sequence[Scene]) -> pd.DataFrame:
    """One row of scene_factors per scene, columns FACTORS."""
    return pd.DataFrame([scene_factors(s) for s in scenes], columns=list(FACTORS))


def bounding_box(shape: Shape) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the drawn shape as fractions of the side."""
    outline = shape_outline(shape, 1.0)
    if outline is None:
        r = shape.size / 2
        return shape.centre[0] - r, shape.centre[1] - r, shape.centre[0] + r, shape.centre[1] + r
    xs, ys = zip(*outline)
    return min(xs), min(ys), max(xs), max(ys)


def nearest_palette(pixels: np.ndarray) -> np.ndarray:
    """Index into COLOURS of the nearest palette colour (RGB distance) of each (..., 3) colour."""
    distances = ((np.asarray(pixels, dtype=np.float64)[..., None, :] - PALETTE_RGB) ** 2).sum(axis=-1)
    return distances.argmin(axis=-1)


def score_image(image: np.ndarray, scene: Scene) -> dict:
    """Scene recovery of one uint8 (S, S, 3) reconstruction of ``scene``: SCORES -> 0/1, and what
    was recovered (background and shape colour names, the centroid as fractions of the side)."""
    side = image.shape[0]
    if image.ndim != 3 or image.shape != (side, side, 3):
        raise ValueError(f"a reconstruction must be a square (S, S, 3) image, got {image.shape}")
    inside_any = np.zeros((side, side), dtype=bool)
    for shape in scene.shapes:
        inside_any |= shape_coverage(shape, side) > 0
    if inside_any.all():
        raise ValueError(f"no pixel of a {side}-px image lies outside every shape of {scene}")
    background = int(nearest_palette(image[~inside_any].mean(axis=0)))
    labels = nearest_palette(image)
    foreground = labels != background
    counts = np.bincount(labels[foreground], minlength=len(COLOURS))
    target = largest_shape(scene)
    result = {
        "recovered_background": COLOURS[background],
        "recovered_shape_colour": "",
        "centroid_x": float("nan"),
        "centroid_y": float("nan"),
        "background_colour": int(COLOURS[background] == scene.background),
        "largest_shape_colour": 0,
        "largest_shape_position": 0,
    }
    if counts.sum() == 0:
        return result
    shape_colour = int(counts.argmax())
    rows, cols = np.nonzero(labels == shape_colour)
    # pixel centres, as fractions of the side
    x, y = (cols.mean() + 0.5) / side, (rows.mean() + 0.5) / side
    left, top, right, bottom = bounding_box(target)
    result.update(
        recovered_shape_colour=COLOURS[shape_colour],
        centroid_x=float(x),
        centroid_y=float(y),
        largest_shape_colour=int(COLOURS[shape_colour] == target.colour),
        largest_shape_position=int(left <= x <= right and top <= y <= bottom),
    )
    return result


def score_reconstructions(images: np.ndarray, nsd_ids: Sequence[int], scenes: Mapping[int, Scene]) -> pd.DataFrame:
    """Per-image scene recovery of uint8 (N, S, S, 3) reconstructions of the scenes of ``nsd_ids``
    (any S): a row per image with nsd_id, SCORES (0/1) and what was recovered (score_image)."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"reconstructions must be uint8 (N, S, S, 3), got {images.dtype} {images.shape}")
    if len(nsd_ids) != len(images):
        raise ValueError(f"{len(images)} reconstructions but {len(nsd_ids)} nsdIds")
    rows = [
        {"nsd_id": int(i), **score_image(image, scene)}
        for i, image, scene in zip(nsd_ids, images, scenes_of(scenes, nsd_ids))
    ]
    return pd.DataFrame(rows)


def best_constant_position(boxes: np.ndarray) -> float:
    """The largest fraction of (left, top, right, bottom) boxes that one point lies in, searched
    over a POSITION_GRID x POSITION_GRID grid of points spanning the image."""
    grid = (np.arange(POSITION_GRID) + 0.5) / POSITION_GRID
    in_x = (boxes[:, [0]] <= grid) & (grid <= boxes[:, [2]])  # (N, G)
    in_y = (boxes[:, [1]] <= grid) & (grid <= boxes[:, [3]])
    return float((in_y.T.astype(np.float64) @ in_x).max() / len(boxes))


def chance_levels(scenes: Sequence[Scene]) -> dict[str, float]:
    """SCORES -> the accuracy of the best image-independent answer on these (test) scenes.

    Colours: always answering the test set's most frequent background (largest-shape) colour, i.e.
    the largest colour share. Position: always putting the centroid at the one point that lies in
    the most largest-shape bounding boxes. These are the highest accuracies an answer that ignores
    the image can reach (a uniformly random palette colour, 1/12, or a uniformly random point, the
    mean box area, would set the bar lower than a generator that always draws the same thing).
    """
    if not scenes:
        raise ValueError("chance levels need at least one scene")
    largest = [largest_shape(s) for s in scenes]

    def majority_share(labels: list[str]) -> float:
        return max(labels.count(label) for label in set(labels)) / len(labels)

    return {
        "background_colour": majority_share([s.background for s in scenes]),
        "largest_shape_colour": majority_share([s.colour for s in largest]),
        "largest_shape_position": best_constant_position(np.array([bounding_box(s) for s in largest])),
    }


def scene_recovery(
    images: np.ndarray,  # uint8 (N, S, S, 3) reconstructions, any S
    nsd_ids: Sequence[int],  # nsdId of each reconstruction
    scenes: Mapping[int, Scene],  # nsdId -> scene (read_scenes)
    n_boot: int,  # bootstrap resamples of the test images
    seed: int,  # seed of the resamples
) -> tuple[dict, pd.DataFrame]:
    """Summary (SCORES -> value, ci95 (bootstrap over images), chance) and the per-image table."""
    per_image = score_reconstructions(images, nsd_ids, scenes)
    chance = chance_levels(scenes_of(scenes, nsd_ids))
    summary = {name: {**mean_ci(per_image[name].to_numpy(), n_boot, seed), "chance": chance[name]} for name in SCORES}
    return summary, per_image
