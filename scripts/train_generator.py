"""Snakemake script of rules pretrain_generator, finetune_generator and finetune_e2e: builds the
stage's job from the rule's files and runs it (torchrun across GPUs when generator.gpus > 1)."""

import logging
import os
import sys

from mindreader.checkpoint import EXIT_INTERRUPTED, TrainingInterrupted, forget_outputs, record_outputs
from mindreader.generator.launch import launch
from mindreader.provenance import write_provenance
from mindreader.runtime import set_threads, setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
log = logging.getLogger("train_generator")
config, stage = sm.config, sm.params.stage
set_threads(sm.threads)
job = {
    "stage": stage,
    "nsd_root": config["nsd_root"],
    "output_dir": os.path.dirname(sm.output[0]),
    "checkpoint_dir": sm.params.checkpoint_dir,
    "generator": config["generator"],
    "clip": config["clip"],
    "seed": config["seed"],
}
if stage == "pretrain":
    job.update(images_h5=sm.input.images, prepared=list(sm.input.prepared))
else:
    job.update(variant=sm.wildcards.variant, strategy=sm.wildcards.strategy)
    job["pretrained"] = os.path.dirname(sm.input.pretrained[0]) if sm.input.pretrained else None
    # generator.init ('pretrain', or the Lafite pickle / folder and its sha256); none from scratch
    job["init"] = sm.params.init if sm.input.pretrained else None
    if stage == "finetune":
        job["pred_train"] = list(sm.input.pred_train)
    else:
        job.update(
            prepared=sm.input.prepared,
            targets=list(sm.input.targets),
            mapper_folders=[os.path.dirname(p) for p in sm.input.mappers],
        )
forget_outputs(job["checkpoint_dir"])
try:
    launch(job, sm.resources.get("gpu", 0), config["device"])
except TrainingInterrupted as err:
    log.warning("%s", err)
    sys.exit(EXIT_INTERRUPTED)
except Exception:
    log.exception("generator %s failed", stage)
    raise
write_provenance(job["output_dir"], config, config["seed"], stage=stage, init=job.get("init"))
record_outputs(job["checkpoint_dir"], list(sm.output))
