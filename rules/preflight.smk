# Preflight: one short job, on a node like the workflow's GPU jobs', run before anything long
# (`snakemake --profile ... --configfile config/nsd.yaml --retries 0 preflight`; not part of rule
# all). It checks the GPU and the weights files, runs one step of every stage at the config's
# shapes with random weights, and projects every planned job against its asks
# (mindreader.preflight). Its failures are mostly for good (a missing file, an ask too small):
# --retries 0 reports them at once instead of after the profile's retries. A passed preflight
# stays passed for the same config and code: add --forcerun preflight to check again (another
# node, say). A failed one keeps its report in results/logs/preflight/.

# Helper functions and PREFLIGHT: rules/common.smk.


rule preflight:
    output:
        json="results/preflight/report.json",
        md="results/preflight/report.md",
    log:
        log="results/logs/preflight/preflight.log",
        # the report again: Snakemake removes a failed job's outputs, not its logs
        kept="results/logs/preflight/report.json",
    benchmark:
        "results/benchmarks/preflight.tsv"
    conda:
        "../envs/metrics.yaml"
    threads: PREFLIGHT_THREADS
    resources:
        gpu=PREFLIGHT_GPUS,
        mem_mb=per_attempt(PREFLIGHT["mem_mb"]),
        runtime=per_attempt(PREFLIGHT["runtime"]),
    params:
        config=config_param(*config),
        jobs=PREFLIGHT_JOBS,
        weights=configured_weights(config),
        # at planning time; a file fetched since changes it, and so reruns the preflight
        missing_weights=missing_weights_message(config),
    script:
        "../scripts/preflight.py"
