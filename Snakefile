# Mind Reader (Lin, Sprague & Singh, NeurIPS 2022) on the Natural Scenes Dataset.
# `snakemake --profile profiles/default` runs the embedded synthetic demo;
# `snakemake --profile profiles/slurm --configfile config/nsd.yaml` the paper on a cluster.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/clip.smk"
include: "rules/mappers.smk"
include: "rules/generator.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
