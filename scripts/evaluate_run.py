"""Snakemake script of rule evaluate_run: one run's reconstructions vs the ground-truth test
images -> metrics JSON (every metric, bootstrap 95 % CI, or missing with the reason) + per-image CSV."""

import logging

from mindreader.evaluation import battery_config, evaluate_run, load_sources, write_run
from mindreader.evaluation.run import generated_fid_result, read_reconstructions
from mindreader.nsd import NSD
from mindreader.provenance import write_provenance
from mindreader.runtime import select_device, set_threads, setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
log = logging.getLogger("evaluate_run")
config = sm.config
set_threads(sm.threads)
device = select_device(config["device"])
cfg = battery_config(config["evaluation"], config["seed"])
try:
    _, nsd_id, _ = read_reconstructions(sm.input.reconstructions)
    ground_truth = NSD(config["nsd_root"]).read_images(nsd_id)
    sources, unavailable, networks = load_sources(config["evaluation"], config["clip"], device)
    # the fid_generated rule's JSON is an input only when it can run (see generated_fid_files)
    generated = generated_fid_result(cfg, next(iter(sm.input.fid_generated), None), unavailable)
    summary, per_image = evaluate_run(
        sm.input.reconstructions, ground_truth, sm.params.predictions, sources, unavailable, cfg, device, generated
    )
    summary.update(run=dict(sm.wildcards.items()), data=sm.params.data, networks=networks)
    write_run(summary, per_image, sm.output.json, sm.output.per_image)
except Exception:
    log.exception("evaluation of %s failed", sm.input.reconstructions)
    raise
write_provenance(sm.output.json, config, config["seed"], networks=networks)
