"""Snakemake script of rule prepare_subject: NSD betas -> results/prepared/{subject}.h5."""

import logging

from mindreader.nsd import NSD
from mindreader.prepare import PrepareOptions, prepare_subject
from mindreader.provenance import write_provenance
from mindreader.runtime import setup_logging

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)
config, output = snakemake.config, snakemake.output[0]  # noqa: F821
try:
    summary = prepare_subject(
        NSD(config["nsd_root"]),
        snakemake.wildcards.subject,  # noqa: F821
        PrepareOptions.from_config(config["prepare"]),
        output,
    )
except Exception:
    logging.getLogger("prepare_subject").exception("preparation failed")
    raise
write_provenance(output, config, config["seed"], **summary)
