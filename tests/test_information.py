"""The information table (where the planted scene is lost) on a synthetic tree: its rows and
columns, probes that read the true embeddings and, unchanged, a mapper's predictions, scene
recovery of reconstructions whose answers are known, the written table and its figure."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from mindreader.evaluation.figures import save_figure, scene_recovery_figure, stage_rows
from mindreader.evaluation.information import COLUMNS, LABELS, information_frame, scene_recovery_table
from mindreader.evaluation.scenes import chance_levels, factor_table, largest_shape, read_scenes
from mindreader.evaluation.tables import write_table
from mindreader.names import SCENE_STAGES
from mindreader.nsd import NSD
from mindreader.synth import SCENES_RELPATH, SyntheticSpec, write_synthetic_nsd
from mindreader.synth.scenes import COLOURS, PALETTE

N_TEST = 40
REQUIRED = ("background_colour", "largest_shape_colour", "largest_shape_position")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def write_embeddings(path, ids: np.ndarray, target: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f["nsd_id"], f["target"] = ids, target.astype(np.float32)


def write_predictions(path, ids: np.ndarray, pred: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f["nsd_id"], f["pred"] = ids, pred.astype(np.float32)


def write_reconstructions(path, ids: np.ndarray, images: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f["images"], f["nsd_id"] = images, ids


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A synthetic tree; an image embedding that carries the background and the largest shape's
    colour, a caption embedding of noise; mappers that copy the true embeddings (times 3) or
    predict noise; oracle reconstructions that are the stimuli, brain ones flat gray."""
    tmp = tmp_path_factory.mktemp("information")
    write_synthetic_nsd(tmp / "nsd", SyntheticSpec.from_config(tiny_config()["synthetic"]), ["subj01"])
    scenes = read_scenes(tmp / "nsd" / SCENES_RELPATH)
    ids = np.array(sorted(scenes), dtype=np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ids))
    test_ids, train_ids = ids[order[:N_TEST]], ids[order[N_TEST:]]
    with h5py.File(tmp / "subj01.h5", "w") as f:
        f["train/nsd_id"] = np.concatenate([train_ids, train_ids[:30]])  # repeated trials: each image once
        f["test/nsd_id"] = test_ids
    table = factor_table([scenes[int(i)] for i in ids])
    code = np.concatenate(
        [(table[f].to_numpy()[:, None] == np.array(COLOURS)[None]).astype(float) for f in REQUIRED[:2]], axis=1
    )
    img = unit(
        np.concatenate([code + 0.05 * rng.standard_normal(code.shape), 0.05 * rng.standard_normal((len(ids), 6))], 1)
    )
    cap = unit(rng.standard_normal((len(ids), 10)))
    write_embeddings(tmp / "images.h5", ids, img)
    write_embeddings(tmp / "captions.h5", ids[::-1], cap[::-1])
    row = {int(i): r for r, i in enumerate(ids)}
    test_rows = [row[int(i)] for i in test_ids]
    for target, true in (("img", img), ("cap", cap)):
        write_predictions(tmp / f"copy_{target}.h5", test_ids, 3 * true[test_rows])
        write_predictions(tmp / f"noise_{target}.h5", test_ids, rng.standard_normal((N_TEST, true.shape[1])))
    stimuli = NSD(tmp / "nsd").read_images(test_ids)
    write_reconstructions(tmp / "oracle.h5", test_ids, stimuli)
    gray = np.broadcast_to(np.array(PALETTE["gray"], dtype=np.uint8), (N_TEST, 24, 24, 3)).copy()
    write_reconstructions(tmp / "brain.h5", test_ids, gray)
    predictions = [
        {"subject": "subj01", "mapper": mapper, "target": target, "path": str(tmp / f"{mapper}_{target}.h5")}
        for mapper in ("copy", "noise")
        for target in ("img", "cap")
    ]
    reconstructions = [
        {"subject": "subj01", "mapper": "copy", "variant": "img+cap", "source": s, "path": str(tmp / f"{s}.h5")}
        for s in ("oracle", "brain")
    ]
    frame, described = information_frame(
        scenes,
        {"subj01": tmp / "subj01.h5"},
        {"img": tmp / "images.h5", "cap": tmp / "captions.h5"},
        predictions,
        reconstructions,
        n_boot=100,
        seed=0,
    )
    return tmp, scenes, test_ids, frame, described


def row(frame: pd.DataFrame, mapper: str, variant: str, source: str) -> pd.Series:
    match = frame[(frame["mapper"] == mapper) & (frame["variant"] == variant) & (frame["source"] == source)]
    assert len(match) == 1, (mapper, variant, source)
    return match.iloc[0]


