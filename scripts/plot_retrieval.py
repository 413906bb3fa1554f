"""Snakemake script of rule retrieval_examples: brains' top-5 retrieved test images."""

import logging

import h5py

from mindreader.evaluation.figures import retrieval_figure, save_figure
from mindreader.nsd import NSD
from mindreader.provenance import write_provenance
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
with h5py.File(sm.input.predictions, "r") as f:
    nsd_id, pred, target = f["nsd_id"][()], f["pred"][()], f["target"][()]
ground_truth = NSD(sm.config["nsd_root"]).read_images(nsd_id)
fig = retrieval_figure(ground_truth, pred, target, sm.params.n_brains, sm.params.title)
save_figure(fig, sm.output.pdf, sm.output.png)
logging.getLogger("figures").info("wrote %s", sm.output.pdf)
write_provenance(sm.output.pdf, sm.config, sm.config["seed"])
