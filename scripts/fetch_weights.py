"""Snakemake script of rule fetch_weights (a local rule): download the weights the config names.

Run on a machine with internet (a login node). A file already in place that matches the
config's sha256 is kept; anything else is downloaded from the registry's URL and verified.
"""

import logging
from pathlib import Path

from mindreader.runtime import setup_logging
from mindreader.weights import fetch, get_spec, sha256_of

setup_logging(snakemake.log[0])  # noqa: F821 (snakemake is injected by the script directive)
log = logging.getLogger("fetch_weights")
entries = snakemake.params.entries  # noqa: F821
if not entries:
    log.info("the config names no pretrained weights (the demo trains its own CLIP): nothing to fetch")
for entry in entries:
    spec = get_spec(entry["name"])
    path, expected = Path(entry["path"]), entry["sha256"] or spec.sha256
    if path.is_file() and sha256_of(path).startswith(expected):
        log.info("%s: already present and verified at %s", spec.name, path)
        continue
    fetch(spec.name, path)
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise ValueError(f"{path}: sha256 {actual} does not match the config's {expected} (registry '{spec.name}')")
    log.info("%s: fetched to %s and verified (sha256 %s)", spec.name, path, actual)
