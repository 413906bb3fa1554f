"""Scene recovery scores on hand-built images whose answers are known, at several resolutions,
and chance levels against hand calculations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import tiny_config
from PIL import Image

from mindreader.evaluation.scenes import (
    SCORES,
    best_constant_position,
    bounding_box,
    chance_levels,
    largest_shape,
    quadrant,
    read_scenes,
    scene_factors,
    scene_recovery,
    score_image,
    score_reconstructions,
    visible_areas,
)
from mindreader.nsd import NSD
from mindreader.synth import SCENES_RELPATH, SyntheticSpec, write_synthetic_nsd
from mindreader.synth.scenes import PALETTE, Scene, Shape, draw_scene

# Largest shapes by far, and every colour apart from the others so swapping two stays unambiguous.
SCENES = {
    3: Scene(
        "blue", (Shape("square", "yellow", (0.32, 0.35), 0.6, 0.0), Shape("circle", "red", (0.78, 0.78), 0.3, 0.0))
    ),
    8: Scene("white", (Shape("circle", "green", (0.6, 0.4), 0.55, 0.0),)),
    11: Scene(
        "gray",
        (
            Shape("triangle", "pink", (0.25, 0.75), 0.3, 10.0),
            Shape("diamond", "cyan", (0.7, 0.3), 0.55, -5.0),
            Shape("circle", "black", (0.75, 0.8), 0.28, 0.0),
        ),
    ),
    # the centroid of both shapes' pixels lies between them, outside the largest one's box
    14: Scene(
        "white", (Shape("circle", "blue", (0.25, 0.25), 0.4, 0.0), Shape("circle", "red", (0.75, 0.75), 0.35, 0.0))
    ),
}
# The largest shape of each scene above, by hand.
LARGEST = {3: 0, 8: 0, 11: 1, 14: 0}


def swapped(scene: Scene, largest: int) -> Scene:
    """``scene`` with its background and its largest shape's colour exchanged."""
    shapes = list(scene.shapes)
    shapes[largest] = Shape(
        shapes[largest].kind, scene.background, shapes[largest].centre, shapes[largest].size, shapes[largest].angle
    )
    return Scene(scene.shapes[largest].colour, tuple(shapes))


def score(images: list[np.ndarray]):
    return score_reconstructions(np.stack(images), list(SCENES), SCENES)


@pytest.mark.parametrize("side", [32, 64])
def test_perfect_reconstruction_scores_one_on_every_item(side):
    table = score([draw_scene(s, side) for s in SCENES.values()])
    assert table[list(SCORES)].to_numpy().tolist() == [[1, 1, 1]] * len(SCENES)
    assert table["nsd_id"].tolist() == list(SCENES)


@pytest.mark.parametrize("drawn, side", [(64, 32), (64, 48), (32, 80)])
def test_perfect_reconstruction_at_another_resolution_scores_one(drawn, side):
    """The masks are drawn at the reconstruction's resolution, not the stimulus's."""
    images = [
        np.asarray(Image.fromarray(draw_scene(s, drawn)).resize((side, side), Image.Resampling.BILINEAR))
        for s in SCENES.values()
    ]
    table = score(images)
    assert table[list(SCORES)].to_numpy().tolist() == [[1, 1, 1]] * len(SCENES)


@pytest.mark.parametrize("side", [32, 64])
def test_flat_background_gets_the_background_only(side):
    table = score([np.full((side, side, 3), PALETTE[s.background], dtype=np.uint8) for s in SCENES.values()])
    assert table["background_colour"].tolist() == [1] * len(SCENES)
    assert table["largest_shape_colour"].tolist() == [0] * len(SCENES)
    assert table["largest_shape_position"].tolist() == [0] * len(SCENES)
    assert table["recovered_shape_colour"].tolist() == [""] * len(SCENES)


