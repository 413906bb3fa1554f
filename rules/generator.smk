# Generator: language-free pre-training of the Lafite-style StyleGAN2 on CLIP image embeddings,
# fine-tuning per subject x mapper x loss x variant x strategy on the frozen mappers' predicted
# embeddings (or end to end), and reconstruction of every test sample.
# Checkpoints live under results/checkpoints/generator/ (not outputs: a failed job keeps them,
# and the rerun resumes). A training longer than cluster.max_runtime runs as several jobs, each
# resuming where the one stopped at its time limit left off (training_retries: common.smk).
# generator.gpus > 1 runs one job on several GPUs with torchrun.
from mindreader.nsd.paths import STIMULI_RELPATH

# Helper functions and GEN, NETWORK_FILES, PRETRAINED, RUN, and INIT_FOLDER (where fine-tuning
# starts: generator.init): rules/common.smk.


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
    retries: training_retries(GEN["pretrain"]["runtime"])
    conda:
        "../envs/torch.yaml"
    threads: GEN["threads"]
    resources:
        gpu=PRETRAIN_GEN["gpus"],
        # all of a multi-GPU job's GPUs on one node (torchrun --standalone)
        nodes=1,
        mem_mb=GEN["pretrain"]["mem_mb"],
        runtime=per_attempt(GEN["pretrain"]["runtime"]),
    params:
        # fine-tuning's keys, and how the CLIP targets are made, do not rerun pre-training
        config=config_param(
            "generator",
            "clip",
            "seed",
            without=[
                "generator.finetune",
                "generator.e2e",
                "generator.reconstruct",
                "generator.init",
                *CLIP_TARGET_KEYS,
            ],
        ),
        stage="pretrain",
        checkpoint_dir="results/checkpoints/generator/pretrained",
    script:
        "../scripts/train_generator.py"


# Planned only when generator.init names a Lafite training pickle: its networks, read without
# running anything from the pickle, as a generator folder.
rule import_lafite:
    input:
        GEN["init"],
    output:
        expand(f"{IMPORTED}/{{name}}", name=GENERATOR_FOLDER_FILES),
    log:
        "results/logs/generator/import_lafite.log",
    benchmark:
        "results/benchmarks/generator/import_lafite.tsv"
    conda:
        "../envs/torch.yaml"
    resources:
        mem_mb=per_attempt(16000),
        runtime=per_attempt(30),
    script:
        "../scripts/import_lafite.py"


# Released demo weights (mindreader.demo_weights): `make demo-weights` exports the trained demo
# CLIP and the pre-training above as a release; a run that starts from one (demo_weights) first
# checks that it belongs to the run (the files, the stimuli, the CLIP embedding space, the test
# images held out of pre-training).
if DEMO_WEIGHTS:

    rule check_demo_weights:
        input:
            release=expand(f"{DEMO_WEIGHTS}/{{name}}", name=[MANIFEST, *RELEASE_FILES]),
            nsd=nsd_inputs(STIMULI_RELPATH),
            prepared=expand("results/prepared/{subject}.h5", subject=SUBJECTS),
        output:
            DEMO_WEIGHTS_CHECK,
        log:
            "results/logs/generator/check_demo_weights.log",
        benchmark:
            "results/benchmarks/generator/check_demo_weights.tsv"
        conda:
            "../envs/torch.yaml"
        resources:
            mem_mb=per_attempt(4000),
            runtime=per_attempt(30),
        params:
            # what the check reads: fine-tuning's keys, the caption screening rerun nothing
            config=config_param(*DEMO_WEIGHTS_CHECKED_KEYS),
        script:
            "../scripts/check_demo_weights.py"

elif CLIP["train_demo"]:

    rule export_demo_weights:
        input:
            clip=expand(f"{CLIP_DEMO_DIR}/{{name}}", name=DEMO_CLIP_FILES),
            generator=expand(f"{PRETRAINED}/{{name}}", name=NETWORK_FILES),
            nsd=nsd_inputs(STIMULI_RELPATH),
            prepared=expand("results/prepared/{subject}.h5", subject=SUBJECTS),
        output:
            directory(DEMO_WEIGHTS_EXPORT),
        log:
            "results/logs/generator/export_demo_weights.log",
        benchmark:
            "results/benchmarks/generator/export_demo_weights.tsv"
        conda:
            "../envs/torch.yaml"
        resources:
            mem_mb=per_attempt(4000),
            runtime=per_attempt(30),
        script:
            "../scripts/export_demo_weights.py"


