# Figures (PDF + PNG) and the HTML report: `snakemake --report report.html` after a run collects
# every table and figure below with its caption (rules/report/*.rst), one category per stage.
import os

from mindreader.nsd.paths import STIMULI_RELPATH

# Helper functions and MAIN, FIGURE_SUBJECT: rules/common.smk.


report: "report/workflow.rst"


# Cheap plotting jobs: they run on the submitting host, no cluster job (hence no benchmark).
localrules:
    fig3,
    subject_reconstructions,
    training_curves,
    retrieval_examples,
    metric_bars,
    scene_recovery_figure,


rule fig3:
    input:
        reconstructions=[path for _, path in fig3_rows()],
        nsd=nsd_inputs(STIMULI_RELPATH),
    output:
        pdf="results/figures/fig3.pdf",
        png=figure_png("results/figures/fig3.png", "report/fig3.rst", "reconstructions"),
    log:
        "results/logs/figures/fig3.log",
    conda:
        "../envs/plots.yaml"
    params:
        config=config_param("evaluation.figure_images"),
        labels=[label for label, _ in fig3_rows()],
        title=f"Reconstructions of {FIGURE_SUBJECT}'s test images per conditioning variant "
        f"(mapper {MAIN['mapper']}, loss {MAIN['loss']}, strategy {MAIN['strategy']})"
        + (
            f"; oracle: the {MAIN['variant']} generator from the true CLIP embeddings"
            if ORACLE
            else ""
        ),
    script:
        "../scripts/plot_reconstructions.py"


rule subject_reconstructions:
    input:
        reconstructions=lambda w: [path for _, path in subject_grid_rows(w.subject)],
        nsd=nsd_inputs(STIMULI_RELPATH),
    output:
        pdf="results/figures/{subject}/reconstructions.pdf",
        png=figure_png(
            "results/figures/{subject}/reconstructions.png",
            "report/subject_reconstructions.rst",
            "reconstructions",
        ),
    log:
        "results/logs/figures/{subject}/reconstructions.log",
    conda:
        "../envs/plots.yaml"
    params:
        config=config_param("evaluation.figure_images"),
        labels=lambda w: [label for label, _ in subject_grid_rows(w.subject)],
        title=lambda w: f"Reconstructions of {w.subject}'s test images per mapper "
        f"(variant {MAIN['variant']}, strategy {MAIN['strategy']})",
    script:
        "../scripts/plot_reconstructions.py"


rule training_curves:
    input:
        mapper_curves=lambda w: [
            f"results/mappers/{w.subject}/{MAIN['mapper']}/{MAIN['loss']}/{t}/curve.csv"
            for t in ("img", "cap")
        ],
        generator_losses=lambda w: os.path.join(
            run_path("results/generator", "", main_run(w.subject)), "losses.csv"
        ),
    output:
        pdf="results/figures/{subject}/training_curves.pdf",
        png=figure_png(
            "results/figures/{subject}/training_curves.png",
            "report/training_curves.rst",
            "training",
        ),
    log:
        "results/logs/figures/{subject}/training_curves.log",
    conda:
        "../envs/plots.yaml"
    params:
        mapper_labels=["img mapper", "cap mapper"],
        generator_label=f"G {MAIN['variant']} {MAIN['strategy']}",
        title=lambda w: f"Training curves of {w.subject}'s main run (mapper {MAIN['mapper']}, loss {MAIN['loss']})",
    script:
        "../scripts/plot_training_curves.py"


rule retrieval_examples:
    input:
        predictions=lambda w: f"results/mappers/{w.subject}/{MAIN['mapper']}/{MAIN['loss']}/img/pred_test.h5",
        nsd=nsd_inputs(STIMULI_RELPATH),
    output:
        pdf="results/figures/{subject}/retrieval.pdf",
        png=figure_png(
            "results/figures/{subject}/retrieval.png",
            "report/retrieval.rst",
            "retrieval",
        ),
    log:
        "results/logs/figures/{subject}/retrieval.log",
    conda:
        "../envs/plots.yaml"
    params:
        n_brains=config["evaluation"]["retrieval_examples"],
        title=lambda w: f"{w.subject}: top-5 test images retrieved from the predicted CLIP image embedding "
        f"(mapper {MAIN['mapper']}, loss {MAIN['loss']})",
    script:
        "../scripts/plot_retrieval.py"


rule metric_bars:
    input:
        metrics=[
            run_path("results/metrics", ".json", main_run(FIGURE_SUBJECT, variant=v))
            for v in config["ablations"]["variants"]
        ],
        comparison=comparison_metrics_files(),
    output:
        pdf="results/figures/metrics_conditioning.pdf",
        png=figure_png(
            "results/figures/metrics_conditioning.png",
            "report/metric_bars.rst",
            "metrics",
        ),
    log:
        "results/logs/figures/metrics_conditioning.log",
    conda:
        "../envs/plots.yaml"
    params:
        labels=config["ablations"]["variants"],
        row_keys=[
            run_key(main_run(FIGURE_SUBJECT, variant=v), "brain")
            for v in config["ablations"]["variants"]
        ],
        external=[
            EXTERNAL_PREFIX + name
            for name in sorted(EXTERNAL)
            if EXTERNAL[name]["subject"] == FIGURE_SUBJECT
        ],
        title=f"{FIGURE_SUBJECT}: metrics per conditioning variant"
        + (" and other methods" if EXTERNAL else "")
        + f", 95 % CIs (mapper {MAIN['mapper']}, loss {MAIN['loss']}, strategy {MAIN['strategy']})",
    script:
        "../scripts/plot_metric_bars.py"


# The information table's factors across the stages, one panel per mapper of the figure subject's
# main setting; the probe stages read the main variant's first embedding.
rule scene_recovery_figure:
    input:
        table="results/tables/scene_recovery.csv",
    output:
        pdf="results/figures/scene_recovery.pdf",
        png=figure_png(
            "results/figures/scene_recovery.png",
            "report/scene_recovery.rst",
            "information",
        ),
    log:
        "results/logs/figures/scene_recovery.log",
    conda:
        "../envs/plots.yaml"
    params:
        subject=FIGURE_SUBJECT,
        mappers=list(dict.fromkeys([MAIN["mapper"], *config["ablations"]["mappers"]])),
        variant=MAIN["variant"],
        embedding=VARIANTS[MAIN["variant"]].targets[0],
        title=f"{FIGURE_SUBJECT}: where the planted scene is lost (variant {MAIN['variant']}; probes "
        f"on the {VARIANTS[MAIN['variant']].targets[0]} embedding); 95 % bootstrap CIs",
    script:
        "../scripts/plot_scene_recovery.py"
