"""Snakemake script of rule score_external: another method's reconstructions (an
evaluation.external entry) scored by the battery on its own images, as `python -m
mindreader.score` scores them -> metrics.json + per_image.csv."""

import logging
from pathlib import Path

from mindreader.runtime import set_threads, setup_logging
from mindreader.score import score

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
set_threads(sm.threads)
entry = sm.params.entry
try:
    score(
        entry["path"],
        entry["format"],
        sm.config,
        entry["subject"],
        Path(sm.output.json).parent,
        name=sm.wildcards.name,
        ids=entry.get("ids"),
        sessions=entry.get("sessions"),
        selection=entry.get("selection"),
        gpus=sm.resources.get("gpu", 0),
    )
except Exception:
    logging.getLogger("score_external").exception("scoring %s failed", entry["path"])
    raise