rule finetune_generator:
    input:
        nsd=nsd_inputs(STIMULI_RELPATH),
        pred_train=lambda w: [f"{folder}/pred_train.h5" for folder in mapper_folders(w)],
        pretrained=lambda w: init_files() if w.strategy == "finetune" else [],
        clip=generator_clip_files(),
    output:
        expand(f"{RUN}/{{name}}", name=NETWORK_FILES, allow_missing=True),
    log:
        "results/logs/generator/finetune/{subject}/{mapper}/{loss}/{variant}/{strategy}.log",
    benchmark:
        "results/benchmarks/generator/finetune/{subject}/{mapper}/{loss}/{variant}/{strategy}.tsv"
    wildcard_constraints:
        strategy="finetune|scratch",
    retries: training_retries(GEN["finetune"]["runtime"])
    conda:
        "../envs/torch.yaml"
    threads: GEN["threads"]
    resources:
        gpu=GEN["gpus"],
        # all of a multi-GPU job's GPUs on one node (torchrun --standalone)
        nodes=1,
        mem_mb=GEN["finetune"]["mem_mb"],
        runtime=per_attempt(GEN["finetune"]["runtime"]),
    params:
        config=config_param(
            "generator",
            "clip",
            "seed",
            without=[
                "generator.pretrain",
                "generator.e2e",
                "generator.reconstruct",
                *CLIP_TARGET_KEYS,
            ],
        ),
        stage="finetune",
        init=GENERATOR_INIT,
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
        pretrained=init_files(),
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
        strategy="e2e",
    retries: training_retries(GEN["finetune"]["runtime"])
    conda:
        "../envs/torch.yaml"
    threads: GEN["threads"]
    resources:
        gpu=GEN["gpus"],
        # all of a multi-GPU job's GPUs on one node (torchrun --standalone)
        nodes=1,
        mem_mb=GEN["finetune"]["mem_mb"],
        runtime=per_attempt(GEN["finetune"]["runtime"]),
    params:
        config=config_param(
            "generator",
            "mappers",
            "clip",
            "seed",
            without=["generator.pretrain", "generator.reconstruct", *CLIP_TARGET_KEYS],
        ),
        stage="e2e",
        init=GENERATOR_INIT,
        checkpoint_dir=lambda w: "results/checkpoints/generator/{subject}/{mapper}/{loss}/{variant}/{strategy}".format(
            **dict(w.items())
        ),
    script:
        "../scripts/train_generator.py"


# The run's reconstructions and, when evaluation.oracle is on, its oracle's: the same G_ema, z
# policy and seed drawing the test images from their TRUE CLIP embeddings (no brain: the
# generator's ceiling; the two differ only in the condition). One job makes both (one start, one
# G_ema load); the predictions give the oracle only the test samples and their order.
rule reconstruct:
    input:
        network=f"{RUN}/network.json",
        weights=f"{RUN}/G_ema.safetensors",
        predictions=run_predictions,
        true_targets=lambda w: list(oracle_targets(w).values()) if ORACLE else [],
    output:
        **with_oracle(
            lambda suffix: {
                "h5": f"results/reconstructions/{RUN_WILDCARDS}{suffix}.h5",
                "png": directory(
                    f"results/reconstructions/{RUN_WILDCARDS}{suffix}_png"
                ),
            }
        ),
    log:
        "results/logs/generator/reconstruct/{subject}/{mapper}/{loss}/{variant}/{strategy}.log",
    benchmark:
        "results/benchmarks/generator/reconstruct/{subject}/{mapper}/{loss}/{variant}/{strategy}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: GEN["threads"]
    resources:
        gpu=GEN["reconstruct"]["gpus"],
        mem_mb=per_attempt(GEN["reconstruct"]["mem_mb"]),
        runtime=per_attempt(GEN["reconstruct"]["runtime"]),
    params:
        config=config_param("generator.reconstruct", "seed"),
        true_targets=lambda w: oracle_targets(w) if ORACLE else None,
    script:
        "../scripts/reconstruct.py"
