"""fetch_weights through Snakemake, and rules that need pretrained weights naming the missing file
(the CLIP rules' outputs are checked on the shared tiny run, tests/test_workflow_run.py)."""

from __future__ import annotations

import pytest
from conftest import run_snakemake, tiny_config

from mindreader import weights


def stand_in_weights(cfg, folder):
    """Point every weights entry of the config (sections with weights_name + weights) at a small
    local file with its checksum, so fetch_weights has nothing to download."""
    if isinstance(cfg, dict):
        if cfg.get("weights_name") and cfg.get("weights"):
            path = folder / f"{cfg['weights_name']}.bin"
            path.write_bytes(f"stand-in for {cfg['weights_name']}".encode())
            cfg["weights"], cfg["sha256"] = str(path), weights.sha256_of(path)
        for value in cfg.values():
            stand_in_weights(value, folder)


@pytest.mark.workflow
def test_fetch_weights_keeps_verified_files_and_pretrained_rules_need_them(tmp_path):
    folder = tmp_path / "resources/weights"
    folder.mkdir(parents=True)
    config = tiny_config(clip={"train_demo": False})
    stand_in_weights(config, folder)
    clip_weights = folder / "clip-vit-b-32-openai.bin"
    assert config["clip"]["weights"] == str(clip_weights)
    run_snakemake(tmp_path, ["fetch_weights"], config)
    log = (tmp_path / "results/logs/fetch_weights.log").read_text()
    assert f"clip-vit-b-32-openai: already present and verified at {clip_weights}" in log

    clip_weights.unlink()
    dry = run_snakemake(tmp_path, ["results/clip/images.h5"], config, "--dry-run", check=False)
    assert dry.returncode != 0
    assert f"clip-vit-b-32-openai ({clip_weights})" in dry.stderr and "fetch_weights" in dry.stderr
