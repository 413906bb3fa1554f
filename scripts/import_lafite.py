"""Snakemake script of rule import_lafite: the Lafite training pickle that generator.init names ->
a generator folder (read without running anything from the pickle)."""

import logging
import os

from mindreader.generator.lafite import import_lafite
from mindreader.provenance import write_provenance
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
log = logging.getLogger("import_lafite")
folder = os.path.dirname(sm.output[0])
try:
    meta = import_lafite(sm.input[0], folder)
except Exception:
    log.exception("import of %s failed", sm.input[0])
    raise
log.info("imported %s: %s", sm.input[0], meta["generator"])
write_provenance(folder, sm.config, sm.config["seed"], source=meta["source"])
