# Evaluation: every metric of the battery with bootstrap 95 % CIs per run (results/metrics/...),
# then the paper's tables and the field's comparison table (results/tables/). The FID that Mind
# Reader reports (generated samples vs the test images) needs the generator: rule fid_generated.
# The battery's network weights are not inputs: a missing file makes its metrics "missing" (with
# the reason) instead of stopping the workflow; `params.weights_present` reruns a run's
# evaluation when a weights file appears.
from mindreader.names import TABLE_NAMES
from mindreader.nsd.paths import STIMULI_RELPATH

# Helper functions and EVAL, RUN_WILDCARDS: rules/common.smk.


rule evaluate_run:
    input:
        reconstructions=f"results/reconstructions/{RUN_WILDCARDS}.h5",
        predictions=lambda w: sorted(set(evaluation_predictions(w).values())),
        nsd=nsd_inputs(STIMULI_RELPATH),
        clip=evaluation_clip_files(),
        fid_generated=generated_fid_files,
    output:
        json=f"results/metrics/{RUN_WILDCARDS}.json",
        per_image=f"results/metrics/{RUN_WILDCARDS}.per_image.csv",
    log:
        f"results/logs/evaluate/{RUN_WILDCARDS}.log",
    benchmark:
        f"results/benchmarks/evaluate/{RUN_WILDCARDS}.tsv"
    conda:
        "../envs/metrics.yaml"
    threads: EVAL["threads"]
    resources:
        mem_mb=8000,
    params:
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
        mem_mb=8000,
    script:
        "../scripts/fid_generated.py"


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
