"""Snakemake script of rule comparison_metrics: every measured row of the comparison table and
the metric bars, and each external row, on the test images every row has -> comparison.json."""

import logging

from mindreader.evaluation import battery_config, load_sources
from mindreader.evaluation.common_images import external_row, run_row, score_on_common_images
from mindreader.io import read_json, write_json
from mindreader.names import EXTERNAL_PREFIX
from mindreader.nsd import NSD
from mindreader.provenance import write_provenance
from mindreader.runtime import select_device, set_threads, setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
log = logging.getLogger("comparison_metrics")
config = sm.config
set_threads(sm.threads)
nsd = NSD(config["nsd_root"])
rows = [
    run_row(r["key"], read_json(r["metrics"]), r["per_image"], r["reconstructions"], r["predictions"])
    for r in sm.params.rows
]
for name, entry in sm.params.external.items():
    folder = entry["folder"]
    rows.append(
        external_row(EXTERNAL_PREFIX + name, read_json(f"{folder}/metrics.json"), f"{folder}/per_image.csv", entry, nsd)
    )
try:
    device = select_device(config["device"], sm.resources.get("gpu", 0))
    networks = {}

    def sources():
        loaded, unavailable, names = load_sources(config["evaluation"], config["clip"], device)
        networks.update(names)
        return loaded, unavailable

    common = score_on_common_images(rows, nsd, sources, battery_config(config["evaluation"], config["seed"]), device)
    write_json(sm.output[0], common)
    write_provenance(sm.output[0], config, config["seed"], networks=networks)
    log.info("%d rows on %d common test images (%d scored again)", len(rows), common["n_images"],
             sum(r["rescored"] for r in common["rows"]))
except Exception:
    log.exception("scoring on the common test images failed")
    raise
