"""Snakemake script of rule train_mapper: one mapper folder (model, curve, predictions, metrics)."""

import logging
import os
import sys

from mindreader.checkpoint import EXIT_INTERRUPTED, TrainingInterrupted, forget_outputs, record_outputs
from mindreader.mappers.pipeline import run_mapper
from mindreader.provenance import write_provenance
from mindreader.runtime import select_device, set_threads, setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
log = logging.getLogger("train_mapper")
config, w = sm.config, sm.wildcards
set_threads(sm.threads)
forget_outputs(sm.params.checkpoint_dir)
try:
    metrics = run_mapper(
        sm.input.prepared,
        sm.input.clip,
        os.path.dirname(sm.output.metrics_json),
        w.mapper,
        w.loss,
        w.target,
        config["mappers"],
        config["seed"],
        select_device(config["device"], sm.resources.get("gpu", 0)),
        sm.params.checkpoint_dir,
        subject=w.subject,
    )
except TrainingInterrupted as err:
    log.warning("%s: rerun to resume from %s", err, sm.params.checkpoint_dir)
    sys.exit(EXIT_INTERRUPTED)
except Exception:
    log.exception("mapper %s/%s/%s/%s failed", w.subject, w.mapper, w.loss, w.target)
    raise
write_provenance(os.path.dirname(sm.output.metrics_json), config, config["seed"], test_metrics=metrics)
record_outputs(sm.params.checkpoint_dir, list(sm.output))
