"""Shared foundations: atomic outputs, provenance, checkpoints, the weights registry."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from mindreader import checkpoint, provenance, weights
from mindreader.io import atomic_path, read_json, write_json


def test_atomic_path_renames_on_success_and_removes_on_error(tmp_path):
    target = tmp_path / "sub" / "out.h5"
    with atomic_path(target) as tmp:
        assert tmp.suffix == ".h5" and tmp.parent == target.parent
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask

    failed = tmp_path / "failed.json"
    with pytest.raises(RuntimeError):
        with atomic_path(failed) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("writer crashed")
    assert not failed.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_json_roundtrip_with_numpy_and_clear_error(tmp_path):
    path = tmp_path / "m.json"
    write_json(path, {"a": np.float32(0.5), "b": np.arange(3)})
    assert read_json(path) == {"a": 0.5, "b": [0, 1, 2]}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(bad)


def test_provenance_beside_file_and_inside_folder(tmp_path):
    out = tmp_path / "prepared" / "subj01.h5"
    path = provenance.write_provenance(out, {"seed": 3}, seed=3, stage="prepare")
    assert path == tmp_path / "prepared" / "subj01.provenance.json"
    record = json.loads(path.read_text())
    assert record["seed"] == 3 and record["config"] == {"seed": 3} and record["stage"] == "prepare"
    assert "torch" in record["packages"] and record["packages"]["python"]
    folder = tmp_path / "img+cap"
    folder.mkdir()
    assert provenance.provenance_path(folder) == folder / "provenance.json"


def _tiny_training_state():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    return model, opt


def test_checkpoint_roundtrip_restores_model_optimiser_and_rngs(tmp_path):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model, opt = _tiny_training_state()
    opt_tensors, opt_meta = checkpoint.optimizer_state(opt, "opt")
    rng_tensors, rng_meta = checkpoint.rng_state()
    tensors = {**checkpoint.flatten_tensors("model", model.state_dict()), **opt_tensors, **rng_tensors}
    checkpoint.save_checkpoint(tmp_path, tensors, {"step": 7, "opt": opt_meta, "rng": rng_meta})
    expected = (torch.rand(3), np.random.rand(3), random.random())

    loaded_tensors, state = checkpoint.load_checkpoint(tmp_path)
    fresh = torch.nn.Linear(4, 3)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=1e-2)
    fresh.load_state_dict(checkpoint.unflatten_tensors("model", loaded_tensors))
    checkpoint.load_optimizer_state(fresh_opt, "opt", loaded_tensors, state["opt"])
    checkpoint.set_rng_state(loaded_tensors, state["rng"])

    assert state["step"] == 7
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    for group_a, group_b in zip(opt.state.values(), fresh_opt.state.values()):
        assert torch.equal(group_a["exp_avg"], group_b["exp_avg"])
        assert float(group_a["step"]) == float(group_b["step"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_load_checkpoint_absent_and_damaged(tmp_path):
    assert checkpoint.load_checkpoint(tmp_path) is None
    checkpoint.save_checkpoint(tmp_path, {"w": torch.ones(2)}, {"step": 1})
    (tmp_path / checkpoint.TENSORS_FILE).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="tensors.safetensors"):
        checkpoint.load_checkpoint(tmp_path)


def test_only_checkpoints_whose_recorded_outputs_all_exist_are_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # recorded paths are relative to the workflow's directory
    root = Path("results/checkpoints")
    # nested as the workflow's are; "done" alone in its parents
    folders = {name: root / "generator" / name for name in ("outputs_deleted", "interrupted", "rerun", "ridge")}
    folders["done"] = root / "mappers/subj01/done"
    for folder in folders.values():
        if folder.name != "ridge":
            checkpoint.save_checkpoint(folder, {"w": torch.ones(2)}, {"step": 1})
    Path("out").mkdir()
    for name in ("done", "rerun"):
        outputs = [f"out/{name}_model", f"out/{name}_metrics"]
        for path in outputs:
            Path(path).write_text("x")
        checkpoint.record_outputs(folders[name], outputs)
    # written, then deleted by Snakemake (the scheduler failed the job as it exited)
    checkpoint.record_outputs(folders["outputs_deleted"], ["out/deleted_model"])
    # a job starting anew in a folder forgets the outputs of the one before it
    checkpoint.forget_outputs(folders["rerun"])
    # a fit without checkpoints (ridge) has no folder, and recording makes none
    checkpoint.record_outputs(folders["ridge"], ["out/done_model"])
    assert checkpoint.remove_finished_checkpoints(root) == [folders["done"]]
    assert sorted(p.name for p in root.iterdir()) == ["generator"]  # "done"'s empty parents went too
    assert sorted(p.name for p in (root / "generator").iterdir()) == ["interrupted", "outputs_deleted", "rerun"]
    assert checkpoint.remove_finished_checkpoints(root) == []


def test_stop_on_signal_sets_flag_and_restores_handler():
    before = signal.getsignal(signal.SIGTERM)
    with checkpoint.StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested
    assert signal.getsignal(signal.SIGTERM) is before


def test_weights_resolve_missing_and_wrong_checksum(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.resolve(missing, "abcdef12", name="some-net")
    assert str(missing) in str(err.value) and "some-net" in str(err.value) and "fetch_weights" in str(err.value)

    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    digest = weights.sha256_of(path)
    assert weights.resolve(path, digest[:8]) == path
    assert weights.resolve(path, digest) == path
    with pytest.raises(ValueError, match="does not match"):
        weights.resolve(path, "0" * 64)


def test_registry_rejects_bad_entries_and_lists_known_names():
    with pytest.raises(ValueError, match="hex"):
        weights.register(weights.WeightsSpec("bad", "http://x", "xyz", "f", "d"))
    with pytest.raises(KeyError, match="known"):
        weights.get_spec("no-such-network")
