# CLIP space: the demo CLIP (when clip.train_demo), image and caption embeddings, and
# fetch_weights, the one rule that downloads (run it on a machine with internet).
import sys

from mindreader.nsd.paths import EXPDESIGN_RELPATH, STIM_INFO_RELPATH, STIMULI_RELPATH

# Helper functions and CLIP, CLIP_DEMO_DIR, CAPTION_RELPATHS: rules/common.smk.

if missing_weights_message(config):
    print(missing_weights_message(config), file=sys.stderr)


# With a release (config demo_weights) the demo CLIP is read from it, never trained over it.
if CLIP["train_demo"] and not DEMO_WEIGHTS:

    rule train_demo_clip:
        input:
            nsd=nsd_inputs(STIM_INFO_RELPATH, STIMULI_RELPATH, *CAPTION_RELPATHS),
            prepared=expand("results/prepared/{subject}.h5", subject=SUBJECTS),
        output:
            config=f"{CLIP_DEMO_DIR}/open_clip_config.json",
            weights=f"{CLIP_DEMO_DIR}/open_clip_model.safetensors",
            curve=f"{CLIP_DEMO_DIR}/curve.csv",
            metrics=f"{CLIP_DEMO_DIR}/metrics.json",
        log:
            "results/logs/clip/train_demo_clip.log",
        benchmark:
            "results/benchmarks/clip/train_demo_clip.tsv"
        conda:
            "../envs/torch.yaml"
        # measured on the shared 2-core machine: 1 thread 90 CPU-s for 300 steps, 2 threads 770
        # CPU-s (a model this small gains nothing from a second thread under load)
        threads: 1
        resources:
            mem_mb=per_attempt(4000),
            runtime=per_attempt(30),
        params:
            config=config_param("clip.demo", "seed"),
        script:
            "../scripts/train_demo_clip.py"


rule embed_images:
    input:
        nsd=nsd_inputs(EXPDESIGN_RELPATH, STIM_INFO_RELPATH, STIMULI_RELPATH),
        clip=clip_model_files(),
    output:
        "results/clip/images.h5",
    log:
        "results/logs/clip/embed_images.log",
    benchmark:
        "results/benchmarks/clip/embed_images.tsv"
    conda:
        "../envs/torch.yaml"
    threads: CLIP["threads"]
    resources:
        gpu=CLIP["gpus"],
        mem_mb=per_attempt(CLIP["mem_mb"]),
        runtime=per_attempt(CLIP["runtime"]),
    params:
        config=config_param(
            "clip", "subjects", "prepare.sessions", "seed", without=["clip.screening"]
        ),
    script:
        "../scripts/embed_images.py"


rule embed_captions:
    input:
        images="results/clip/images.h5",
        nsd=nsd_inputs(STIM_INFO_RELPATH, *CAPTION_RELPATHS),
        clip=clip_model_files(),
    output:
        h5="results/clip/captions.h5",
        tsv="results/clip/captions_selected.tsv",
    log:
        "results/logs/clip/embed_captions.log",
    benchmark:
        "results/benchmarks/clip/embed_captions.tsv"
    conda:
        "../envs/torch.yaml"
    threads: CLIP["threads"]
    resources:
        gpu=CLIP["gpus"],
        mem_mb=per_attempt(CLIP["mem_mb"]),
        runtime=per_attempt(CLIP["runtime"]),
    params:
        config=config_param("clip", "seed"),
    script:
        "../scripts/embed_captions.py"


localrules:
    fetch_weights,


# No outputs on purpose: it runs only when asked for (`snakemake fetch_weights`), never as a
# dependency of a rule on a compute node without internet.
rule fetch_weights:
    log:
        "results/logs/fetch_weights.log",
    conda:
        "../envs/data.yaml"
    params:
        entries=configured_weights(config),
    script:
        "../scripts/fetch_weights.py"
