"""Snakemake script of rules fig3 and subject_reconstructions: ground truth over one row of
reconstructions per run, the same test images in every row."""

import logging

from mindreader.evaluation.figures import reconstruction_figure, save_figure
from mindreader.evaluation.run import read_reconstructions
from mindreader.nsd import NSD
from mindreader.provenance import write_provenance
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
rows = []
for label, path in zip(sm.params.labels, sm.input.reconstructions):
    images, nsd_id, _ = read_reconstructions(path)
    rows.append((label, images, nsd_id))
reference_ids = rows[0][2]
ground_truth = NSD(sm.config["nsd_root"]).read_images(reference_ids)
fig = reconstruction_figure(ground_truth, reference_ids, rows, sm.config["evaluation"]["figure_images"], sm.params.title)
save_figure(fig, sm.output.pdf, sm.output.png)
logging.getLogger("figures").info("wrote %s", sm.output.pdf)
# which reconstructions each row shows (fig3: the oracle row first, when evaluation.oracle is on)
write_provenance(sm.output.pdf, sm.config, sm.config["seed"], rows=list(zip(sm.params.labels, sm.input.reconstructions)))
