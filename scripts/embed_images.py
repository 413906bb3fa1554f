"""Snakemake script of rule embed_images: every stimulus the subjects saw -> results/clip/images.h5."""

import logging

from mindreader.clip.stages import make_image_embeddings
from mindreader.provenance import write_provenance
from mindreader.runtime import seed_everything, select_device, set_threads, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)
config, output = snakemake.config, snakemake.output[0]  # noqa: F821
set_threads(snakemake.threads)  # noqa: F821
seed_everything(config["seed"])  # the augmented views draw from torch's RNG
try:
    make_image_embeddings(
        config["nsd_root"],
        config["subjects"],
        config["prepare"]["sessions"],
        config["clip"],
        select_device(config["device"], snakemake.resources.get("gpu", 0)),
        output,
    )
except Exception:
    logging.getLogger("embed_images").exception("image embedding failed")
    raise
write_provenance(output, config, config["seed"])
