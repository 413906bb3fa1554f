# Data: the synthetic NSD (when enabled) and per-subject preparation of betas.


if SYNTHETIC:

    rule synthesize_nsd:
        output:
            marker=SYNTHETIC_MARKER,
        log:
            "results/logs/synthesize_nsd.log",
        benchmark:
            "results/benchmarks/synthesize_nsd.tsv"
        script:
            "../scripts/synthesize_nsd.py"


rule prepare_subject:
    input:
        nsd_inputs(),
    output:
        "results/prepared/{subject}.h5",
    log:
        "results/logs/prepare_subject/{subject}.log",
    benchmark:
        "results/benchmarks/prepare_subject/{subject}.tsv"
    resources:
        mem_mb=4000,
    script:
        "../scripts/prepare_subject.py"
