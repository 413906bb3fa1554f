"""Snakemake script of rule make_tables: the per-run metrics JSONs (and their oracles') ->
results/tables/*.csv|md|tex; with external rows (evaluation.external), the comparison table's
measured rows from comparison.json (every row on the common test images) and
external_sources.csv."""

import logging
from pathlib import Path

from mindreader.evaluation.tables import all_tables, external_sources_frame, write_table
from mindreader.io import atomic_path, read_json
from mindreader.provenance import write_provenance
from mindreader.runtime import setup_logging

sm = snakemake  # noqa: F821 (snakemake is injected by the script directive)
setup_logging(sm.log[0])
log = logging.getLogger("make_tables")
runs = [{**run, "source": "brain", "summary": read_json(path)} for run, path in zip(sm.params.runs, sm.input.metrics)]
# each run's oracle (evaluation.oracle; none when it is off)
runs += [{**run, "source": "oracle", "summary": read_json(path)} for run, path in zip(sm.params.runs, sm.input.oracle_metrics)]
common = read_json(sm.input.comparison[0]) if sm.input.comparison else None
folder = Path(sm.output[0]).parent
for table in all_tables(runs, sm.config["ablations"], sm.params.data, common):
    for path in write_table(table, folder):
        log.info("wrote %s", path)
    write_provenance(folder / f"{table.name}.csv", sm.config, sm.config["seed"], data=sm.params.data)
if common is not None:
    with atomic_path(sm.output.external_sources) as tmp:
        external_sources_frame(common).to_csv(tmp, index=False)
    log.info("wrote %s", sm.output.external_sources)
