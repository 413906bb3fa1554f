"""The paper's tables and the field's comparison table, from the per-run metrics JSONs.

Each table is a pandas DataFrame (one row per setting; per metric its value and CI bounds)
written as CSV (numbers), Markdown and LaTeX (value [CI] strings, a caption that names the data
the numbers came from, and a note on the metrics that could not be measured and why).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from mindreader.evaluation.battery import METRIC_BY_KEY, Metric
from mindreader.evaluation.bootstrap import CI_METHODS
from mindreader.io import atomic_path
from mindreader.names import ABLATION_TABLES, EXTERNAL_PREFIX, RECONSTRUCTION_SOURCES, get_variant, run_key

# The field's comparison format (MindEye, Brain-Diffuser): PixCorr ... brain retrieval.
COMPARISON_COLUMNS = ("pixcorr", "ssim", "alex2", "alex5", "incep", "clip", "eff", "swav", "img_ret", "brain_ret")
ABLATION_COLUMNS = ("fid_paired", "fid_generated", "fd_clip", *COMPARISON_COLUMNS)
FID_KEYS = ("fid_paired", "fid_generated")

# Published rows, from ../shared/docs/evaluation.md (subj01, 40 sessions, each paper's own
# evaluation code). Identification and retrieval in %, None where the paper reports nothing.
QUOTED_SOURCE = "quoted, not measured: subj01, 40 sessions, NSD shared test set, as published"
QUOTED_ROWS = {
    "Brain-Diffuser": (0.328, 0.386, 97.2, 98.0, 92.6, 92.3, 0.715, 0.408, None, None),
    "Takagi & Nishimoto": (0.312, 0.410, 83.7, 88.4, 85.0, 83.5, 0.800, 0.492, None, None),
    "MindEye1": (0.415, 0.402, 96.6, 98.3, 94.7, 93.4, 0.654, 0.381, 95.4, 89.7),
    "MindEye2": (0.374, 0.439, 97.8, 99.1, 96.1, 93.6, 0.609, 0.338, 99.96, 99.87),
    "Mind Reader (Lin et al., as MindEye reports it; unverified)": (
        None, None, None, None, 78.2, None, None, None, 11.0, 49.0,
    ),
}

STRATEGIES_OF = {"initialisation": ("finetune", "scratch"), "training_strategy": ("finetune", "e2e")}
# What the source column's values mean, under every table that has oracle rows.
ORACLE_NOTE = (
    "Source: brain = reconstructed from the mappers' predicted test embeddings; oracle = the same "
    "generator (same z and seed) drawing each test image from its TRUE CLIP embeddings, no brain "
    "involved: the generator's ceiling"
)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    frame: pd.DataFrame  # label columns, then per metric: key, key_lo, key_hi
    labels: tuple[str, ...]  # the label columns
    columns: tuple[str, ...]  # metric keys shown
    data_note: str  # where the numbers come from
    missing: dict[str, str]  # metric key -> why it is not measured
    headers: dict[str, str] = field(default_factory=dict)  # metric key -> header, where more than its label
    metrics: Mapping[str, Metric] = field(default_factory=lambda: METRIC_BY_KEY)  # key -> label, direction, scale
    notes: tuple[str, ...] = ()  # further notes under the table (what its rows are)


def data_note(data: Mapping[str, Any], summaries: Iterable[Mapping[str, Any]]) -> str:
    """'synthetic NSD, sessions 1-8, split shared1000, test repeats averaged, 60 test images, z random,
    generator init pretrain' (init: generator.init, the pickle or folder fine-tuning started from)."""
    summaries = list(summaries)
    counts = sorted({int(s["n_images"]) for s in summaries})
    images = "/".join(str(n) for n in counts) if counts else "?"
    z = sorted({str(s.get("reconstruction", {}).get("z_policy", "?")) for s in summaries})
    source = "SYNTHETIC NSD (demo data, not comparable with papers)" if data.get("synthetic") else "NSD"
    return (
        f"{source}, sessions 1-{data.get('sessions')}, split {data.get('split')}, "
        f"test repeats {data.get('test_repeats')}, {images} test images, generator z {'/'.join(z) or '?'}, "
        f"generator init {data.get('generator_init', '?')}; "
        f"CIs: 95 % over test images, {CI_METHODS}"
    )


def _row(labels: Mapping[str, Any], summary: Mapping[str, Any], columns: Iterable[str]) -> dict:
    row = dict(labels)
    for key in columns:
        result = summary["metrics"].get(key, {"missing": "not computed"})
        scale = 100.0 if METRIC_BY_KEY[key].percent else 1.0
        if "value" in result:
            row[key] = result["value"] * scale
            # the generated-sample FID is one number, without a CI (as StyleGAN2-ADA reports it)
            lo, hi = result.get("ci95", (math.nan, math.nan))
            row[f"{key}_lo"], row[f"{key}_hi"] = lo * scale, hi * scale
        else:
            row[key] = row[f"{key}_lo"] = row[f"{key}_hi"] = math.nan
    return row


