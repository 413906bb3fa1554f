"""Snakemake script of rule check_demo_weights: the release that demo_weights names, checked against
this run (mindreader.demo_weights.verify) -> results/demo_weights/check.json."""

import logging
import os

from mindreader.demo_weights import verify
from mindreader.io import write_json
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
log = logging.getLogger("check_demo_weights")
release = os.path.dirname(sm.input.release[0])  # its manifest.json comes first
try:
    report = verify(release, sm.config["nsd_root"], list(sm.input.prepared), sm.config)
except Exception:
    log.exception("the release %s does not belong to this run", release)
    raise
log.info("release %s checked: %s", release, report)
write_json(sm.output[0], report)
