# Mind Reader (Lin, Sprague & Singh, NeurIPS 2022) on the Natural Scenes Dataset.
# `snakemake --cores 2` runs the embedded synthetic demo;
# `snakemake --profile profiles/slurm --configfile config/nsd.yaml` the paper on a cluster.
import os

from snakemake.utils import min_version

min_version("9.0")

# The rules' scripts import this repository's mindreader package; conda envs (cluster runs) do
# not contain it, so put the repository on PYTHONPATH for every job. The repository is this
# file's folder, not workflow.basedir (the importing workflow's folder when another workflow
# uses this one as a module); a remote module (github(...)) has none: install the package there.
WORKFLOW_DIR = workflow.current_basedir.get_path_or_uri(secret_free=True)
os.environ["PYTHONPATH"] = os.pathsep.join(
    filter(
        None,
        [
            WORKFLOW_DIR if os.path.isdir(WORKFLOW_DIR) else None,
            os.environ.get("PYTHONPATH"),
        ],
    )
)


# PyTorch backs its large CPU tensors with transparent huge pages: without them a paper-size
# generator job on the CPU spends a fifth of its time in the kernel faulting in 4 KB pages
# (measured: 13 M page faults and 26 s of 98 CPU-s; with them 0.9 M and 15 s). Yours wins if set.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


envvars:
    "PYTHONPATH",


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/clip.smk"
include: "rules/mappers.smk"
include: "rules/generator.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"
include: "rules/preflight.smk"


rule all:
    default_target: True
    input:
        get_final_output(),


# Every job's time limit, whoever set it, at most cluster.max_runtime (rules/common.smk).
cap_runtimes(workflow.rules)


# The training rules' retries for failures, once the run's are known (mindreader.checkpoint).
onstart:
    # imported here, not at the top: it imports torch
    from mindreader.checkpoint import add_failure_retries

    add_failure_retries(workflow.rules, workflow.execution_settings.retries)


# Training jobs keep their last checkpoint (a job cut at its time limit after writing its outputs
# counts as failed, and its rerun resumes there): remove those whose outputs are now accepted.
onsuccess:
    # imported here, not at the top: it imports torch
    from mindreader.checkpoint import remove_finished_checkpoints

    for folder in remove_finished_checkpoints("results/checkpoints"):
        print(f"removed {folder}: its training's outputs are in place")
