# Evaluation: every metric of the battery with bootstrap 95 % CIs per run (results/metrics/...),
# then the paper's tables and the field's comparison table (results/tables/). The FID that Mind
# Reader reports (generated samples vs the test images) needs the generator: rule fid_generated.
# The battery's network weights are not inputs: a missing file makes its metrics "missing" (with
# the reason) instead of stopping the workflow; `params.weights_present` reruns a run's
# evaluation when a weights file appears. Each run's oracle (evaluation.oracle: its G_ema from the
# true embeddings) is evaluated the same way, beside it in the tables. On the synthetic NSD the
# information table scores where the planted scene is lost (scene_recovery_table).
from mindreader.names import TABLE_NAMES
from mindreader.nsd.paths import STIMULI_RELPATH
from mindreader.synth import SCENES_RELPATH

# Helper functions and EVAL, RUN_WILDCARDS: rules/common.smk.


# One job evaluates the run's reconstructions and (evaluation.oracle) its oracle's: the same
# metrics, retrieval (of the predicted embeddings) reported not applicable to the oracle.
rule evaluate_run:
    input:
        reconstructions=f"results/reconstructions/{RUN_WILDCARDS}.h5",
        oracle_reconstructions=(
            f"results/reconstructions/{RUN_WILDCARDS}{ORACLE_SUFFIX}.h5"
            if ORACLE
            else []
        ),
        predictions=lambda w: sorted(set(evaluation_predictions(w).values())),
        nsd=nsd_inputs(STIMULI_RELPATH),
        clip=evaluation_clip_files(),
        fid_generated=generated_fid_files,
        oracle_fid_generated=lambda w: (
            generated_fid_files(w, ORACLE_SUFFIX) if ORACLE else []
        ),
    output:
        **with_oracle(
            lambda suffix: {
                "json": f"results/metrics/{RUN_WILDCARDS}{suffix}.json",
                "per_image": f"results/metrics/{RUN_WILDCARDS}{suffix}.per_image.csv",
            }
        ),
    log:
        f"results/logs/evaluate/{RUN_WILDCARDS}.log",
    benchmark:
        f"results/benchmarks/evaluate/{RUN_WILDCARDS}.tsv"
    conda:
        "../envs/metrics.yaml"
    threads: EVAL["threads"]
    resources:
        gpu=EVAL["gpus"],
        mem_mb=per_attempt(EVAL["mem_mb"]),
        runtime=per_attempt(EVAL["runtime"]),
    params:
        config=BATTERY_CONFIG,
        predictions=evaluation_predictions,
        weights_present=weights_present(),
        data=data_description(),
    script:
        "../scripts/evaluate_run.py"


# StyleGAN2-ADA's fid50k_full protocol as Mind Reader ran it: evaluation.fid_generated_images
# images of the run's G_ema (random z, conditions from the test set's predictions) vs the test
# images at the generator's resolution.
rule fid_generated:
    input:
        network=f"{RUN}/network.json",
        weights=f"{RUN}/G_ema.safetensors",
        predictions=run_predictions,
        nsd=nsd_inputs(STIMULI_RELPATH),
    output:
        json=f"results/metrics/{RUN_WILDCARDS}.fid_generated.json",
    log:
        f"results/logs/evaluate/{RUN_WILDCARDS}.fid_generated.log",
    benchmark:
        f"results/benchmarks/evaluate/{RUN_WILDCARDS}.fid_generated.tsv"
    conda:
        "../envs/metrics.yaml"
    threads: EVAL["threads"]
    resources:
        gpu=EVAL["gpus"],
        mem_mb=per_attempt(EVAL["mem_mb"]),
        runtime=per_attempt(EVAL["runtime"]),
    params:
        config=config_param("evaluation", "seed", without=["evaluation.external"]),
        true_targets=None,
    script:
        "../scripts/fid_generated.py"


use rule fid_generated as fid_generated_oracle with:
    input:
        network=f"{RUN}/network.json",
        weights=f"{RUN}/G_ema.safetensors",
        predictions=run_predictions,
        nsd=nsd_inputs(STIMULI_RELPATH),
        true_targets=lambda w: list(oracle_targets(w).values()),
    output:
        json=f"results/metrics/{RUN_WILDCARDS}{ORACLE_SUFFIX}.fid_generated.json",
    log:
        f"results/logs/evaluate/{RUN_WILDCARDS}{ORACLE_SUFFIX}.fid_generated.log",
    benchmark:
        f"results/benchmarks/evaluate/{RUN_WILDCARDS}{ORACLE_SUFFIX}.fid_generated.tsv"
    params:
        config=config_param("evaluation", "seed", without=["evaluation.external"]),
        true_targets=oracle_targets,


