"""Snakemake script of rule reconstruct: a run's G_ema + predicted test embeddings -> images, and
(evaluation.oracle) the same G_ema, z and seed + the same test samples' true CLIP embeddings ->
the oracle's images."""

import logging
import os

from mindreader.generator.reconstruct import reconstruct, write_pngs
from mindreader.provenance import write_provenance
from mindreader.runtime import select_device, set_threads, setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
config, rec = sm.config, sm.config["generator"]["reconstruct"]
set_threads(sm.threads)
device = select_device(config["device"], sm.resources.get("gpu", 0))
# (source, true-embedding files or None for the predictions, output file, PNG folder)
outputs = [("brain", None, sm.output.h5, sm.output.png)]
if "oracle_h5" in sm.output.keys():
    outputs.append(("oracle", sm.params.true_targets, sm.output.oracle_h5, sm.output.oracle_png))
for source, true_targets, h5, png in outputs:
    try:
        reconstruct(
            os.path.dirname(sm.input.network),
            list(sm.input.predictions),
            h5,
            rec["z_policy"],
            rec["seed"],
            device,
            rec["batch"],
            true_targets,
            rec["noise_mode"],
        )
        write_pngs(h5, png)
    except Exception:
        logging.getLogger("reconstruct").exception("%s reconstruction failed", source)
        raise
    write_provenance(h5, config, rec["seed"], z_policy=rec["z_policy"], source=source)
