"""Tables and figures from hand-made per-run metrics in the contract's format."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mindreader.evaluation import METRICS
from mindreader.evaluation.figures import (
    choose_columns,
    metric_bars,
    reconstruction_figure,
    retrieval_figure,
    save_figure,
    top_retrieved,
    training_curves,
)
from mindreader.evaluation.tables import QUOTED_ROWS, all_tables, write_table
from mindreader.names import TABLE_NAMES

ABLATIONS = {
    "main": {"mapper": "cnn", "loss": "mse_cos_contrastive", "variant": "img+cap", "strategy": "finetune"},
    "subjects": ["subj01"],
    "variants": ["img", "cap", "img+cap"],
    "strategies": ["finetune", "scratch", "e2e"],
    "losses": ["mse_cos", "mse_cos_contrastive"],
    "mappers": ["cnn", "ridge", "mlp"],
}
DATA = {"synthetic": True, "sessions": 3, "split": "shared1000", "test_repeats": "average"}
MISSING = "weights file not found: resources/weights/alexnet-owt-7be5be79.pth (expected alexnet there). Fetch it"


def _summary(seed: float) -> dict:
    metrics = {}
    for m in METRICS:
        if m.key in ("alex2", "alex5", "fid_paired"):
            metrics[m.key] = {"missing": MISSING}
        elif m.key == "fid_generated":
            metrics[m.key] = {"value": 40.0 + seed, "n_generated": 256}  # one value, no CI
        else:
            value = 0.1 + seed / 10
            metrics[m.key] = {"value": value, "ci95": [value - 0.01, value + 0.01]}
    return {"n_images": 12, "metrics": metrics, "reconstruction": {"z_policy": "random"}}


def _runs() -> list[dict]:
    main = ABLATIONS["main"]
    settings = [dict(main, variant=v) for v in ("img", "cap")] + [dict(main)]
    settings += [dict(main, strategy=s) for s in ("scratch", "e2e")] + [dict(main, loss="mse_cos")]
    settings += [dict(main, mapper="ridge", loss="mse"), dict(main, mapper="mlp")]
    runs = [{"subject": "subj01", **s} for s in settings]
    runs += [{"subject": "subj02", **s} for s in (main, settings[-2], settings[-1])]  # cnn, ridge, mlp
    brain = [{**run, "source": "brain", "summary": _summary(i)} for i, run in enumerate(runs)]
    # each run's oracle: its retrieval metrics are not applicable
    oracle = []
    for i, run in enumerate(runs):
        summary = _summary(i + 0.5)
        for key in ("img_ret", "brain_ret", "cap_ret", "cap_brain_ret"):
            summary["metrics"][key] = {"missing": "not applicable to oracle rows: retrieval scores predictions"}
        oracle.append({**run, "source": "oracle", "summary": summary})
    return brain + oracle


def test_tables_have_their_rows_data_line_and_missing_reasons(tmp_path):
    tables = {t.name: t for t in all_tables(_runs(), ABLATIONS, DATA)}
    assert set(tables) == set(TABLE_NAMES)
    # every setting's oracle row right after its brain-driven row
    assert list(tables["conditioning"].frame["variant"]) == ["img", "img", "cap", "cap", "img+cap", "img+cap"]
    for table in tables.values():
        if table.name != "comparison":
            assert table.labels[-1] == "source"
            assert list(table.frame["source"]) == ["brain", "oracle"] * (len(table.frame) // 2)
    assert list(tables["initialisation"].frame["strategy"]) == ["finetune"] * 2 + ["scratch"] * 2
    assert list(tables["training_strategy"].frame["strategy"]) == ["finetune"] * 2 + ["e2e"] * 2
    assert list(tables["mapper_losses"].frame["loss"]) == ["mse_cos"] * 2 + ["mse_cos_contrastive"] * 2
    conditioning = tables["conditioning"].frame
    assert conditioning["pixcorr"].iloc[1] == pytest.approx(100 * 0 + 0.1 + 0.5 / 10)  # the img oracle's own
    assert math.isnan(conditioning["img_ret"].iloc[1]) and not math.isnan(conditioning["img_ret"].iloc[0])
    comparison = tables["comparison"].frame
    ours = comparison[comparison["method"].str.startswith("ours")]
    assert list(ours["subject"]) == ["subj01", "subj02", "mean of 2"] * 6
    assert list(ours["source"]) == (["brain"] * 3 + ["oracle"] * 3) * 3
    cnn = ours[ours["method"].str.contains("cnn")]
    assert cnn["pixcorr"].iloc[2] == pytest.approx(cnn["pixcorr"].iloc[:2].mean())
    assert cnn["pixcorr"].iloc[5] == pytest.approx(cnn["pixcorr"].iloc[3:5].mean())
    assert cnn["pixcorr"].iloc[3] != cnn["pixcorr"].iloc[0]
    quoted = comparison[comparison["method"].str.contains(r"\[quoted, not measured\]")]
    assert len(quoted) == len(QUOTED_ROWS)
    assert quoted[quoted["method"].str.startswith("MindEye2")]["ssim"].iloc[0] == 0.439
    # identification is shown in %, and a missing metric is NaN, not a number
    assert tables["conditioning"].frame["clip"].iloc[0] == pytest.approx(10.0)
    assert math.isnan(tables["conditioning"].frame["alex2"].iloc[0])

    for table in tables.values():
        paths = write_table(table, tmp_path)
        assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    md = (tmp_path / "conditioning.md").read_text()
    assert "SYNTHETIC NSD" in md and "sessions 1-3" in md and "shared1000" in md and "12 test images, generator z random" in md
    assert "Not measured (FID (paired), Alex2, Alex5): weights file not found" in md
    # each FID column says which FID it is; the generated one is a single value, no CI
    assert "| FID (paired) ↓ | FID (256 generated) ↓ |" in md and "fid50k_full" in md
    assert "| subj01 | img | brain | – | 40.0 | 0.1 [" in md and "| subj01 | img | oracle | – | 40.5 |" in md
    assert "Not measured (img ret, brain ret): not applicable to oracle rows" in md
    assert "oracle = the same generator" in md
    assert list(pd.read_csv(tmp_path / "conditioning.csv")["source"]) == ["brain", "oracle"] * 3
    assert "| img+cap |" in md and "[" in md
    csv = pd.read_csv(tmp_path / "comparison.csv")
    assert csv["data"].str.contains("SYNTHETIC").all()
    assert {"pixcorr", "pixcorr_lo", "pixcorr_hi", "brain_ret"} <= set(csv.columns)
    tex = (tmp_path / "comparison.tex").read_text()
    assert r"\begin{tabular}" in tex and "quoted, not measured" in tex and r"\%" in tex


def test_columns_follow_a_fixed_rule():
    assert list(choose_columns(10, 4)) == [0, 3, 6, 9]
    assert list(choose_columns(3, 8)) == [0, 1, 2]


def _images(n, side=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def test_reconstruction_figure_aligns_rows_by_nsd_id(tmp_path):
    gt, ids = _images(6), np.arange(100, 106)
    shuffled = np.array([3, 0, 5, 1, 4, 2])
    fig = reconstruction_figure(gt, ids, [("img", gt[shuffled], ids[shuffled]), ("cap", _images(6, 8), ids)], 3, "t")
    shown = fig.axes[6 * 0 + 0].images[0].get_array()
    np.testing.assert_array_equal(shown, gt[0])
    # row "img" (second row, 3 columns) shows the reconstruction of the same nsdId as the top row
    np.testing.assert_array_equal(fig.axes[3 + 1].images[0].get_array(), gt[choose_columns(6, 3)[1]])
    save_figure(fig, tmp_path / "fig3.pdf", tmp_path / "fig3.png")
    assert (tmp_path / "fig3.pdf").stat().st_size > 0 and (tmp_path / "fig3.png").stat().st_size > 0
    with pytest.raises(ValueError, match="no reconstruction"):
        reconstruction_figure(gt, ids, [("img", gt[:2], ids[:2])], 6, "t")


def test_retrieval_curves_and_bars_render(tmp_path):
    rng = np.random.default_rng(1)
    target = rng.standard_normal((8, 4))
    assert (top_retrieved(target, target, 1)[:, 0] == np.arange(8)).all()
    save_figure(retrieval_figure(_images(8), target, target, 3, "r"), tmp_path / "r.pdf", tmp_path / "r.png")
    curve = pd.DataFrame({"epoch": [1, 2, 3], "lr": [1e-3] * 3, "train_loss": [1, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.95]})
    losses = pd.DataFrame({"step": [10, 20], "kimg": [0.3, 0.6], "seconds": [1, 2], "G/adv": [0.7, 0.6]})
    fig = training_curves({"img": curve}, {"G": losses}, "c")
    assert len(fig.axes[0].lines) == 2 and len(fig.axes[1].lines) == 1
    save_figure(fig, tmp_path / "c.pdf")
    runs = [(label, _summary(i)) for i, label in enumerate(["img", "cap", "img+cap"])]
    fig = metric_bars(runs, ["fid_paired", "clip", "img_ret"], "b")
    assert "not measured" in fig.axes[0].texts[0].get_text()
    save_figure(fig, tmp_path / "b.pdf", tmp_path / "b.png")
    # FD's bootstrap replicates are biased upward: the CI may lie wholly above the value, and the
    # whisker still spans exactly the CI
    biased = _summary(0)
    biased["metrics"]["clip"] = {"value": 0.10, "ci95": [0.12, 0.30]}
    fig = metric_bars([("img", biased)], ["clip"], "b")
    (whisker,) = fig.axes[0].collections[0].get_segments()
    np.testing.assert_allclose(sorted(whisker[:, 1]), [12.0, 30.0])
