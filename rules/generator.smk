# Generator: language-free pre-training of the Lafite-style StyleGAN2 on CLIP image embeddings,
# fine-tuning per subject x mapper x loss x variant x strategy on the frozen mappers' predicted
# embeddings (or end to end), and reconstruction of every test sample.
# Checkpoints live under results/checkpoints/generator/ (not outputs: a failed job keeps them,
# and the rerun resumes). generator.gpus > 1 runs one job on several GPUs with torchrun.
import re

from mindreader.generator.conditioning import VARIANTS
from mindreader.nsd_paths import STIMULI_RELPATH

GEN = config["generator"]
NETWORK_FILES = [
    "network.json",
    "G.safetensors",
    "G_ema.safetensors",
    "D.safetensors",
    "losses.csv",
]
PRETRAINED = "results/generator/pretrained"
RUN = "results/generator/{subject}/{mapper}/{loss}/{variant}/{strategy}"
GEN_CONSTRAINTS = {
    "mapper": "cnn|ridge|mlp",
    "loss": "mse|cos|mse_cos|contrastive|mse_cos_contrastive",
    "variant": "|".join(re.escape(v) for v in VARIANTS),
}


def generator_clip_files():
    """CLIP is loaded for the itc term only."""
    return clip_model_files() if GEN["itc"] > 0 else []


def mapper_folders(w):
    return [
        f"results/mappers/{w.subject}/{w.mapper}/{w.loss}/{t}"
        for t in VARIANTS[w.variant].targets
    ]


def run_predictions(w):
    """Test conditions of a run: the frozen mappers' pred_test.h5, or the end-to-end run's own."""
    if w.strategy == "e2e":
        return [f"{RUN}/e2e_pred_test.h5".format(**dict(w.items()))]
    return [f"{folder}/pred_test.h5" for folder in mapper_folders(w)]


def embedding_files(w):
    """CLIP targets of each condition of the variant (end-to-end mapper loss)."""
    files = {"img": "results/clip/images.h5", "cap": "results/clip/captions.h5"}
    return [files[t] for t in VARIANTS[w.variant].targets]


def generator_targets():
    """Every reconstruction the tables need (evaluation_runs() in common.smk)."""
    return [
        "results/reconstructions/{subject}/{mapper}/{loss}/{variant}/{strategy}.h5".format(
            **run
        )
        for run in evaluation_runs()
    ]


def gpu_runtime(minutes):
    return lambda wildcards, attempt: minutes * attempt


rule pretrain_generator:
    input:
        nsd=nsd_inputs(STIMULI_RELPATH),
        images="results/clip/images.h5",
        prepared=expand("results/prepared/{subject}.h5", subject=SUBJECTS),
        clip=generator_clip_files(),
    output:
        expand(f"{PRETRAINED}/{{name}}", name=NETWORK_FILES),
    log:
        "results/logs/generator/pretrain.log",
    benchmark:
        "results/benchmarks/generator/pretrain.tsv"
    conda:
        "../envs/torch.yaml"
    threads: GEN["threads"]
    resources:
        gpu=GEN["gpus"],
        mem_mb=GEN["pretrain"]["mem_mb"],
        runtime=gpu_runtime(GEN["pretrain"]["runtime"]),
    params:
        stage="pretrain",
        checkpoint_dir="results/checkpoints/generator/pretrained",
    script:
        "../scripts/train_generator.py"


rule finetune_generator:
    input:
        nsd=nsd_inputs(STIMULI_RELPATH),
        pred_train=lambda w: [f"{folder}/pred_train.h5" for folder in mapper_folders(w)],
        pretrained=lambda w: (
            expand(f"{PRETRAINED}/{{name}}", name=NETWORK_FILES)
            if w.strategy == "finetune"
            else []
        ),
        clip=generator_clip_files(),
    output:
        expand(f"{RUN}/{{name}}", name=NETWORK_FILES, allow_missing=True),
    log:
        "results/logs/generator/finetune/{subject}/{mapper}/{loss}/{variant}/{strategy}.log",
    benchmark:
        "results/benchmarks/generator/finetune/{subject}/{mapper}/{loss}/{variant}/{strategy}.tsv"
    wildcard_constraints:
        **GEN_CONSTRAINTS,
        strategy="finetune|scratch",
    conda:
        "../envs/torch.yaml"
    threads: GEN["threads"]
    resources:
        gpu=GEN["gpus"],
        mem_mb=GEN["finetune"]["mem_mb"],
        runtime=gpu_runtime(GEN["finetune"]["runtime"]),
    params:
        stage="finetune",
        checkpoint_dir=lambda w: "results/checkpoints/generator/{subject}/{mapper}/{loss}/{variant}/{strategy}".format(
            **dict(w.items())
        ),
    script:
        "../scripts/train_generator.py"


rule finetune_e2e:
    input:
        nsd=nsd_inputs(STIMULI_RELPATH),
        prepared="results/prepared/{subject}.h5",
        mappers=lambda w: [
            f"{folder}/model.safetensors" for folder in mapper_folders(w)
        ],
        targets=embedding_files,
        pretrained=expand(f"{PRETRAINED}/{{name}}", name=NETWORK_FILES),
        clip=generator_clip_files(),
    output:
        expand(
            f"{RUN}/{{name}}",
            name=NETWORK_FILES + ["e2e_pred_test.h5"],
            allow_missing=True,
        ),
    log:
        "results/logs/generator/finetune/{subject}/{mapper}/{loss}/{variant}/{strategy}.log",
    benchmark:
        "results/benchmarks/generator/finetune/{subject}/{mapper}/{loss}/{variant}/{strategy}.tsv"
    wildcard_constraints:
        **GEN_CONSTRAINTS,
        strategy="e2e",
    conda:
        "../envs/torch.yaml"
    threads: GEN["threads"]
    resources:
        gpu=GEN["gpus"],
        mem_mb=GEN["finetune"]["mem_mb"],
        runtime=gpu_runtime(GEN["finetune"]["runtime"]),
    params:
        stage="e2e",
        checkpoint_dir=lambda w: "results/checkpoints/generator/{subject}/{mapper}/{loss}/{variant}/{strategy}".format(
            **dict(w.items())
        ),
    script:
        "../scripts/train_generator.py"


rule reconstruct:
    input:
        network=f"{RUN}/network.json",
        weights=f"{RUN}/G_ema.safetensors",
        predictions=run_predictions,
    output:
        h5="results/reconstructions/{subject}/{mapper}/{loss}/{variant}/{strategy}.h5",
        png=directory(
            "results/reconstructions/{subject}/{mapper}/{loss}/{variant}/{strategy}_png"
        ),
    log:
        "results/logs/generator/reconstruct/{subject}/{mapper}/{loss}/{variant}/{strategy}.log",
    benchmark:
        "results/benchmarks/generator/reconstruct/{subject}/{mapper}/{loss}/{variant}/{strategy}.tsv"
    wildcard_constraints:
        **GEN_CONSTRAINTS,
        strategy="finetune|scratch|e2e",
    conda:
        "../envs/torch.yaml"
    threads: GEN["threads"]
    resources:
        mem_mb=4000,
    script:
        "../scripts/reconstruct.py"
