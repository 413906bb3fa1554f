"""Snakemake script of rule scene_recovery_table: where the planted scene is lost (synthetic NSD)
-> results/tables/scene_recovery.csv|md|tex (mindreader.evaluation.information)."""

import logging
import os
from pathlib import Path

from mindreader.evaluation.information import information_frame, scene_recovery_table
from mindreader.evaluation.scenes import read_scenes
from mindreader.evaluation.tables import data_note, write_table
from mindreader.provenance import write_provenance
from mindreader.runtime import set_threads, setup_logging
from mindreader.synth import SCENES_RELPATH

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
log = logging.getLogger("scene_recovery_table")
config = sm.config
set_threads(sm.threads)
try:
    frame, reconstructions = information_frame(
        read_scenes(os.path.join(config["nsd_root"], SCENES_RELPATH)),
        sm.params.prepared,
        sm.params.clip_files,
        sm.params.predictions,
        sm.params.reconstructions,
        config["evaluation"]["bootstrap"],
        config["seed"],
    )
    table = scene_recovery_table(frame, sm.params.title, data_note(sm.params.data, reconstructions))
    folder = Path(sm.output.csv).parent
    for path in write_table(table, folder):
        log.info("wrote %s", path)
except Exception:
    log.exception("scene recovery table failed")
    raise
write_provenance(sm.output.csv, config, config["seed"], data=sm.params.data)
