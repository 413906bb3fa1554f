"""Snakemake script of rule evaluate_run: one run's reconstructions (and, with evaluation.oracle,
its oracle's) vs the ground-truth test images -> metrics JSON (every metric, bootstrap 95 % CI, or
missing with the reason) + per-image CSV, for each."""

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
device = select_device(config["device"], sm.resources.get("gpu", 0))
cfg = battery_config(config["evaluation"], config["seed"])
# (source, reconstructions, fid_generated rule's JSONs, metrics JSON, per-image CSV)
evaluations = [("brain", sm.input.reconstructions, sm.input.fid_generated, sm.output.json, sm.output.per_image)]
if "oracle_json" in sm.output.keys():
    evaluations.append(
        (
            "oracle",
            sm.input.oracle_reconstructions,
            sm.input.oracle_fid_generated,
            sm.output.oracle_json,
            sm.output.oracle_per_image,
        )
    )
try:
    sources, unavailable, networks = load_sources(config["evaluation"], config["clip"], device)
    for source, reconstructions, fid_generated, json_path, csv_path in evaluations:
        _, nsd_id, _ = read_reconstructions(reconstructions)
        ground_truth = NSD(config["nsd_root"]).read_images(nsd_id)
        # the fid_generated rule's JSON is an input only when it can run (see generated_fid_files)
        generated = generated_fid_result(cfg, next(iter(fid_generated), None), unavailable)
        summary, per_image = evaluate_run(
            reconstructions, ground_truth, sm.params.predictions, sources, unavailable, cfg, device, generated, source
        )
        summary.update(run=dict(sm.wildcards.items()), data=sm.params.data, networks=networks)
        write_run(summary, per_image, json_path, csv_path)
        write_provenance(json_path, config, config["seed"], networks=networks, source=source)
except Exception:
    log.exception("evaluation of %s failed", sm.input.reconstructions)
    raise
