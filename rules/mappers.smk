# Mappers: one job per results/mappers/{subject}/{mapper}/{loss}/{target}/ folder, trained on
# the prepared subject's training samples against the CLIP image (img) or caption (cap) targets.
# Checkpoints live under results/checkpoints/mappers/ (not outputs: a failed or preempted job
# keeps them, and the rerun resumes; a training longer than cluster.max_runtime runs as several
# jobs this way: training_retries in common.smk).
from mindreader.names import MAPPER_OUTPUT_FILES

# Helper functions and MAPPER_CFG, MAPPER_DIR, CLIP_TARGET_FILES: rules/common.smk.


rule train_mapper:
    input:
        prepared="results/prepared/{subject}.h5",
        clip=lambda w: CLIP_TARGET_FILES[w.target],
    output:
        **{
            name.replace(".", "_"): f"{MAPPER_DIR}/{name}"
            for name in MAPPER_OUTPUT_FILES
        },
    log:
        "results/logs/mappers/{subject}/{mapper}/{loss}/{target}.log",
    benchmark:
        "results/benchmarks/mappers/{subject}/{mapper}/{loss}/{target}.tsv"
    retries: training_retries(MAPPER_CFG["runtime"])
    conda:
        "../envs/torch.yaml"
    threads: MAPPER_CFG["threads"]
    resources:
        gpu=lambda w: 0 if w.mapper == "ridge" else MAPPER_CFG["gpus"],
        mem_mb=MAPPER_CFG["mem_mb"],
        runtime=per_attempt(MAPPER_CFG["runtime"]),
    params:
        config=config_param("mappers", "seed"),
        checkpoint_dir=lambda w: "results/checkpoints/mappers/{subject}/{mapper}/{loss}/{target}".format(
            **dict(w.items())
        ),
    script:
        "../scripts/train_mapper.py"
