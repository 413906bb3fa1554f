"""Snakemake script of rule metric_bars: every metric per conditioning variant with its 95 % CI;
with external rows (evaluation.external), the figure subject's other methods beside them, every
bar on the test images that every row of the comparison has (comparison.json)."""

import logging

from mindreader.evaluation.figures import metric_bars, save_figure
from mindreader.evaluation.tables import ABLATION_COLUMNS
from mindreader.io import read_json
from mindreader.provenance import write_provenance
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
runs = [(label, read_json(path)) for label, path in zip(sm.params.labels, sm.input.metrics)]
title = sm.params.title
if sm.input.comparison:
    common = read_json(sm.input.comparison[0])
    scored = {row["key"]: row["summary"] for row in common["rows"]}
    runs = [(label, scored[key]) for label, key in zip(sm.params.labels, sm.params.row_keys)]
    runs += [(key, scored[key]) for key in sm.params.external]
    title += f"; every bar on the {common['n_images']} test images all rows have"
save_figure(metric_bars(runs, ABLATION_COLUMNS, title), sm.output.pdf, sm.output.png)
logging.getLogger("figures").info("wrote %s", sm.output.pdf)
write_provenance(sm.output.pdf, sm.config, sm.config["seed"])
