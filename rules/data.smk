# Data: the synthetic NSD (when enabled) and per-subject preparation of betas.
from mindreader.nsd_paths import (
    EXPDESIGN_RELPATH,
    STIM_INFO_RELPATH,
    betas_relpath,
    mask_relpath,
    present_betas_format,
)

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
            mem_mb=1000,
        params:
            # a change of the synthetic world or of the subjects rewrites the tree
            synthetic=config["synthetic"],
            subjects=SUBJECTS,
        script:
            "../scripts/synthesize_nsd.py"


def prepare_inputs(wildcards):
    """The NSD files prepare_subject reads for a subject: the design, the stim info, the mask and
    the betas of each configured session in the configured format ("auto": whichever is there,
    NIfTI first, as the script decides)."""
    fmt = config["prepare"]["betas_format"]
    betas = []
    for session in range(1, config["prepare"]["sessions"] + 1):
        if fmt == "auto":
            # none present: name the NIfTI, so that Snakemake reports the missing file
            chosen = (
                present_betas_format(NSD_ROOT, wildcards.subject, session) or "nifti"
            )
        else:
            chosen = fmt
        betas.append(betas_relpath(wildcards.subject, session, chosen))
    return nsd_inputs(
        EXPDESIGN_RELPATH, STIM_INFO_RELPATH, mask_relpath(wildcards.subject), *betas
    )


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
        mem_mb=2000,
    script:
        "../scripts/prepare_subject.py"
