"""Rule synthesize_nsd through Snakemake: the marker, the provenance, the log, and a rewrite when
the synthetic world's parameters change."""

from __future__ import annotations

import json

import pytest
from conftest import run_snakemake, tiny_config

pytestmark = pytest.mark.workflow

MARKER = "resources/synthetic_nsd/.synthetic_complete.json"


def test_synthesize_rule_writes_the_tree_and_reruns_on_a_parameter_change(tmp_path):
    config = tiny_config(nsd_root="resources/synthetic_nsd")
    run_snakemake(tmp_path, [MARKER], config, cores=1)
    marker = json.loads((tmp_path / MARKER).read_text())
    assert marker["subjects"] == config["subjects"]
    assert marker["spec"]["snr"] == config["synthetic"]["snr"]
    provenance = json.loads((tmp_path / "resources/synthetic_nsd/synthetic/provenance.json").read_text())
    assert provenance["config"]["synthetic"]["n_shared"] == config["synthetic"]["n_shared"]
    assert "subj02: " in (tmp_path / "results/logs/synthesize_nsd.log").read_text()

    unchanged = run_snakemake(tmp_path, [MARKER], config, "--dry-run", cores=1)
    assert "Nothing to be done" in unchanged.stdout + unchanged.stderr
    changed = tiny_config(nsd_root="resources/synthetic_nsd", synthetic={"snr": 0.3})
    rerun = run_snakemake(tmp_path, [MARKER], changed, "--dry-run", cores=1)
    assert "synthesize_nsd" in rerun.stdout
