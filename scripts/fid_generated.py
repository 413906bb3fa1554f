"""Snakemake script of rules fid_generated and fid_generated_oracle: the FID Mind Reader reports
(StyleGAN2-ADA's fid50k_full protocol: generated samples vs the test images) for one run, or for
its oracle (conditioned on the true embeddings) -> a small JSON that evaluate_run (evaluate_oracle)
puts into the metrics."""

import logging
import os

from mindreader.evaluation.generated_fid import evaluate_generated_fid
from mindreader.evaluation.networks import FID_NETWORK, load_network
from mindreader.io import write_json
from mindreader.provenance import write_provenance
from mindreader.runtime import select_device, set_threads, setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
log = logging.getLogger("fid_generated")
config, eval_cfg = sm.config, sm.config["evaluation"]
set_threads(sm.threads)
device = select_device(config["device"], sm.resources.get("gpu", 0))
try:
    inception, reason = load_network(FID_NETWORK, eval_cfg["networks"][FID_NETWORK], device)
    if inception is None:
        result = {"missing": reason}
    else:
        result = evaluate_generated_fid(
            os.path.dirname(sm.input.network),
            list(sm.input.predictions),
            config["nsd_root"],
            inception,
            eval_cfg["fid_generated_images"],
            eval_cfg["batch_size"],
            config["seed"],
            device,
            sm.params.true_targets,
        )
    write_json(sm.output.json, {**result, "run": dict(sm.wildcards.items())})
except Exception:
    log.exception("generated-sample FID of %s failed", os.path.dirname(sm.input.network))
    raise
write_provenance(sm.output.json, config, config["seed"])