def test_rows_and_columns(world):
    _, _, _, frame, described = world
    per_key = [c for k in COLUMNS for c in (k, f"{k}_lo", f"{k}_hi", f"chance_{k}")]
    assert list(frame.columns) == [*LABELS, *per_key]
    assert list(LABELS) == ["subject", "mapper", "variant", "source"] and COLUMNS[:3] == REQUIRED
    assert set(COLUMNS[3:]) == {"largest_shape_kind", "largest_shape_quadrant", "shape_count"}
    assert list(zip(frame["mapper"], frame["variant"], frame["source"])) == [
        ("-", "img", "clip"),
        ("copy", "img", "brain_embedding"),
        ("noise", "img", "brain_embedding"),
        ("-", "cap", "clip"),
        ("copy", "cap", "brain_embedding"),
        ("noise", "cap", "brain_embedding"),
        ("copy", "img+cap", "oracle"),
        ("copy", "img+cap", "brain"),
    ]
    assert (frame["subject"] == "subj01").all()
    assert [d["n_images"] for d in described] == [N_TEST, N_TEST]
    # position is scored from pixels only; kind, quadrant and count by probes only
    probes = frame[frame["source"].isin(["clip", "brain_embedding"])]
    recovered = frame[frame["source"].isin(["oracle", "brain"])]
    assert probes["largest_shape_position"].isna().all() and probes["chance_largest_shape_position"].isna().all()
    assert recovered[["largest_shape_kind", "shape_count"]].isna().all().all()
    for key in COLUMNS:
        scored = frame[frame[key].notna()]
        assert ((scored[f"{key}_lo"] <= scored[key]) & (scored[key] <= scored[f"{key}_hi"])).all(), key
        assert scored[f"chance_{key}"].between(0, 1).all(), key


def test_probes_read_the_true_embeddings_and_the_same_probe_reads_the_predictions(world):
    _, scenes, test_ids, frame, _ = world
    clip = row(frame, "-", "img", "clip")
    assert clip["background_colour"] >= 0.9 and clip["largest_shape_colour"] >= 0.8
    # the copying mapper's predictions are the true embeddings times 3: normalised, the same answers
    copy = row(frame, "copy", "img", "brain_embedding")
    for key in COLUMNS[:2] + COLUMNS[3:]:
        assert copy[key] == clip[key], key
    noise = row(frame, "noise", "img", "brain_embedding")
    assert noise["background_colour"] <= noise["chance_background_colour"] + 0.2
    assert row(frame, "-", "cap", "clip")["background_colour"] <= clip["chance_background_colour"] + 0.2
    test = factor_table([scenes[int(i)] for i in test_ids])
    majority = test["background_colour"].value_counts().iloc[0] / N_TEST
    assert clip["chance_background_colour"] == pytest.approx(majority)


def test_scene_recovery_of_known_reconstructions(world):
    _, scenes, test_ids, frame, _ = world
    test_scenes = [scenes[int(i)] for i in test_ids]
    oracle = row(frame, "copy", "img+cap", "oracle")
    assert oracle["background_colour"] == 1.0 and oracle["largest_shape_colour"] >= 0.8
    brain = row(frame, "copy", "img+cap", "brain")
    gray = sum(s.background == "gray" for s in test_scenes) / N_TEST
    assert brain["background_colour"] == pytest.approx(gray)
    # a flat image of one colour has no shape: both shape items fail
    assert brain["largest_shape_colour"] == brain["largest_shape_position"] == 0.0
    chance = chance_levels(test_scenes)
    for key in REQUIRED:
        assert brain[f"chance_{key}"] == pytest.approx(chance[key]), key
    colours = [largest_shape(s).colour for s in test_scenes]
    assert chance["largest_shape_colour"] == pytest.approx(max(map(colours.count, colours)) / N_TEST)


def test_written_table_and_figure(world, tmp_path):
    _, _, _, frame, _ = world
    table = scene_recovery_table(frame, "Where the scene is lost", "SYNTHETIC NSD, test")
    write_table(table, tmp_path)
    csv = pd.read_csv(tmp_path / "scene_recovery.csv")
    assert list(csv.columns[:4]) == ["subject", "mapper", "variant", "source"]
    for key in COLUMNS:
        assert {key, f"{key}_lo", f"{key}_hi", f"chance_{key}"} <= set(csv.columns), key
    assert csv["data"].eq("SYNTHETIC NSD, test").all() and len(csv) == len(frame)
    assert set(csv["source"]) == set(SCENE_STAGES)
    md = (tmp_path / "scene_recovery.md").read_text()
    assert "| subject | mapper | variant | source | background colour ↑ |" in md
    assert "(chance " in md and "brain_embedding = the same probe" in md and "| – |" in md
    assert r"\begin{tabular}" in (tmp_path / "scene_recovery.tex").read_text()

    rows = stage_rows(csv, "subj01", "copy", "img+cap", "img")
    assert {s: (r["mapper"], r["variant"]) for s, r in rows.items()} == {
        "clip": ("-", "img"),
        "brain_embedding": ("copy", "img"),
        "oracle": ("copy", "img+cap"),
        "brain": ("copy", "img+cap"),
    }
    assert stage_rows(csv, "subj01", "absent", "img+cap", "img")["oracle"] is None
    factors = [c for c in csv.columns if f"chance_{c}" in csv.columns]
    assert factors == list(COLUMNS)
    fig = scene_recovery_figure([("mapper copy", rows)], factors, "t")
    lines = fig.axes[0].get_lines()
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    assert len(dashed) == len(factors)
    # background colour: four stages scored; position: two (the pixel stages); kind: two (probes)
    assert [len(line.get_xdata()) for line in dashed] == [4, 4, 2, 2, 2, 2]
    save_figure(fig, tmp_path / "s.pdf", tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0 and not math.isnan(float(rows["clip"]["background_colour"]))
