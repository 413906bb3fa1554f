# CLIP space: the demo CLIP (when clip.train_demo), image and caption embeddings, and
# fetch_weights, the one rule that downloads (run it on a machine with internet).
import sys

from mindreader.nsd_paths import (
    CAPTION_SPLITS,
    EXPDESIGN_RELPATH,
    STIM_INFO_RELPATH,
    STIMULI_RELPATH,
    captions_relpath,
)

CLIP = config["clip"]
CLIP_DEMO_DIR = CLIP["demo"]["dir"]
CAPTION_RELPATHS = [captions_relpath(split) for split in CAPTION_SPLITS]


def clip_model_files():
    """The files a rule that loads CLIP takes as input: the demo CLIP's, or the weights file."""
    if CLIP["train_demo"]:
        return [
            f"{CLIP_DEMO_DIR}/open_clip_config.json",
            f"{CLIP_DEMO_DIR}/open_clip_model.safetensors",
        ]
    return [CLIP["weights"]]


def configured_weights(cfg):
    """Every weights file the config names: each section with `weights_name` and `weights`
    keys (a section that trains its own network instead, `train_demo: true`, names none).
    """
    found = []
    if isinstance(cfg, dict):
        if cfg.get("weights_name") and cfg.get("weights") and not cfg.get("train_demo"):
            found.append(
                {
                    "name": cfg["weights_name"],
                    "path": cfg["weights"],
                    "sha256": cfg.get("sha256", ""),
                }
            )
        for value in cfg.values():
            found.extend(configured_weights(value))
    return found


def missing_weights_message(cfg):
    """None, or which configured weights files are absent and how to fetch them (nothing
    downloads while the workflow runs, so say it before a rule fails for want of one).
    """
    missing = [w for w in configured_weights(cfg) if not os.path.isfile(w["path"])]
    if not missing:
        return None
    listed = ", ".join("%s (%s)" % (w["name"], w["path"]) for w in missing)
    return (
        "Pretrained weights named in the config are not present: %s. Fetch them with "
        "'snakemake --cores 1 fetch_weights' (same --configfile) on a machine with internet."
        % listed
    )


if missing_weights_message(config):
    print(missing_weights_message(config), file=sys.stderr)


if CLIP["train_demo"]:

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
            mem_mb=4000,
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
    threads: 2
    resources:
        mem_mb=8000,
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
    threads: 2
    resources:
        mem_mb=8000,
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
