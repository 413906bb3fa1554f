"""Snakemake script of rule training_curves: mapper curve.csv files and the generator's losses.csv."""

import logging

import pandas as pd

from mindreader.evaluation.figures import save_figure, training_curves
from mindreader.provenance import write_provenance
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
mapper_curves = {label: pd.read_csv(path) for label, path in zip(sm.params.mapper_labels, sm.input.mapper_curves)}
generator = {sm.params.generator_label: pd.read_csv(sm.input.generator_losses)}
save_figure(training_curves(mapper_curves, generator, sm.params.title), sm.output.pdf, sm.output.png)
logging.getLogger("figures").info("wrote %s", sm.output.pdf)
write_provenance(sm.output.pdf, sm.config, sm.config["seed"])