def _missing(summaries: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> dict[str, str]:
    reasons = {}
    for summary in summaries:
        for key in columns:
            result = summary["metrics"].get(key, {})
            if "missing" in result:
                reasons.setdefault(key, result["missing"].split(". ")[0])
    return reasons


def _label(axis: str, value: str) -> str:
    """A row's label on the ablation axis; variants that the paper does not compare say so."""
    if axis == "variant" and not get_variant(value).in_paper:
        return f"{value} (not in the paper)"
    return value


def generated_fid_header(summaries: Iterable[Mapping[str, Any]]) -> str:
    """'FID (982 generated)': the generated-sample FID's column names how many images it drew."""
    results = [summary["metrics"].get("fid_generated", {}) for summary in summaries]
    counts = sorted({int(r["n_generated"]) for r in results if "n_generated" in r})
    return f"FID ({'/'.join(str(n) for n in counts)} generated)" if counts else METRIC_BY_KEY["fid_generated"].label


def fid_note(summaries: Iterable[Mapping[str, Any]]) -> str:
    """Which FID each FID column is."""
    return (
        "FID (paired): the N reconstructions vs their N ground-truth test images (ours), 95 % bootstrap CI; "
        f"{generated_fid_header(summaries)}: the FID Mind Reader reports, StyleGAN2-ADA's fid50k_full as the "
        "Mind Reader fork runs it (G_ema, random z, conditions cycled through the test set's predicted embeddings, "
        "vs the test images at the generator's resolution), one value without CI; both with pytorch-fid's Inception"
    )


def _oracle_notes(runs: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    return (ORACLE_NOTE,) if any(r["source"] == "oracle" for r in runs) else ()


def ablation_tables(runs: list[dict], ablations: Mapping[str, Any], data: Mapping[str, Any]) -> list[Table]:
    """The paper's four tables. ``runs``: dicts of the run keys, ``source`` (brain or oracle) and
    ``summary`` (metrics JSON); a setting's oracle row follows its brain row."""
    main = ablations["main"]
    tables = []
    for name, axis, title in ABLATION_TABLES:
        values = ablations[{"variant": "variants", "strategy": "strategies", "loss": "losses"}[axis]]
        values = [v for v in values if v in STRATEGIES_OF.get(name, values)]
        chosen = [
            run
            for subject in ablations["subjects"]
            for value in values
            for source in RECONSTRUCTION_SOURCES
            for run in runs
            if run["subject"] == subject
            and run[axis] == value
            and run["source"] == source
            and all(run[k] == main[k] for k in ("mapper", "loss", "variant", "strategy") if k != axis)
        ]
        labels = [{"subject": r["subject"], axis: _label(axis, r[axis]), "source": r["source"]} for r in chosen]
        frame = pd.DataFrame([_row(label, r["summary"], ABLATION_COLUMNS) for label, r in zip(labels, chosen)])
        fixed = ", ".join(f"{k} {main[k]}" for k in ("mapper", "loss", "variant", "strategy") if k != axis)
        summaries = [r["summary"] for r in chosen]
        tables.append(
            Table(
                name=name,
                title=f"{title} ({fixed})",
                frame=frame,
                labels=("subject", axis, "source"),
                columns=ABLATION_COLUMNS,
                data_note=f"{data_note(data, summaries)}; {fid_note(summaries)}",
                missing=_missing(summaries, ABLATION_COLUMNS),
                headers={"fid_generated": generated_fid_header(summaries)},
                notes=_oracle_notes(chosen),
            )
        )
    return tables


def comparison_table(
    runs: list[dict],
    ablations: Mapping[str, Any],
    data: Mapping[str, Any],
    common: Mapping[str, Any] | None = None,  # results/metrics/comparison.json (with external rows)
) -> Table:
    """The field's table: our mappers per subject and averaged (brain rows, then oracle rows),
    other methods' rows scored by us (``common``: every measured row on the test images every
    row has), then the quoted published rows. Column N: the test images each row is scored on."""
    main = ablations["main"]
    scored = {row["key"]: row["summary"] for row in (common or {}).get("rows", [])}

    def summary_of(run: Mapping[str, Any]) -> Mapping[str, Any]:
        return scored.get(run_key(run, run["source"]), run["summary"])

    chosen = [
        r
        for r in runs
        if r["mapper"] in ablations["mappers"]
        and r["variant"] == main["variant"]
        and r["strategy"] == main["strategy"]
        and r["loss"] == ("mse" if r["mapper"] == "ridge" else main["loss"])
    ]
    rows = []
    for mapper in ablations["mappers"]:
        method = f"ours: {mapper}" + (" (Mind Reader's mapper)" if mapper == "cnn" else "")
        for source in RECONSTRUCTION_SOURCES:
            mine = [r for r in chosen if r["mapper"] == mapper and r["source"] == source]
            labels = {"method": method, "source": source}
            per_subject = [
                _row({**labels, "subject": r["subject"], "N": _n_images([summary_of(r)])}, summary_of(r), COMPARISON_COLUMNS)
                for r in mine
            ]
            rows.extend(per_subject)
            if len(per_subject) > 1:
                mean = pd.DataFrame(per_subject)[list(COMPARISON_COLUMNS)].mean(skipna=False)
                count = _n_images([summary_of(r) for r in mine])
                rows.append({**labels, "subject": f"mean of {len(per_subject)}", "N": count, **mean.to_dict()})
    externals = [row for row in (common or {}).get("rows", []) if row["key"].startswith(EXTERNAL_PREFIX)]
    for row in externals:
        summary = row["summary"]
        labels = {"method": row["key"], "subject": summary["subject"], "source": "external", "N": _n_images([summary])}
        rows.append(_row(labels, summary, COMPARISON_COLUMNS))
    for method, values in QUOTED_ROWS.items():
        rows.append(
            {
                "method": f"{method} [quoted, not measured]",
                "subject": "subj01",
                "source": "published",
                "N": "",
                **{k: (math.nan if v is None else v) for k, v in zip(COMPARISON_COLUMNS, values)},
            }
        )
    main_desc = f"variant {main['variant']}, strategy {main['strategy']}, loss {main['loss']} (ridge: mse)"
    return Table(
        name="comparison",
        title=f"Comparison in the field's format ({main_desc}); rows marked [quoted, not measured]: {QUOTED_SOURCE}",
        frame=pd.DataFrame(rows),
        labels=("method", "subject", "source", "N"),
        columns=COMPARISON_COLUMNS,
        data_note=data_note(data, [summary_of(r) for r in chosen]),
        missing=_missing([summary_of(r) for r in chosen], COMPARISON_COLUMNS),
        notes=(*_oracle_notes(chosen), *_common_notes(common, externals)),
    )


def _n_images(summaries: Iterable[Mapping[str, Any]]) -> str:
    """'982', or '982/1000' when the summaries differ."""
    return "/".join(str(n) for n in sorted({int(s["n_images"]) for s in summaries}))


def _common_notes(common: Mapping[str, Any] | None, externals: list[Mapping[str, Any]]) -> tuple[str, ...]:
    if not common:
        return ()
    again = sum(row["rescored"] for row in common["rows"])
    notes = [
        f"N: test images a row is scored on. Every measured row (ours and external:) is scored on the "
        f"{common['n_images']} test images (nsd ids) that every measured row has; {again} of "
        f"{len(common['rows'])} rows had other images of their own and were scored again on these"
    ]
    for row in externals:
        notes.append(f"{row['key']}: {external_description(row)}")
    notes.append("external rows have no retrieval: a method's files hold no predicted embeddings")
    return tuple(notes)


def external_description(row: Mapping[str, Any]) -> str:
    """'png folder /x/recons (sha256 1a2b3c4d5e6f...), subj01, 982 images of its own at 512 px[, ...]'."""
    summary = row["summary"]
    source, recon = summary["external"], summary["reconstruction"]
    text = (
        f"{source['format']} {source['path']} (sha256 {source['sha256'][:12]}...), {source['subject']}, "
        f"{row['n_own']} images of its own at {recon['resolution']} px"
    )
    if recon.get("below_425_px"):
        text += " (below 425 px: upsampled for PixCorr and SSIM)"
    if summary.get("samples", {}).get("n", 1) > 1:
        text += f", {summary['samples']['n']} samples per image: sample 0 scored"
    if source.get("selection"):
        text += f", samples chosen by: {source['selection']}"
    return text


def external_sources_frame(common: Mapping[str, Any]) -> pd.DataFrame:
    """results/tables/external_sources.csv: per external row its source file and checksum."""
    records = []
    for row in common["rows"]:
        if not row["key"].startswith(EXTERNAL_PREFIX):
            continue
        summary = row["summary"]
        source = summary["external"]
        records.append(
            {
                "name": row["key"],
                "subject": source["subject"],
                "format": source["format"],
                "path": source["path"],
                "sha256": source["sha256"],
                "ids": source.get("ids", ""),
                "ids_sha256": source.get("ids_sha256", ""),
                "selection": source.get("selection") or "",
                "n_own": row["n_own"],
                "n_scored": summary["n_images"],
                "resolution": summary["reconstruction"]["resolution"],
                "samples": summary.get("samples", {}).get("n", 1),
            }
        )
    return pd.DataFrame(records)


# --- rendering ------------------------------------------------------------------------------


def _header(table: Table, key: str) -> str:
    metric = table.metrics[key]
    arrow = "↑" if metric.higher_is_better else "↓"
    return f"{table.headers.get(key, metric.label)}{' %' if metric.percent else ''} {arrow}"


def _is_number(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _cell(table: Table, row: Mapping[str, Any], key: str) -> str:
    value = row.get(key, math.nan)
    if not _is_number(value):
        return "–"
    # FD_CLIP's scale depends on the CLIP (small for unit-scale embeddings): significant digits
    spec = ".3g" if key == "fd_clip" else ".1f" if table.metrics[key].percent or key in FID_KEYS else ".3f"
    lo, hi = row.get(f"{key}_lo", math.nan), row.get(f"{key}_hi", math.nan)
    text = f"{value:{spec}}"
    if _is_number(lo):
        text += f" [{lo:{spec}}, {hi:{spec}}]"
    chance = row.get(f"chance_{key}", math.nan)
    if _is_number(chance):
        text += f" (chance {chance:{spec}})"
    return text


def _notes(table: Table) -> list[str]:
    notes = [f"Data: {table.data_note}.", *table.notes]
    if table.missing:
        grouped: dict[str, list[str]] = {}
        for key, reason in table.missing.items():
            grouped.setdefault(reason, []).append(table.metrics[key].label)
        for reason, labels in grouped.items():
            notes.append(f"Not measured ({', '.join(labels)}): {reason}.")
    notes.append("– : not measured or not reported. ↑/↓: higher/lower is better. Values: mean [95 % CI].")
    return notes


def to_markdown(table: Table) -> str:
    header = [*table.labels, *(_header(table, k) for k in table.columns)]
    lines = [f"**{table.title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.frame.to_dict("records"):
        cells = [str(row.get(label, "")) for label in table.labels] + [_cell(table, row, k) for k in table.columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + [f"{note}  " for note in _notes(table)]) + "\n"


def _tex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text.replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$").replace("–", "--")


def to_latex(table: Table) -> str:
    header = [*table.labels, *(_header(table, k) for k in table.columns)]
    lines = [
        r"\begin{table}[ht]",
        r"\centering\scriptsize",
        rf"\caption{{{_tex_escape(table.title)}. {_tex_escape(' '.join(_notes(table)))}}}",
        rf"\label{{tab:{table.name}}}",
        r"\begin{tabular}{" + "l" * len(table.labels) + "r" * len(table.columns) + "}",
        r"\toprule",
        " & ".join(_tex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    for row in table.frame.to_dict("records"):
        cells = [str(row.get(label, "")) for label in table.labels] + [_cell(table, row, k) for k in table.columns]
        lines.append(" & ".join(_tex_escape(c) for c in cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_csv_frame(table: Table) -> pd.DataFrame:
    """Label columns, then per metric key, key_lo, key_hi (and chance_key where the table has it)."""
    frame = table.frame.copy()
    per_key = [
        c
        for k in table.columns
        for c in (k, f"{k}_lo", f"{k}_hi", f"chance_{k}")
        if c in frame or not c.startswith("chance_")
    ]
    for column in (*table.labels, *per_key):
        if column not in frame:
            frame[column] = math.nan
    frame = frame[[*table.labels, *per_key]]
    frame["data"] = table.data_note
    return frame


def write_table(table: Table, folder: str | os.PathLike) -> list[Path]:
    """results/tables/<name>.csv, .md, .tex (each written atomically)."""
    folder = Path(folder)
    written = []
    for suffix, render in (
        ("csv", lambda t, p: to_csv_frame(t).to_csv(p, index=False, float_format="%.6g")),
        ("md", lambda t, p: Path(p).write_text(to_markdown(t))),
        ("tex", lambda t, p: Path(p).write_text(to_latex(t))),
    ):
        path = folder / f"{table.name}.{suffix}"
        with atomic_path(path) as tmp:
            render(table, tmp)
        written.append(path)
    return written


def all_tables(
    runs: list[dict], ablations: Mapping[str, Any], data: Mapping[str, Any], common: Mapping[str, Any] | None = None
) -> list[Table]:
    return [*ablation_tables(runs, ablations, data), comparison_table(runs, ablations, data, common)]

