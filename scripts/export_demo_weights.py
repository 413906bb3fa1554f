"""Snakemake script of rule export_demo_weights: the trained demo CLIP and the pre-trained generator ->
a release folder (mindreader.demo_weights.export), which `make demo-weights` installs in the repository."""

import logging
import os

from mindreader.demo_weights import export
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
log = logging.getLogger("export_demo_weights")
try:
    manifest = export(
        os.path.dirname(sm.input.clip[0]),
        os.path.dirname(sm.input.generator[0]),
        sm.config["nsd_root"],
        list(sm.input.prepared),
        sm.config,
        sm.output[0],
    )
except Exception:
    log.exception("export of the demo weights failed")
    raise
log.info("exported %s: %d files, stimuli %s", sm.output[0], len(manifest["files"]), manifest["made_from"]["stimuli"])
