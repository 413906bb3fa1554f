"""Snakemake script of rule metric_bars: every metric per conditioning variant with its 95 % CI."""

import logging

from mindreader.evaluation.figures import metric_bars, save_figure
from mindreader.evaluation.tables import ABLATION_COLUMNS
from mindreader.io import read_json
from mindreader.provenance import write_provenance
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
runs = [(label, read_json(path)) for label, path in zip(sm.params.labels, sm.input.metrics)]
save_figure(metric_bars(runs, ABLATION_COLUMNS, sm.params.title), sm.output.pdf, sm.output.png)
logging.getLogger("figures").info("wrote %s", sm.output.pdf)
write_provenance(sm.output.pdf, sm.config, sm.config["seed"])
