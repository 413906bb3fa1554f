"""Snakemake script of rule train_demo_clip: synthetic training images + captions -> the demo CLIP."""

import logging

from mindreader.clip.stages import make_demo_clip
from mindreader.provenance import write_provenance
from mindreader.runtime import seed_everything, select_device, set_threads, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)
config, output = snakemake.config, snakemake.output  # noqa: F821
set_threads(snakemake.threads)  # noqa: F821
seed_everything(config["seed"])
try:
    make_demo_clip(
        config["nsd_root"],
        list(snakemake.input.prepared),  # noqa: F821
        config["clip"],
        select_device(config["device"], snakemake.resources.get("gpu", 0)),
        config["seed"],
        output.curve,
        output.metrics,
    )
except Exception:
    logging.getLogger("train_demo_clip").exception("demo CLIP training failed")
    raise
write_provenance(output.weights, config, config["seed"])
