"""Scenes of the synthetic NSD: 1-3 coloured shapes on a coloured background, drawn with PIL.

A scene is data first (kinds, colours, centres, sizes), so captions, simulated brains and tests
all derive from the same description; `draw_scene` only renders it. Scenes stay simple (few,
large, flat-coloured shapes) so that a small GAN at 32-64 px can learn colour and layout.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from mindreader.synth.draws import Draws

# Named colours: shapes and backgrounds draw from the same palette.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 220, 40),
    "green": (50, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 70, 210),
    "purple": (130, 50, 170),
    "pink": (240, 120, 180),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "brown": (130, 80, 40),
}
COLOURS = tuple(PALETTE)
KINDS = ("circle", "square", "triangle", "star", "diamond", "cross")
MAX_SHAPES = 3
# Probability of a scene holding 1, 2, 3 shapes.
COUNT_PROBS = (0.4, 0.35, 0.25)
# Range of a shape's size (diameter of its bounding circle, as a fraction of the image side) by
# the number of shapes in the scene, so crowded scenes hold smaller shapes.
SIZE_RANGE = {1: (0.40, 0.75), 2: (0.32, 0.55), 3: (0.26, 0.45)}
# A shape's colour must differ from the background by at least this RGB distance to stay visible.
MIN_CONTRAST = 110.0
# Centres of two shapes keep at least this fraction of their summed radii apart (some overlap).
MIN_SEPARATION = 0.8
PLACEMENT_TRIES = 30
# Shapes are tilted by at most this many degrees (upright shapes are easier for a small GAN).
MAX_TILT = 15.0
# Drawing at this multiple of the side and downsampling gives anti-aliased edges.
SUPERSAMPLE = 2


@dataclass(frozen=True)
class Shape:
    kind: str  # one of KINDS
    colour: str  # a PALETTE name
    centre: tuple[float, float]  # (x, y) as fractions of the side, y downwards
    size: float  # diameter of the bounding circle, fraction of the side
    angle: float  # tilt in degrees from upright (ignored for circles)


@dataclass(frozen=True)
class Scene:
    background: str  # a PALETTE name
    shapes: tuple[Shape, ...]  # drawn in this order (later ones on top)

    def to_dict(self) -> dict:
        return {"background": self.background, "shapes": [asdict(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        shapes = tuple(
            Shape(s["kind"], s["colour"], tuple(s["centre"]), float(s["size"]), float(s["angle"])) for s in data["shapes"]
        )
        return cls(data["background"], shapes)


def _contrast(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(PALETTE[a], PALETTE[b])))


@functools.cache
def visible_colours(background: str) -> tuple[str, ...]:
    """Shape colours that stand out against ``background``."""
    return tuple(c for c in COLOURS if c != background and _contrast(c, background) >= MIN_CONTRAST)


def sample_scene(draws: Draws) -> Scene:
    """One random scene: background, 1-3 shapes of random kind, visible colour, size and place."""
    background = draws.pick(COLOURS)
    n_shapes = 1 + draws.weighted(COUNT_PROBS)
    colours = visible_colours(background)
    low, high = SIZE_RANGE[n_shapes]
    shapes: list[Shape] = []
    for _ in range(n_shapes):
        size = draws.uniform(low, high)
        radius = size / 2
        for _ in range(PLACEMENT_TRIES):
            centre = (draws.uniform(radius, 1 - radius), draws.uniform(radius, 1 - radius))
            if all(
                math.hypot(centre[0] - s.centre[0], centre[1] - s.centre[1]) >= MIN_SEPARATION * (radius + s.size / 2)
                for s in shapes
            ):
                break
        shape = Shape(
            kind=draws.pick(KINDS),
            colour=draws.pick(colours),
            centre=(round(centre[0], 4), round(centre[1], 4)),
            size=round(size, 4),
            angle=round(draws.uniform(-MAX_TILT, MAX_TILT), 2),
        )
        shapes.append(shape)
    return Scene(background, tuple(shapes))


def sample_scenes(draws: Draws, n: int) -> list[Scene]:
    return [sample_scene(draws) for _ in range(n)]


def _polar(angles_deg: list[float], radii: list[float]) -> tuple[tuple[float, float], ...]:
    return tuple((r * math.cos(math.radians(t)), r * math.sin(math.radians(t))) for t, r in zip(angles_deg, radii))


def _cross(arm: float) -> tuple[tuple[float, float], ...]:
    # a plus sign whose arms are `arm` of the width, scaled so its outer corners lie on the unit circle
    half = [(arm, 1), (arm, arm), (1, arm), (1, -arm), (arm, -arm), (arm, -1)]
    corners = half + [(-x, -y) for x, y in half]
    scale = 1 / math.hypot(1, arm)
    return tuple((x * scale, y * scale) for x, y in corners)


# Corners of each kind (not circles) on the unit circle, upright, y downwards.
UNIT_OUTLINES = {
    "square": _polar([45, 135, 225, 315], [1] * 4),
    "triangle": _polar([-90, 30, 150], [1] * 3),
    "diamond": _polar([0, 90, 180, 270], [0.6, 1, 0.6, 1]),
    "star": _polar([-90 + 36 * i for i in range(10)], [1, 0.45] * 5),
    "cross": _cross(1 / 3),
}


def shape_outline(shape: Shape, side: float) -> list[tuple[float, float]] | None:
    """The polygon of ``shape`` in pixel coordinates of a ``side``-px canvas (None for a circle)."""
    if shape.kind == "circle":
        return None
    if shape.kind not in UNIT_OUTLINES:
        raise ValueError(f"unknown shape kind {shape.kind!r}; expected one of {KINDS}")
    cx, cy = shape.centre[0] * side, shape.centre[1] * side
    radius = shape.size * side / 2
    cos, sin = math.cos(math.radians(shape.angle)), math.sin(math.radians(shape.angle))
    return [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in UNIT_OUTLINES[shape.kind]]


def draw_scene(scene: Scene, side: int) -> np.ndarray:
    """Render ``scene`` as uint8 (side, side, 3)."""
    canvas = side * SUPERSAMPLE
    image = Image.new("RGB", (canvas, canvas), PALETTE[scene.background])
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        fill = PALETTE[shape.colour]
        outline = shape_outline(shape, canvas)
        if outline is None:
            cx, cy = shape.centre[0] * canvas, shape.centre[1] * canvas
            r = shape.size * canvas / 2
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(outline, fill=fill)
    image = image.resize((side, side), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.uint8)


def draw_scenes(scenes: list[Scene], side: int) -> np.ndarray:
    """Render every scene: uint8 (N, side, side, 3)."""
    out = np.empty((len(scenes), side, side, 3), dtype=np.uint8)
    for i, scene in enumerate(scenes):
        out[i] = draw_scene(scene, side)
    return out