# Another method's reconstructions (evaluation.external NAME) scored by the battery on its own
# images, as `python -m mindreader.score` scores them.
rule score_external:
    input:
        images=lambda w: external_files(w.name),
        nsd=nsd_inputs(STIMULI_RELPATH),
        clip=evaluation_clip_files(),
    output:
        json=f"{EXTERNAL_DIR}/metrics.json",
        per_image=f"{EXTERNAL_DIR}/per_image.csv",
    log:
        "results/logs/evaluate/external/{name}.log",
    benchmark:
        "results/benchmarks/evaluate/external/{name}.tsv"
    wildcard_constraints:
        name="[^/]+",
    conda:
        "../envs/metrics.yaml"
    threads: EVAL["threads"]
    resources:
        gpu=EVAL["gpus"],
        mem_mb=per_attempt(EVAL["mem_mb"]),
        runtime=per_attempt(EVAL["runtime"]),
    params:
        entry=lambda w: EXTERNAL[w.name],
        config=BATTERY_CONFIG,
        weights_present=weights_present(),
    script:
        "../scripts/score_external.py"


# Every measured row of the comparison table and the metric bars, and each external row, on the
# test images that every row has (a row whose own images are those keeps its metrics).
rule comparison_metrics:
    input:
        metrics=[row["metrics"] for row in COMPARISON_ROWS],
        per_image=[row["per_image"] for row in COMPARISON_ROWS],
        reconstructions=[row["reconstructions"] for row in COMPARISON_ROWS],
        predictions=sorted(
            {p for row in COMPARISON_ROWS for p in (row["predictions"] or {}).values()}
        ),
        external=expand(f"{EXTERNAL_DIR}/metrics.json", name=sorted(EXTERNAL)),
        external_files=[p for name in sorted(EXTERNAL) for p in external_files(name)],
        nsd=nsd_inputs(STIMULI_RELPATH),
        clip=evaluation_clip_files(),
    output:
        COMPARISON_METRICS,
    log:
        "results/logs/evaluate/comparison_metrics.log",
    benchmark:
        "results/benchmarks/evaluate/comparison_metrics.tsv"
    conda:
        "../envs/metrics.yaml"
    threads: EVAL["threads"]
    resources:
        gpu=EVAL["gpus"],
        mem_mb=per_attempt(EVAL["mem_mb"]),
        runtime=per_attempt(EVAL["runtime"]),
    params:
        rows=COMPARISON_ROWS,
        external={
            name: {**EXTERNAL[name], "folder": EXTERNAL_DIR.format(name=name)}
            for name in sorted(EXTERNAL)
        },
        config=BATTERY_CONFIG,
        weights_present=weights_present(),
    script:
        "../scripts/comparison_metrics.py"


# Cheap CPU job: runs on the submitting host, no cluster job (hence no benchmark).
localrules:
    make_tables,


rule make_tables:
    input:
        metrics=metrics_files(),
        oracle_metrics=metrics_files(ORACLE_SUFFIX) if ORACLE else [],
        comparison=comparison_metrics_files(),
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
        **(
            {
                "external_sources": report(
                    "results/tables/external_sources.csv",
                    caption="report/external_sources.rst",
                    category="4. Tables",
                    subcategory="comparison",
                )
            }
            if EXTERNAL
            else {}
        ),
    log:
        "results/logs/make_tables.log",
    conda:
        "../envs/plots.yaml"
    params:
        config=config_param("ablations"),
        runs=evaluation_runs(),
        data=data_description(),
    script:
        "../scripts/make_tables.py"


# Where the planted scene is lost (synthetic NSD only: scenes.json is its planted truth): per
# factor, probes on the true and the predicted CLIP embeddings, scene recovery of the oracle and
# the brain-driven reconstructions (mindreader.evaluation.information).
rule scene_recovery_table:
    input:
        nsd=nsd_inputs(SCENES_RELPATH),
        prepared=list(scene_recovery_inputs()["prepared"].values()),
        clip=list(scene_recovery_inputs()["clip_files"].values()),
        predictions=[p["path"] for p in scene_recovery_inputs()["predictions"]],
        reconstructions=[r["path"] for r in scene_recovery_inputs()["reconstructions"]],
    output:
        csv=report(
            "results/tables/scene_recovery.csv",
            caption="report/table_scene_recovery.rst",
            category="4. Tables",
            subcategory="information",
        ),
        md="results/tables/scene_recovery.md",
        tex="results/tables/scene_recovery.tex",
    log:
        "results/logs/scene_recovery_table.log",
    benchmark:
        "results/benchmarks/scene_recovery_table.tsv"
    conda:
        "../envs/metrics.yaml"
    threads: EVAL["threads"]
    resources:
        mem_mb=per_attempt(8000),
        runtime=per_attempt(30),
    params:
        **scene_recovery_inputs(),
        config=config_param("evaluation.bootstrap", "seed"),
        data=data_description(),
        title=f"Where the planted scene is lost: per factor, what the CLIP space holds (clip), what "
        f"the brain mapping keeps (brain_embedding), what the generator draws from the true (oracle) "
        f"and the predicted (brain) embeddings (loss {MAIN['loss']} (ridge: mse), strategy "
        f"{MAIN['strategy']})",
    script:
        "../scripts/scene_recovery_table.py"
