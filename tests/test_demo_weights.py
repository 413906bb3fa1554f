"""Released demo weights (mindreader.demo_weights): how a config takes a release, how one is
installed, and the release the demo ships, checked in the demo's world. The export, and the check
refusing other worlds: tests/test_workflow_run.py (the tiny run's release)."""

from __future__ import annotations

import copy
import json
import os

import pytest
import yaml
from conftest import REPO, run_snakemake

from mindreader.clip.models import load_clip
from mindreader.demo_weights import (
    EMBEDDING_ATOL,
    MANIFEST,
    RELEASE_FILES,
    DemoWeightsMismatch,
    install,
    main,
    use_release,
)
from mindreader.generator.store import load_networks
from mindreader.io import read_json
from mindreader.weights import sha256_of

DEMO_CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def fake_release(folder):
    """A release folder whose files are what its manifest says (contents irrelevant here)."""
    for name in RELEASE_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    (folder / MANIFEST).write_text(json.dumps({"files": {n: sha256_of(folder / n) for n in RELEASE_FILES}}))
    return folder


def config_with(release) -> dict:
    config = copy.deepcopy(DEMO_CONFIG)
    config["demo_weights"] = release
    config["clip"]["train_demo"] = True
    config["generator"]["init"] = "pretrain"
    return config


def test_a_release_replaces_the_demo_clip_and_the_generators_start(tmp_path, monkeypatch):
    fake_release(tmp_path / "v9")
    monkeypatch.chdir(tmp_path)
    config = config_with("v9")
    assert use_release(config, tmp_path) == "v9"
    assert config["clip"]["demo"]["dir"] == os.path.join("v9", "clip")
    assert config["generator"]["init"] == os.path.join("v9", "generator")
    # a relative release is the repository's, wherever the run works
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    config = config_with("v9")
    use_release(config, tmp_path)
    assert os.path.samefile(config["generator"]["init"], tmp_path / "v9" / "generator")


def test_no_release_leaves_the_config_alone():
    config = config_with(None)
    assert use_release(config, REPO) is None
    assert config == config_with(None)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"clip": {"train_demo": False}}, "clip.train_demo is false"),
        ({"generator": {"init": "resources/lafite.pkl"}}, "generator.init .* both say where fine-tuning starts"),
    ],
)
def test_a_release_refuses_a_config_it_cannot_serve(tmp_path, change, message):
    fake_release(tmp_path / "v1")
    config = config_with(str(tmp_path / "v1"))
    for section, values in change.items():
        config[section].update(values)
    with pytest.raises(ValueError, match=message):
        use_release(config, REPO)


def test_a_missing_release_says_how_to_make_one(tmp_path):
    with pytest.raises(ValueError, match=r"manifest\.json not found .*make demo-weights"):
        use_release(config_with(str(tmp_path / "v1")), REPO)


def test_install_copies_a_release_checked_and_never_over_another(tmp_path):
    source = fake_release(tmp_path / "export")
    (source / ".snakemake_timestamp").write_text("")  # the marker of Snakemake's directory outputs
    install(source, tmp_path / "v1")
    assert all((tmp_path / "v1" / name).read_text() == name for name in RELEASE_FILES)
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["clip", "generator", MANIFEST]
    with pytest.raises(FileExistsError, match="another version .* FORCE=1"):
        install(source, tmp_path / "v1")
    (source / RELEASE_FILES[0]).write_text("changed")
    with pytest.raises(DemoWeightsMismatch, match=RELEASE_FILES[0]):
        install(source, tmp_path / "v2")
    assert not (tmp_path / "v2").exists()


def test_install_command_replaces_with_force(tmp_path, capsys):
    source = fake_release(tmp_path / "export")
    install(source, tmp_path / "v1")
    (tmp_path / "v1" / "stray.txt").write_text("old")
    with pytest.raises(SystemExit, match="already holds a release"):
        main(["install", str(source), str(tmp_path / "v1")])
    main(["install", str(source), str(tmp_path / "v1"), "--force"])
    assert not (tmp_path / "v1" / "stray.txt").exists()
    assert "installed" in capsys.readouterr().out


@pytest.mark.workflow
def test_the_shipped_release_belongs_to_the_demo_world(tmp_path, monkeypatch):
    """config/config.yaml's release, checked by the workflow's own rule in the demo's synthetic
    world (written, and its subjects prepared, in a scratch folder), and loaded strictly by the
    loaders the demo's jobs use. Fails after a change to the synthetic world or the CLIP code
    that the release was not remade for (`make demo-weights`)."""
    config = copy.deepcopy(DEMO_CONFIG)
    assert config["demo_weights"], "the demo starts from a release"
    run_snakemake(tmp_path, ["results/demo_weights/check.json"], config)
    report = read_json(tmp_path / "results/demo_weights/check.json")
    assert report["reference_max_abs_difference"] <= EMBEDDING_ATOL
    monkeypatch.chdir(tmp_path)
    use_release(config, REPO)
    clip = load_clip(config["clip"])
    _, G_ema, _, meta = load_networks(config["generator"]["init"])
    assert meta["generator"]["c_dim"] == clip.embed_dim == config["clip"]["demo"]["embed_dim"]
    assert G_ema.img_resolution == config["generator"]["resolution"]