@pytest.mark.parametrize("side", [32, 64])
def test_colour_swap_fails_exactly_the_swapped_items(side):
    images = [draw_scene(swapped(s, LARGEST[i]), side) for i, s in SCENES.items()]
    table = score(images)
    assert table["background_colour"].tolist() == [0] * len(SCENES)
    assert table["largest_shape_colour"].tolist() == [0] * len(SCENES)
    assert table["largest_shape_position"].tolist() == [1] * len(SCENES)
    # what was recovered is the swapped pair
    assert table["recovered_background"].tolist() == [s.shapes[LARGEST[i]].colour for i, s in SCENES.items()]
    assert table["recovered_shape_colour"].tolist() == [s.background for s in SCENES.values()]


def test_shape_in_the_wrong_place_fails_position_only():
    """The right colours, the largest shape moved to the opposite corner of its scene."""
    scene = SCENES[3]
    big = scene.shapes[0]
    moved = Scene(scene.background, (Shape(big.kind, big.colour, (0.7, 0.68), big.size, big.angle), scene.shapes[1]))
    table = score_reconstructions(draw_scene(moved, 64)[None], [3], SCENES)
    assert table[list(SCORES)].to_numpy().tolist() == [[1, 1, 0]]


def test_centroid_is_taken_at_pixel_centres_and_a_box_edge_counts_as_inside():
    # The circle's box is [0.125, 0.375]^2; the shape colour fills pixels 11..12 of both axes,
    # whose centres average to 12 / 32 = 0.375: the box's bottom right corner.
    scene = Scene("white", (Shape("circle", "blue", (0.25, 0.25), 0.25, 0.0),))
    image = np.empty((32, 32, 3), np.uint8)
    image[:] = PALETTE["white"]
    image[11:13, 11:13] = PALETTE["blue"]
    result = score_image(image, scene)
    assert (result["centroid_x"], result["centroid_y"]) == (0.375, 0.375)
    assert result["largest_shape_colour"] == result["largest_shape_position"] == 1


def test_largest_shape_is_by_visible_area():
    """A big square mostly covered by a later circle: the square is larger drawn alone, the circle
    is larger as seen."""
    square = Shape("square", "red", (0.5, 0.5), 0.7, 0.0)
    circle = Shape("circle", "blue", (0.5, 0.5), 0.5, 0.0)
    square_area = (0.7 / math.sqrt(2)) ** 2  # its corners lie on the 0.7-wide bounding circle
    circle_area = math.pi * 0.25**2
    assert square_area > circle_area
    areas = visible_areas(Scene("white", (square, circle)))
    np.testing.assert_allclose(areas, [square_area - circle_area, circle_area], atol=0.01)
    assert largest_shape(Scene("white", (square, circle))) == circle
    assert largest_shape(Scene("white", (circle, square))) == square


def test_bounding_boxes_by_hand():
    np.testing.assert_allclose(bounding_box(Shape("circle", "red", (0.5, 0.4), 0.4, 0.0)), (0.3, 0.2, 0.7, 0.6))
    half = 0.3 / math.sqrt(2)  # an upright square's corners lie on its bounding circle
    np.testing.assert_allclose(
        bounding_box(Shape("square", "red", (0.5, 0.5), 0.6, 0.0)), (0.5 - half,) * 2 + (0.5 + half,) * 2
    )
    # an upright triangle: apex on the circle at the top, base 1/2 radius below the centre
    np.testing.assert_allclose(
        bounding_box(Shape("triangle", "red", (0.5, 0.5), 0.4, 0.0)),
        (0.5 - 0.2 * math.sqrt(3) / 2, 0.3, 0.5 + 0.2 * math.sqrt(3) / 2, 0.6),
        atol=1e-12,
    )


def test_scene_factors_and_quadrant_ties():
    assert scene_factors(SCENES[11]) == {
        "background_colour": "gray",
        "largest_shape_colour": "cyan",
        "largest_shape_kind": "diamond",
        "largest_shape_quadrant": "top_right",
        "shape_count": 3,
    }
    assert quadrant((0.2, 0.7)) == "bottom_left"
    assert quadrant((0.49, 0.49)) == "top_left"
    # a centre on a midline belongs to the right or bottom half
    assert quadrant((0.5, 0.3)) == "top_right"
    assert quadrant((0.3, 0.5)) == "bottom_left"
    assert quadrant((0.5, 0.5)) == "bottom_right"


