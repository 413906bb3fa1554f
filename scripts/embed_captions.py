"""Snakemake script of rule embed_captions: captions of the embedded images, screened by CLIP score."""

import logging

from mindreader.clip.stages import make_caption_embeddings
from mindreader.provenance import write_provenance
from mindreader.runtime import select_device, set_threads, setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)
config, output = snakemake.config, snakemake.output  # noqa: F821
set_threads(snakemake.threads)  # noqa: F821
try:
    make_caption_embeddings(
        config["nsd_root"],
        snakemake.input.images,  # noqa: F821
        config["clip"],
        select_device(config["device"], snakemake.resources.get("gpu", 0)),
        config["seed"],
        output.h5,
        output.tsv,
    )
except Exception:
    logging.getLogger("embed_captions").exception("caption embedding failed")
    raise
write_provenance(output.h5, config, config["seed"])
