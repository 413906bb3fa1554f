"""Snakemake script of rule reconstruct: a run's G_ema + predicted test embeddings -> images."""

import logging
import os

from mindreader.generator.reconstruct import reconstruct, write_pngs
from mindreader.provenance import write_provenance
from mindreader.runtime import select_device, set_threads, setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
config, rec = sm.config, sm.config["generator"]["reconstruct"]
set_threads(sm.threads)
try:
    reconstruct(
        os.path.dirname(sm.input.network),
        list(sm.input.predictions),
        sm.output.h5,
        rec["z_policy"],
        rec["seed"],
        select_device(config["device"]),
        rec["batch"],
    )
    write_pngs(sm.output.h5, sm.output.png)
except Exception:
    logging.getLogger("reconstruct").exception("reconstruction failed")
    raise
write_provenance(sm.output.h5, config, rec["seed"], z_policy=rec["z_policy"])
