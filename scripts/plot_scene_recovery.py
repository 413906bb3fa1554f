"""Snakemake script of rule scene_recovery_figure: the scene_recovery table's factors across the
stages (clip, brain embedding, oracle, brain), one panel per mapper."""

import logging

import pandas as pd

from mindreader.evaluation.figures import save_figure, scene_recovery_figure, stage_rows
from mindreader.provenance import write_provenance
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
frame = pd.read_csv(sm.input.table)
# every column with a chance level is a factor the table scores
factors = [c for c in frame.columns if f"chance_{c}" in frame.columns]
panels = [
    (f"mapper {mapper}", stage_rows(frame, sm.params.subject, mapper, sm.params.variant, sm.params.embedding))
    for mapper in sm.params.mappers
]
save_figure(scene_recovery_figure(panels, factors, sm.params.title), sm.output.pdf, sm.output.png)
logging.getLogger("figures").info("wrote %s", sm.output.pdf)
write_provenance(sm.output.pdf, sm.config, sm.config["seed"])
