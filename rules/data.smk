# Data: the synthetic NSD (when enabled) and per-subject preparation of betas.
# Helper functions: rules/common.smk.

if SYNTHETIC:

    rule synthesize_nsd:
        output:
            marker=SYNTHETIC_MARKER,
        log:
            "results/logs/synthesize_nsd.log",
        benchmark:
            "results/benchmarks/synthesize_nsd.tsv"
        conda:
            "../envs/data.yaml"
        threads: 1
        resources:
            mem_mb=per_attempt(1000),
            runtime=per_attempt(30),
        params:
            config=config_param("synthetic", "subjects"),
        script:
            "../scripts/synthesize_nsd.py"


rule prepare_subject:
    input:
        prepare_inputs,
    output:
        "results/prepared/{subject}.h5",
    log:
        "results/logs/prepare_subject/{subject}.log",
    benchmark:
        "results/benchmarks/prepare_subject/{subject}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        # measured: ~0.2 GB for one full-size session; a real subject adds its averaged samples
        # (~0.06 GB for the test set, ~0.55 GB more with train_repeats: average)
        mem_mb=per_attempt(2000),
        # 37 gzipped sessions of ~340 MB take ~5 CPU s each to decompress, more on a busy shared
        # file system
        runtime=per_attempt(60),
    params:
        config=config_param("prepare", "seed"),
    script:
        "../scripts/prepare_subject.py"
