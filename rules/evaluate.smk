# Evaluation: every metric of the battery with bootstrap 95 % CIs per run (results/metrics/...),
# then the paper's tables and the field's comparison table (results/tables/).
# The battery's network weights are not inputs: a missing file makes its metrics "missing" (with
# the reason) instead of stopping the workflow; `params.weights_present` reruns a run's
# evaluation when a weights file appears.
import os

from mindreader.evaluation.tables import TABLE_NAMES
from mindreader.nsd_paths import STIMULI_RELPATH

EVAL = config["evaluation"]
RUN_WILDCARDS = "{subject}/{mapper}/{loss}/{variant}/{strategy}"
EVAL_CONSTRAINTS = {
    "mapper": "cnn|ridge|mlp",
    "loss": "mse|cos|mse_cos|contrastive|mse_cos_contrastive",
    "variant": r"img|cap|img\+cap|avg|cat",
    "strategy": "finetune|scratch|e2e",
}


def run_path(prefix, suffix, run):
    return f"{prefix}/{RUN_WILDCARDS}{suffix}".format(**run)


def metrics_files():
    return [run_path("results/metrics", ".json", run) for run in evaluation_runs()]


def evaluation_predictions(w):
    """Predicted test embeddings per mapper target: the frozen mappers' pred_test.h5, or the
    end-to-end run's own (one file holding every condition it trained)."""
    if w.strategy == "e2e":
        folder = run_path("results/generator", "", dict(w.items()))
        return {"e2e": os.path.join(folder, "e2e_pred_test.h5")}
    return {
        t: f"results/mappers/{w.subject}/{w.mapper}/{w.loss}/{t}/pred_test.h5"
        for t in ("img", "cap")
    }


def evaluation_clip_files():
    """The CLIP of the CLIP metrics is an input only when it is the workflow's own (the demo CLIP
    is made by a rule); another CLIP, like the networks, may be absent (metrics missing).
    """
    return clip_model_files() if EVAL["clip"] is None else []


def weights_present():
    files = {name: entry["weights"] for name, entry in EVAL["networks"].items()}
    if EVAL["clip"] is not None:
        files["clip"] = EVAL["clip"]["weights"]
    return {name: os.path.isfile(path) for name, path in sorted(files.items())}


def data_description():
    """Which data the numbers come from; every table prints it."""
    prepare = config["prepare"]
    return {
        "synthetic": bool(SYNTHETIC),
        "nsd_root": NSD_ROOT,
        "sessions": prepare["sessions"],
        "split": prepare["split"],
        "test_repeats": prepare["test_repeats"],
    }


def evaluation_targets():
    """Every table and figure (for `rule all`); the per-run metrics come with them."""
    tables = expand(
        "results/tables/{name}.{ext}", name=TABLE_NAMES, ext=("csv", "md", "tex")
    )
    return tables + figure_targets()


rule evaluate_run:
    input:
        reconstructions=f"results/reconstructions/{RUN_WILDCARDS}.h5",
        predictions=lambda w: sorted(set(evaluation_predictions(w).values())),
        nsd=nsd_inputs(STIMULI_RELPATH),
        clip=evaluation_clip_files(),
    output:
        json=f"results/metrics/{RUN_WILDCARDS}.json",
        per_image=f"results/metrics/{RUN_WILDCARDS}.per_image.csv",
    log:
        f"results/logs/evaluate/{RUN_WILDCARDS}.log",
    benchmark:
        f"results/benchmarks/evaluate/{RUN_WILDCARDS}.tsv"
    wildcard_constraints:
        **EVAL_CONSTRAINTS,
    conda:
        "../envs/metrics.yaml"
    threads: 2
    resources:
        mem_mb=8000,
    params:
        predictions=evaluation_predictions,
        weights_present=weights_present(),
        data=data_description(),
    script:
        "../scripts/evaluate_run.py"


# Cheap CPU job: runs on the submitting host, no cluster job (hence no benchmark).
localrules:
    make_tables,


rule make_tables:
    input:
        metrics=metrics_files(),
    output:
        **{
            f"{name}_{ext}": (
                report(
                    f"results/tables/{name}.csv",
                    caption=f"report/table_{name}.rst",
                    category="4. Tables",
                    subcategory="comparison" if name == "comparison" else "ablations",
                )
                if ext == "csv"
                else f"results/tables/{name}.{ext}"
            )
            for name in TABLE_NAMES
            for ext in ("csv", "md", "tex")
        },
    log:
        "results/logs/make_tables.log",
    conda:
        "../envs/plots.yaml"
    params:
        runs=evaluation_runs(),
        data=data_description(),
    script:
        "../scripts/make_tables.py"
