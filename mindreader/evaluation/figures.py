"""Figures: fig3 (ground truth over one row per conditioning variant), per-subject reconstruction
grids, training curves, retrieval examples, metric bars with CIs, and where the planted scene is
lost (scene recovery across the stages). Each is saved as PDF and PNG."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mindreader.evaluation.battery import METRIC_BY_KEY  # noqa: E402
from mindreader.io import atomic_path  # noqa: E402
from mindreader.names import NO_MAPPER, SCENE_STAGES  # noqa: E402

# Row label width and cell size of the image grids, in inches.
LABEL_WIDTH = 1.3
CELL = 1.0


def choose_columns(n_images: int, k: int) -> np.ndarray:
    """The fixed rule for the test images a grid shows: k evenly spaced positions in the test
    order (first and last included), the same for every row and every run."""
    if n_images < 1:
        raise ValueError("no test images to show")
    return np.unique(np.linspace(0, n_images - 1, min(k, n_images)).round().astype(int))


def interval_bars(ax: plt.Axes, x: np.ndarray, lo: np.ndarray, hi: np.ndarray, **style) -> None:
    """Whiskers from lo to hi at each x, drawn apart from the point estimate: the bootstrap CI of a
    biased statistic (FD: resampling with replacement inflates it) may lie wholly above it."""
    ax.errorbar(x, (lo + hi) / 2, yerr=(hi - lo) / 2, fmt="none", **style)


def save_figure(fig: plt.Figure, pdf: str | os.PathLike, png: str | os.PathLike | None = None) -> None:
    """PDF (and PNG at 150 dpi), each written atomically; closes the figure."""
    for path, kwargs in ((pdf, {}), (png, {"dpi": 150})):
        if path is None:
            continue
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix[1:], bbox_inches="tight", **kwargs)
    plt.close(fig)


def image_grid(
    rows: Sequence[tuple[str, np.ndarray]],  # (row label, uint8 (K, H, W, 3)), every row K images
    title: str,  # figure title
    column_labels: Sequence[str] | None = None,  # one per column (e.g. nsdIds)
) -> plt.Figure:
    """Rows of images with a label on the left of each row."""
    n_cols = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(
        len(rows), n_cols, figsize=(LABEL_WIDTH + CELL * n_cols, CELL * len(rows) + 0.5), squeeze=False
    )
    for r, (label, images) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(images):
                ax.imshow(images[c], interpolation="lanczos")
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
            if r == 0 and column_labels is not None and c < len(column_labels):
                ax.set_title(column_labels[c], fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.04, hspace=0.04, left=LABEL_WIDTH / (LABEL_WIDTH + CELL * n_cols))
    return fig


def reconstruction_figure(
    ground_truth: np.ndarray,  # uint8 (N, H, W, 3) test images in the reconstructions' order
    nsd_id: np.ndarray,  # (N,) their nsdIds
    rows: Sequence[tuple[str, np.ndarray, np.ndarray]],  # (label, images (N', H, W, 3), nsd_id (N',))
    n_columns: int,  # test images shown
    title: str,
) -> plt.Figure:
    """Ground truth on top, then one row per run, the same test images in every row (aligned by
    nsdId, chosen by `choose_columns` on the ground truth's order)."""
    columns = choose_columns(len(nsd_id), n_columns)
    shown = nsd_id[columns]
    grid = [("ground truth", ground_truth[columns])]
    for label, images, ids in rows:
        position = {int(i): p for p, i in enumerate(ids)}
        missing = [int(i) for i in shown if int(i) not in position]
        if missing:
            raise ValueError(f"row '{label}' has no reconstruction of nsdIds {missing[:5]}")
        grid.append((label, images[[position[int(i)] for i in shown]]))
    return image_grid(grid, title, [f"nsd {int(i)}" for i in shown])


def training_curves(
    mapper_curves: Mapping[str, pd.DataFrame],  # label -> a mapper's curve.csv
    generator_losses: Mapping[str, pd.DataFrame],  # label -> a generator run's losses.csv
    title: str,
) -> plt.Figure:
    """Left: mapper train/validation losses per epoch; right: generator losses per kimg."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, curve in mapper_curves.items():
        x = curve["epoch"] if "epoch" in curve else np.arange(1, len(curve) + 1)
        for column in ("train_loss", "val_loss"):
            if column in curve:
                left.plot(x, curve[column], marker="." if len(curve) < 30 else None, label=f"{label} {column}")
    left.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    left.set_xlabel("epoch")
    left.set_ylabel("mapper loss")
    left.set_title("mappers", fontsize=9)
    for label, losses in generator_losses.items():
        x = losses["kimg"] if "kimg" in losses else np.arange(len(losses))
        for column in losses.columns:
            if column in ("step", "kimg", "seconds") or not pd.api.types.is_numeric_dtype(losses[column]):
                continue
            right.plot(x, losses[column], label=f"{label} {column}", linewidth=0.9)
    right.set_xlabel("kimg")
    right.set_ylabel("generator loss terms")
    right.set_title("generator", fontsize=9)
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=6)
        else:
            ax.text(0.5, 0.5, "no curve recorded", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def top_retrieved(pred: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of the k test images whose true embedding is most cosine-similar to each
    predicted (brain) embedding, best first."""
    p = pred / np.linalg.norm(pred, axis=1, keepdims=True).clip(1e-12)
    t = target / np.linalg.norm(target, axis=1, keepdims=True).clip(1e-12)
    return np.argsort(-(p @ t.T), axis=1, kind="stable")[:, :k]


def retrieval_figure(
    ground_truth: np.ndarray,  # uint8 (N, H, W, 3) test images, same order as pred/target
    pred: np.ndarray,  # (N, D) predicted embeddings
    target: np.ndarray,  # (N, D) true embeddings
    n_brains: int,  # brains shown (rows), chosen by `choose_columns`
    title: str,
    k: int = 5,  # images retrieved per brain
) -> plt.Figure:
    """Each row: the image a brain saw, then the top-k images retrieved from its predicted
    embedding among all test images (a green frame marks the correct one)."""
    brains = choose_columns(len(pred), n_brains)
    top = top_retrieved(pred[brains], target, k)
    fig, axes = plt.subplots(len(brains), k + 1, figsize=(CELL * (k + 1) + 0.4, CELL * len(brains) + 0.5), squeeze=False)
    for r, (brain, retrieved) in enumerate(zip(brains, top)):
        for c, index in enumerate([brain, *retrieved]):
            ax = axes[r, c]
            ax.imshow(ground_truth[index])
            ax.set_xticks([])
            ax.set_yticks([])
            correct = c > 0 and index == brain
            for spine in ax.spines.values():
                spine.set_edgecolor("tab:green" if correct else "none")
                spine.set_linewidth(3 if correct else 0)
            if r == 0:
                ax.set_title("seen" if c == 0 else f"top {c}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    return fig


def metric_bars(
    runs: Sequence[tuple[str, Mapping[str, Any]]],  # (label, metrics JSON) per bar group
    keys: Sequence[str],  # metrics shown, one panel each
    title: str,
) -> plt.Figure:
    """One panel per metric, one bar per run with its 95 % CI; missing metrics say so."""
    n = len(keys)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False)
    labels = [label for label, _ in runs]
    for i, key in enumerate(keys):
        ax = axes[i // cols, i % cols]
        metric = METRIC_BY_KEY[key]
        scale = 100.0 if metric.percent else 1.0
        results = [summary["metrics"].get(key, {}) for _, summary in runs]
        ax.set_title(f"{metric.label}{' %' if metric.percent else ''} ({'higher' if metric.higher_is_better else 'lower'} is better)", fontsize=8)
        if not any("value" in r for r in results):
            reason = next((r.get("missing", "") for r in results if "missing" in r), "")
            ax.text(0.5, 0.5, "not measured:\n" + _wrap(reason.split(". ")[0], 40), ha="center", va="center", fontsize=6, transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        values = np.array([r.get("value", np.nan) * scale for r in results])
        lo = np.array([r["ci95"][0] * scale if "ci95" in r else np.nan for r in results])
        hi = np.array([r["ci95"][1] * scale if "ci95" in r else np.nan for r in results])
        x = np.arange(len(runs))
        ax.bar(x, values, color="tab:blue", alpha=0.75)
        interval_bars(ax, x, lo, hi, ecolor="black", capsize=3, linewidth=1)
        chance = next((r["chance"] * scale for r in results if "chance" in r), None)
        if chance is None and metric.kind == "two_way":
            chance = 50.0
        if chance is not None:
            ax.axhline(chance, color="gray", linestyle="--", linewidth=0.8, label="chance")
        ax.set_xticks(x, labels, fontsize=7, rotation=30 if max(map(len, labels)) > 6 else 0)
        ax.tick_params(axis="y", labelsize=7)
    for j in range(n, rows * cols):
        axes[j // cols, j % cols].axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def stage_rows(
    frame: pd.DataFrame,  # the scene_recovery table (its CSV)
    subject: str,
    mapper: str,
    variant: str,  # the generator's conditioning (oracle and brain stages)
    embedding: str,  # the CLIP embedding the probe stages read (img or cap)
) -> dict[str, pd.Series | None]:
    """Stage -> the table row it shows for one run (None where the table has none)."""
    wanted = {
        "clip": (NO_MAPPER, embedding),
        "brain_embedding": (mapper, embedding),
        "oracle": (mapper, variant),
        "brain": (mapper, variant),
    }
    rows = {}
    for stage in SCENE_STAGES:
        chosen_mapper, chosen_variant = wanted[stage]
        match = frame[
            (frame["subject"] == subject)
            & (frame["mapper"] == chosen_mapper)
            & (frame["variant"] == chosen_variant)
            & (frame["source"] == stage)
        ]
        rows[stage] = match.iloc[0] if len(match) else None
    return rows


def scene_recovery_figure(
    panels: Sequence[tuple[str, Mapping[str, pd.Series | None]]],  # (title, stage_rows) per panel
    factors: Sequence[str],  # columns shown, one line each
    title: str,
) -> plt.Figure:
    """One panel per run: per factor a line of its accuracy (95 % CI bars) across the stages, and
    its chance level dashed in the same colour; a stage that does not score a factor is a gap."""
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False, sharey=True)
    x = np.arange(len(SCENE_STAGES))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (panel_title, rows) in zip(axes[0], panels):

        def column(name: str) -> np.ndarray:
            return np.array([np.nan if rows[s] is None else float(rows[s][name]) for s in SCENE_STAGES])

        for i, factor in enumerate(factors):
            colour = colours[i % len(colours)]
            value, lo, hi = column(factor), column(f"{factor}_lo"), column(f"{factor}_hi")
            shown = ~np.isnan(value)
            ax.plot(x[shown], value[shown], color=colour, marker="o", markersize=3, linewidth=1.2,
                    label=factor.replace("_", " "))
            interval_bars(ax, x[shown], lo[shown], hi[shown], ecolor=colour, capsize=2, linewidth=1.2)
            ax.plot(x[shown], column(f"chance_{factor}")[shown], color=colour, linestyle="--", linewidth=0.8)
        ax.set_xticks(x, [s.replace("_", "\n") for s in SCENE_STAGES], fontsize=7)
        ax.set_ylim(0, 1.02)
        ax.set_title(panel_title, fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", linewidth=0.3, alpha=0.5)
    axes[0, 0].set_ylabel("accuracy (dashed: chance)", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(factors)), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    return fig


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if len(line) + len(word) + 1 > width and line:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])
