"""Snakemake script of rule preflight: the device, the weights files, one unit of every stage at
the config's shapes, and every planned job projected against its asks -> results/preflight/
report.json and report.md (mindreader.preflight); exits 1 when a check failed."""

import logging
import sys

from mindreader.preflight import run
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log.log)
log = logging.getLogger("preflight")
if sm.params.missing_weights:
    log.warning("%s", sm.params.missing_weights)
try:
    status = run(
        sm.config,
        sm.params.jobs,
        sm.params.weights,
        sm.resources.get("gpu", 0),
        {"json": sm.output.json, "md": sm.output.md, "kept": sm.log.kept},
    )
except Exception:
    log.exception("preflight failed")
    raise
sys.exit(status)
