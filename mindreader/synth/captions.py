"""COCO-style captions of synthetic scenes, some deliberately worse than others.

Each image gets `n` captions generated from its scene description. Correct captions vary in
synonyms, word order and detail (sizes, places, background); flawed ones are vague, leave out a
shape or name a wrong colour, so that screening captions by CLIP score has something to choose.
Every caption carries its flaw label ("none", "vague", "missing_object", "wrong_colour"), kept in
the tree's scenes.json so tests and people can check what screening picked.
"""

from __future__ import annotations

from dataclasses import dataclass

from mindreader.synth.draws import Draws
from mindreader.synth.scenes import COLOURS, Scene, Shape

FLAWS = ("none", "vague", "missing_object", "wrong_colour")
# Probability of an image having 0, 1, 2 flawed captions among its n.
N_FLAWED_PROBS = (0.25, 0.45, 0.30)

KIND_WORDS = {
    "circle": ("circle", "disc", "round dot", "circle"),
    "square": ("square", "box", "block", "square"),
    "triangle": ("triangle", "triangular shape", "triangle"),
    "star": ("star", "five-pointed star", "star shape"),
    "diamond": ("diamond", "rhombus", "diamond shape"),
    "cross": ("cross", "plus sign", "cross shape"),
}
KIND_PLURALS = {
    "circle": "circles", "square": "squares", "triangle": "triangles",
    "star": "stars", "diamond": "diamonds", "cross": "crosses",
}
COLOUR_WORDS = {
    "red": ("red", "bright red"),
    "orange": ("orange",),
    "yellow": ("yellow", "golden"),
    "green": ("green",),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "pink": ("pink",),
    "white": ("white",),
    "black": ("black",),
    "gray": ("gray", "grey"),
    "brown": ("brown",),
}
COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
# Size words by the shape's size (fraction of the side): below the first bound "small", above
# the second "large", medium shapes get no word.
SIZE_BOUNDS = (0.33, 0.5)
VAGUE_CAPTIONS = (
    "Some shapes on a colored background.",
    "A simple picture of geometric shapes.",
    "A few objects drawn on a plain background.",
    "Colorful shapes in a picture.",
    "An abstract image with a shape or two.",
    "Geometric figures on a flat color.",
)
BACKGROUND_TEMPLATES = (
    "on {a_bg} background",
    "against {a_bg} backdrop",
    "over a plain {bg} background",
    "on {bg}",
)


@dataclass(frozen=True)
class Caption:
    text: str
    flaw: str  # one of FLAWS


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def place_phrase(shape: Shape) -> str:
    """Where the shape sits, in words: 'in the top left', 'on the right', 'in the center'."""
    x, y = shape.centre
    horizontal = "left" if x < 0.4 else "right" if x > 0.6 else ""
    vertical = "top" if y < 0.4 else "bottom" if y > 0.6 else ""
    if horizontal and vertical:
        return f"in the {vertical} {horizontal}"
    if horizontal:
        return f"on the {horizontal}"
    if vertical:
        return f"at the {vertical}"
    return "in the center"


def size_word(shape: Shape, draws: Draws) -> str:
    if shape.size < SIZE_BOUNDS[0]:
        return draws.pick(("small", "little", "tiny"))
    if shape.size > SIZE_BOUNDS[1]:
        return draws.pick(("large", "big"))
    return ""


def shape_phrase(shape: Shape, draws: Draws, colour: str | None = None, detail: float = 0.5) -> str:
    """'a small red disc on the left': colour always, size and place each with probability ``detail``."""
    words = []
    if draws.random() < detail:
        words.append(size_word(shape, draws))
    words.append(draws.pick(COLOUR_WORDS[colour or shape.colour]))
    words.append(draws.pick(KIND_WORDS[shape.kind]))
    phrase = _article(" ".join(w for w in words if w))
    if draws.random() < detail:
        phrase += " " + place_phrase(shape)
    return phrase


def join_phrases(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _finish(text: str, draws: Draws) -> str:
    # COCO captions: mostly capitalised with a full stop, some not
    text = text[0].upper() + text[1:] if draws.random() < 0.85 else text
    return text + "." if draws.random() < 0.8 else text


def describe(scene: Scene, draws: Draws, shapes: tuple[Shape, ...] | None = None,
             colours: tuple[str, ...] | None = None) -> str:
    """A caption of ``scene`` naming ``shapes`` (default: all) in ``colours`` (default: theirs)."""
    shapes = scene.shapes if shapes is None else shapes
    colours = tuple(s.colour for s in shapes) if colours is None else colours
    detail = draws.uniform(0.0, 0.8)
    order = draws.permutation(len(shapes))
    phrases = [shape_phrase(shapes[i], draws, colours[i], detail) for i in order]
    listing = join_phrases(phrases)
    bg = draws.pick(COLOUR_WORDS[scene.background])
    background = draws.pick(BACKGROUND_TEMPLATES).format(bg=bg, a_bg=_article(bg))
    kinds = {s.kind for s in shapes}
    template = draws.below(5)
    if template == 0:
        text = f"{listing} {background}"
    elif template == 1:
        text = f"{_article(bg)} background with {listing}"
    elif template == 2 and len(shapes) > 1:
        noun = KIND_PLURALS[shapes[0].kind] if len(kinds) == 1 else "shapes"
        text = f"{COUNT_WORDS[len(shapes)]} {noun} {background}: {listing}"
    elif template == 3:
        text = f"there is {listing} {background}" if draws.random() < 0.5 else f"there is {listing}"
    else:
        text = f"{draws.pick(('an image of', 'a picture of', 'a drawing of'))} {listing}"
    return _finish(text, draws)


def flawed_caption(scene: Scene, draws: Draws) -> Caption:
    """A caption that is vague, misses a shape (scenes with several) or names a wrong colour."""
    options = ["vague", "wrong_colour"] + (["missing_object"] if len(scene.shapes) > 1 else [])
    flaw = draws.pick(options)
    if flaw == "vague":
        return Caption(draws.pick(VAGUE_CAPTIONS), flaw)
    if flaw == "missing_object":
        drop = draws.below(len(scene.shapes))
        kept = tuple(s for i, s in enumerate(scene.shapes) if i != drop)
        return Caption(describe(scene, draws, shapes=kept), flaw)
    wrong = draws.below(len(scene.shapes))
    colours = [s.colour for s in scene.shapes]
    alternatives = [c for c in COLOURS if c not in (colours[wrong], scene.background)]
    colours[wrong] = draws.pick(alternatives)
    return Caption(describe(scene, draws, colours=tuple(colours)), flaw)


def caption_scene(scene: Scene, draws: Draws, n: int = 5) -> list[Caption]:
    """``n`` captions of ``scene`` in random order, 0-2 of them flawed, the rest correct."""
    n_flawed = min(n - 1, draws.weighted(N_FLAWED_PROBS))
    captions = [flawed_caption(scene, draws) for _ in range(n_flawed)]
    captions += [Caption(describe(scene, draws), "none") for _ in range(n - n_flawed)]
    return [captions[i] for i in draws.permutation(n)]