def test_chance_levels_by_hand():
    scenes = [
        Scene("blue", (Shape("circle", "yellow", (0.25, 0.25), 0.4, 0.0),)),  # box [0.05, 0.45]^2
        Scene("blue", (Shape("circle", "yellow", (0.35, 0.35), 0.4, 0.0),)),  # box [0.15, 0.55]^2
        Scene("white", (Shape("circle", "red", (0.75, 0.75), 0.4, 0.0),)),  # box [0.55, 0.95]^2
        Scene("red", (Shape("circle", "yellow", (0.75, 0.25), 0.3, 0.0),)),  # box x [0.6, 0.9], y [0.1, 0.4]
    ]
    chance = chance_levels(scenes)
    assert chance["background_colour"] == pytest.approx(2 / 4)  # blue twice
    assert chance["largest_shape_colour"] == pytest.approx(3 / 4)  # yellow three times
    # the first two boxes overlap, no point lies in three
    assert chance["largest_shape_position"] == pytest.approx(2 / 4)


def test_best_constant_position_needs_a_point_inside_both_extents():
    # (left, top, right, bottom) boxes over the same columns, one above the other: no point lies
    # in both; the lower one moved up to overlap the upper one in y: a point does.
    lower, upper = [0.1, 0.65, 0.3, 0.85], [0.1, 0.2, 0.3, 0.4]
    assert best_constant_position(np.array([lower, upper])) == 0.5
    assert best_constant_position(np.array([lower, [0.1, 0.5, 0.3, 0.7]])) == 1.0


def test_summary_has_value_ci_and_chance():
    images = [draw_scene(s, 32) for s in SCENES.values()]
    images[1] = np.full_like(images[1], PALETTE["white"])  # scene 8's background, no shape
    summary, per_image = scene_recovery(np.stack(images), list(SCENES), SCENES, n_boot=200, seed=0)
    assert summary["background_colour"]["value"] == 1.0
    assert summary["largest_shape_colour"]["value"] == pytest.approx(3 / 4)
    lo, hi = summary["largest_shape_colour"]["ci95"]
    assert 0.0 <= lo <= 3 / 4 <= hi <= 1.0 and lo < hi
    assert summary["background_colour"]["chance"] == pytest.approx(2 / 4)  # white twice
    assert len(per_image) == len(SCENES)


def test_unknown_nsd_id_and_bad_images_are_errors():
    with pytest.raises(KeyError, match="99"):
        score_reconstructions(np.zeros((1, 32, 32, 3), np.uint8), [99], SCENES)
    with pytest.raises(ValueError, match="uint8"):
        score_reconstructions(np.zeros((1, 32, 32, 3), np.float32), [3], SCENES)
    with pytest.raises(ValueError, match="nsdIds"):
        score_reconstructions(np.zeros((2, 32, 32, 3), np.uint8), [3], SCENES)


def test_stimuli_of_a_synthetic_tree_recover_their_scenes(tmp_path):
    """read_scenes keys scenes.json by nsdId: the tree's own stimuli, read through the NSD reader,
    get every background right and nearly every largest shape (near-ties in area and anti-aliased
    edges cost a few)."""
    spec = SyntheticSpec.from_config(tiny_config()["synthetic"])
    write_synthetic_nsd(tmp_path, spec, ["subj01"])
    scenes = read_scenes(tmp_path / SCENES_RELPATH)
    nsd_ids = sorted(scenes)[::-1]
    assert len(nsd_ids) == spec.n_shared + 8 * spec.n_specific
    table = score_reconstructions(NSD(tmp_path).read_images(nsd_ids), nsd_ids, scenes)
    assert table["background_colour"].mean() == 1.0
    assert table["largest_shape_colour"].mean() >= 0.85
    assert table["largest_shape_position"].mean() >= 0.85
    with pytest.raises(FileNotFoundError, match="scenes.json"):
        read_scenes(tmp_path / "synthetic" / "absent.json")


def test_scene_records_without_an_nsd_id_are_rejected(tmp_path):
    path = tmp_path / "scenes.json"
    path.write_text('[{"background": "white", "shapes": []}]')
    with pytest.raises(ValueError, match="nsdId"):
        read_scenes(path)
