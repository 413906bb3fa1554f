"""Unit tests of the mappers: architecture, losses against direct formulas, ridge against NumPy
normal equations, retrieval against brute force, the pipeline on tiny files, and exact resume
after SIGTERM."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO, tiny_config
from safetensors.torch import load_file

from mindreader.checkpoint import EXIT_INTERRUPTED
from mindreader.mappers import (
    FmriClipRes,
    LinearMapper,
    ResidualMLP,
    build_mapper,
    embedding_metrics,
    fit_ridge,
    load_mapper,
    mapper_loss,
    save_mapper,
)
from mindreader.checkpoint import load_checkpoint
from mindreader.mappers.cnn import voxel_order_index
from mindreader.mappers.data import read_clip_targets, validation_mask
from mindreader.mappers.models import architecture
from mindreader.mappers.pipeline import run_mapper
from mindreader.mappers import train as mapper_training
from mindreader.mappers.train import train_network
from mindreader.names import MAPPER_OUTPUT_FILES, check_view_draw

torch.set_num_threads(1)
CFG = tiny_config()["mappers"]


def paper_cfg() -> dict:
    return {**CFG, "cnn": {"hidden": 64, "blocks": 4, "head_hidden": 128, "pad_multiple": 32, "voxel_order": "zyx"}}


def mask_coordinates(n_voxels, shape=(9, 8, 7), seed=0):
    """(n_voxels, 3) coordinates of a random brain mask, in the prepared file's order (C order over X, Y, Z)."""
    flat = np.sort(np.random.default_rng(seed).choice(np.prod(shape), n_voxels, replace=False))
    return np.stack(np.unravel_index(flat, shape), axis=1).astype(np.int32)


def write_tiny_subject(folder, n_voxels=120, embed_dim=16, n_images=90, n_test=20, repeats=3, noise=1.0, seed=0,
                       n_aug=0):
    """A prepared subject whose betas are a fixed linear map of the CLIP targets plus noise, and
    its CLIP file; returns (prepared path, clip path)."""
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(73000, n_images, replace=False))
    emb = rng.standard_normal((n_images, embed_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    encoding = rng.standard_normal((embed_dim, n_voxels)).astype(np.float32)
    test_ids, train_ids = ids[:n_test], np.sort(np.repeat(ids[n_test:], repeats))

    def betas(sample_ids, scale):
        rows = np.searchsorted(ids, sample_ids)
        return (emb[rows] @ encoding + scale * rng.standard_normal((len(sample_ids), n_voxels))).astype(np.float32)

    prepared, clip = folder / "prepared.h5", folder / "clip.h5"
    with h5py.File(prepared, "w") as f:
        f["train/betas"], f["train/nsd_id"] = betas(train_ids, noise), train_ids
        f["test/betas"], f["test/nsd_id"] = betas(test_ids, noise / math.sqrt(repeats)), test_ids
        f["voxel_xyz"] = mask_coordinates(n_voxels, seed=seed)
        f.attrs["split"] = "shared1000"
    with h5py.File(clip, "w") as f:
        f["nsd_id"], f["target"] = ids, emb
        if n_aug:
            aug = emb[:, None, :] + 0.05 * rng.standard_normal((n_images, n_aug, embed_dim)).astype(np.float32)
            f["aug_target"] = aug / np.linalg.norm(aug, axis=2, keepdims=True)
    return prepared, clip


# --- architectures ------------------------------------------------------------------------------


def test_fmri_clip_res_has_the_papers_parameter_count_and_shapes():
    model = build_mapper("cnn", 15724, 512, paper_cfg(), mask_coordinates(15724, shape=(40, 30, 20)))
    assert sum(p.numel() for p in model.parameters()) == 1_156_929
    assert (model.pad_left, model.pad_right) == (10, 10)  # 15,724 -> 15,744, centred
    small = FmriClipRes(50, 8, hidden=4, blocks=1, head_hidden=3, pad_multiple=16)
    assert small(torch.randn(3, 50)).shape == (3, 8)
    with pytest.raises(ValueError, match=r"expected betas \(B, 50\)"):
        small(torch.randn(3, 49))


def test_padding_is_zero_and_centred():
    """A voxel's place in the padded signal: betas shifted by the padding give the same output."""
    model = FmriClipRes(20, 4, hidden=3, blocks=1, head_hidden=2, pad_multiple=32)  # 20 -> 32: 6 + 6
    wider = FmriClipRes(32, 4, hidden=3, blocks=1, head_hidden=2, pad_multiple=32)
    wider.load_state_dict({**model.state_dict(), "voxel_index": wider.voxel_index})
    x = torch.randn(2, 20)
    assert torch.allclose(model(x), wider(torch.nn.functional.pad(x, (6, 6))))


def test_zyx_voxel_order_is_the_transposed_mask_order_of_the_original():
    """The original indexes NSD's (Z, Y, X) betas with the transposed mask: x varies fastest."""
    shape = (6, 5, 4)
    mask = np.random.default_rng(5).random(shape) < 0.4
    voxel_xyz = np.argwhere(mask)  # the prepared file's order: C order over (X, Y, Z)
    original = np.argwhere(mask.T)[:, ::-1]  # (x, y, z) of each voxel in the original's vector
    np.testing.assert_array_equal(voxel_xyz[voxel_order_index(voxel_xyz, "zyx")], original)
    np.testing.assert_array_equal(voxel_order_index(voxel_xyz, "xyz"), np.arange(len(voxel_xyz)))
    shuffled = np.random.default_rng(6).permutation(len(voxel_xyz))
    np.testing.assert_array_equal(voxel_xyz[shuffled][voxel_order_index(voxel_xyz[shuffled], "zyx")], original)
    # Written out: (x, y, z) in the prepared order (0,0,0) (0,0,1) (0,1,0) (1,0,0); x fastest reads
    # (0,0,0) (1,0,0) (0,1,0) (0,0,1).
    small = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0]])
    assert voxel_order_index(small, "zyx").tolist() == [0, 3, 2, 1]
    with pytest.raises(ValueError, match="voxel order must be one of xyz, zyx"):
        voxel_order_index(small, "yxz")


def test_cnn_convolves_over_the_configured_voxel_order():
    """A zyx cnn on the prepared betas gives what the same network gives on the vector the original
    reads: NSD's (trial, Z, Y, X) volume indexed with the transposed mask."""
    shape = (5, 4, 6)
    voxel_xyz = mask_coordinates(50, shape=shape)
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(voxel_xyz.T)] = True
    betas = np.random.default_rng(7).standard_normal((3, 50)).astype(np.float32)
    volume = np.zeros((3, *shape), dtype=np.float32)  # (trial, X, Y, Z)
    volume[:, voxel_xyz[:, 0], voxel_xyz[:, 1], voxel_xyz[:, 2]] = betas
    original_vector = volume.transpose(0, 3, 2, 1)[:, mask.T]

    cfg = {**CFG, "cnn": {"hidden": 8, "blocks": 1, "head_hidden": 8, "pad_multiple": 16, "voxel_order": "zyx"}}
    torch.manual_seed(0)  # a network this small can start with its whole head dead, blind to the order
    model = build_mapper("cnn", 50, 8, cfg, voxel_xyz).eval()
    plain = FmriClipRes(50, 8, hidden=8, blocks=1, head_hidden=8, pad_multiple=16).eval()  # reads columns as given
    plain.load_state_dict({**model.state_dict(), "voxel_index": plain.voxel_index})
    with torch.no_grad():
        assert torch.allclose(model(torch.from_numpy(betas)), plain(torch.from_numpy(original_vector)), atol=1e-6)
        assert not torch.allclose(model(torch.from_numpy(betas)), plain(torch.from_numpy(betas)), atol=1e-3)


def test_mlp_and_linear_shapes_and_unknown_kind():
    assert ResidualMLP(30, 8, hidden=16, blocks=2)(torch.randn(4, 30)).shape == (4, 8)
    assert LinearMapper(30, 8)(torch.randn(4, 30)).shape == (4, 8)
    with pytest.raises(ValueError, match="expected one of cnn, ridge, mlp"):
        build_mapper("transformer", 30, 8, CFG)
    with pytest.raises(KeyError, match="unknown keys"):
        build_mapper("cnn", 30, 8, {**CFG, "cnn": {**CFG["cnn"], "width": 3}})


def test_save_and_load_give_the_same_predictions(tmp_path):
    """The cnn's voxel order travels with its weights: a loaded model reads the betas as the trained one."""
    cfg = {**CFG, "cnn": {**CFG["cnn"], "voxel_order": "zyx"}}
    for kind in ("cnn", "mlp", "ridge"):
        model = build_mapper(kind, 40, 6, cfg, mask_coordinates(40))
        save_mapper(tmp_path / kind, kind, model, architecture(kind, cfg), loss="mse")
        loaded = load_mapper(tmp_path / kind)
        x = torch.randn(5, 40)
        assert not loaded.training
        assert torch.equal(model.eval()(x), loaded(x))
    # A real permutation (not the identity), so the equality above fails if the order is not saved.
    assert not torch.equal(load_mapper(tmp_path / "cnn").voxel_index, torch.arange(40))
    assert json.loads((tmp_path / "cnn" / "model.json").read_text())["hyper"]["voxel_order"] == "zyx"
    with pytest.raises(ValueError, match="needs the voxel coordinates"):
        build_mapper("cnn", 40, 6, cfg)
    with pytest.raises(FileNotFoundError, match="expected a trained mapper"):
        load_mapper(tmp_path / "absent")


# --- losses -------------------------------------------------------------------------------------


def direct_contrastive(pred, target, tau, lam):
    """Symmetric InfoNCE written out element by element."""
    n = len(pred)
    cos = [[float(np.dot(p, t) / np.linalg.norm(p) / np.linalg.norm(t)) / tau for t in target] for p in pred]
    rows = -np.mean([cos[i][i] - math.log(sum(math.exp(cos[i][j]) for j in range(n))) for i in range(n)])
    cols = -np.mean([cos[j][j] - math.log(sum(math.exp(cos[i][j]) for i in range(n))) for j in range(n)])
    return lam * rows + (1 - lam) * cols


def test_losses_match_direct_formulas():
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((6, 5)), rng.standard_normal((6, 5))
    cfg = {**CFG, "loss": {"cos_weight": 0.6, "temperature": 0.5, "row_weight": 0.3, "contrastive_weight": 0.4}}
    p, t = torch.tensor(pred), torch.tensor(target)
    mse = ((pred - target) ** 2).mean()
    cos = np.mean([1 - np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(pred, target)])
    contrastive = direct_contrastive(pred, target, 0.5, 0.3)
    expected = {
        "mse": mse,
        "cos": cos,
        "mse_cos": 0.4 * mse + 0.6 * cos,
        "contrastive": contrastive,
        "mse_cos_contrastive": 0.6 * (0.4 * mse + 0.6 * cos) + 0.4 * contrastive,
    }
    for name, value in expected.items():
        terms = mapper_loss(name, p, t, cfg)
        assert float(terms["loss"]) == pytest.approx(value, rel=1e-10), name
    terms = mapper_loss("mse_cos_contrastive", p, t, cfg)
    assert set(terms) == {"mse", "cos", "contrastive", "mse_cos", "loss"}
    with pytest.raises(ValueError, match="unknown mapper loss"):
        mapper_loss("l1", p, t, cfg)


def test_contrastive_loss_is_symmetric():
    rng = np.random.default_rng(2)
    p, t = torch.tensor(rng.standard_normal((7, 4))), torch.tensor(rng.standard_normal((7, 4)))
    half = {**CFG, "loss": {**CFG["loss"], "row_weight": 0.5}}
    rows = {**CFG, "loss": {**CFG["loss"], "row_weight": 1.0}}
    cols = {**CFG, "loss": {**CFG["loss"], "row_weight": 0.0}}
    assert float(mapper_loss("contrastive", p, t, half)["loss"]) == pytest.approx(
        float(mapper_loss("contrastive", t, p, half)["loss"]), rel=1e-12)
    assert float(mapper_loss("contrastive", p, t, rows)["loss"]) == pytest.approx(
        float(mapper_loss("contrastive", t, p, cols)["loss"]), rel=1e-12)
    assert float(mapper_loss("contrastive", p, t, rows)["loss"]) != pytest.approx(
        float(mapper_loss("contrastive", p, t, cols)["loss"]), rel=1e-6)


# --- ridge --------------------------------------------------------------------------------------


def normal_equations(x, y, alpha):
    """Ridge with intercept by NumPy: centre, solve (Xc^T Xc + alpha I) W = Xc^T Yc."""
    mu, ym = x.mean(0), y.mean(0)
    xc = x - mu
    w = np.linalg.solve(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ (y - ym))
    return w, ym - mu @ w


@pytest.mark.parametrize("n_samples", [40, 150])  # dual (fewer samples than voxels) and primal form
def test_ridge_matches_numpy_normal_equations_and_picks_the_best_alpha(n_samples):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n_samples, 60)) + 0.5
    y = x @ rng.standard_normal((60, 5)) * 0.1 + rng.standard_normal((n_samples, 5)) + 2.0
    val = np.zeros(n_samples, dtype=bool)
    val[rng.choice(n_samples, n_samples // 4, replace=False)] = True
    alphas = [0.1, 3.0, 30.0, 300.0, 3000.0]
    fit = fit_ridge(torch.tensor(x), torch.tensor(y), torch.tensor(val), alphas, dtype=torch.float64)
    assert fit.form == ("dual" if n_samples < 60 else "primal")

    scores = {}
    for alpha in alphas:
        w, b = normal_equations(x[~val], y[~val], alpha)
        scores[alpha] = ((x[val] @ w + b - y[val]) ** 2).mean()
        assert fit.val_mse[alpha] == pytest.approx(scores[alpha], rel=1e-8)
    best = min(scores, key=scores.get)
    assert fit.alpha == best
    w, b = normal_equations(x, y, best)
    np.testing.assert_allclose(fit.weight.numpy().T, w, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fit.bias.numpy(), b, rtol=1e-8, atol=1e-10)

    single = fit_ridge(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32), None, [best])
    np.testing.assert_allclose(single.weight.numpy().T, w, rtol=1e-3, atol=1e-4)


# --- retrieval ----------------------------------------------------------------------------------


def brute_force_top1(pred, target, idx):
    """Top-1 in both directions among the rows ``idx``, by explicit loops."""
    def cos(a, b):
        return np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)

    image = brain = 0
    for i in idx:
        image += max(idx, key=lambda j: cos(pred[i], target[j])) == i
        brain += max(idx, key=lambda j: cos(pred[j], target[i])) == i
    return image / len(idx), brain / len(idx)


def test_retrieval_matches_brute_force():
    rng = np.random.default_rng(4)
    target = rng.standard_normal((40, 6))
    pred = target + 1.5 * rng.standard_normal((40, 6))
    metrics = embedding_metrics(pred, target, np.arange(40), pool=15, draws=4, seed=9)

    draws = np.random.default_rng(9)
    pools = [brute_force_top1(pred, target, list(draws.choice(40, 15, replace=False))) for _ in range(4)]
    pool = metrics["retrieval"]["pool"]
    assert pool["size"] == 15 and pool["chance"] == pytest.approx(1 / 15)
    assert pool["image_retrieval"] == pytest.approx(np.mean([p[0] for p in pools]))
    assert pool["brain_retrieval"] == pytest.approx(np.mean([p[1] for p in pools]))
    whole = metrics["retrieval"]["all"]
    assert (whole["image_retrieval"], whole["brain_retrieval"]) == pytest.approx(brute_force_top1(pred, target, list(range(40))))
    assert whole["chance"] == pytest.approx(1 / 40)
    assert metrics["mse"] == pytest.approx(((pred - target) ** 2).mean())
    cosines = [np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(pred, target)]
    assert metrics["cosine"] == pytest.approx(np.mean(cosines))


def test_embedding_metrics_of_short_and_zero_vectors():
    rng = np.random.default_rng(5)
    target = rng.standard_normal((10, 4))
    pred = target + rng.standard_normal((10, 4))
    full = embedding_metrics(pred, target, np.arange(10), pool=5, draws=3, seed=0)
    # cosines and retrieval do not depend on the vectors' lengths, also for lengths well below 1
    short = embedding_metrics(pred * 1e-3, target * 1e-3, np.arange(10), pool=5, draws=3, seed=0)
    assert short["cosine"] == pytest.approx(full["cosine"]) and short["retrieval"] == full["retrieval"]
    # a zero vector's cosine with anything is 0, not NaN
    pred[0], target[1] = 0.0, 0.0
    cosines = [np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(pred[2:], target[2:])]
    cosines = [0.0, 0.0] + cosines
    zeros = embedding_metrics(pred, target, np.arange(10), pool=5, draws=3, seed=0)
    assert zeros["cosine"] == pytest.approx(np.mean(cosines))


def test_embedding_metrics_reject_inputs_that_disagree():
    pred = np.zeros((4, 3))
    with pytest.raises(ValueError, match="disagree"):
        embedding_metrics(pred, pred, np.arange(3), pool=4, draws=1, seed=0)
    with pytest.raises(ValueError, match="disagree"):
        embedding_metrics(pred, pred[:, :2], np.arange(4), pool=4, draws=1, seed=0)


# --- data ---------------------------------------------------------------------------------------


def test_validation_split_keeps_every_repeat_of_an_image_on_one_side():
    ids = np.repeat(np.arange(50), 3)
    val = validation_mask(ids, 0.2, seed=0)
    assert len(np.unique(ids[val])) == 10
    assert not set(ids[val]) & set(ids[~val])
    assert np.array_equal(val, validation_mask(ids, 0.2, seed=0))


def test_missing_clip_targets_are_named(tmp_path):
    _, clip = write_tiny_subject(tmp_path)
    targets = read_clip_targets(clip)
    with pytest.raises(ValueError, match=r"clip\.h5: no CLIP target for nsdIds \[73000\]"):
        targets.rows(np.array([targets.nsd_id[0], 73000]))


# --- pipeline -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,loss", [("ridge", "mse"), ("mlp", "mse_cos_contrastive"), ("cnn", "mse_cos")])
def test_run_mapper_writes_the_folder_and_retrieves_far_above_chance(tmp_path, kind, loss):
    prepared, clip = write_tiny_subject(tmp_path, n_aug=2)
    cfg = {**CFG, "train": {**CFG["train"], "epochs": 12, "lr": 3e-3}, "retrieval": {"pool": 10, "draws": 5},
           "cnn": {"hidden": 8, "blocks": 1, "head_hidden": 32, "pad_multiple": 16, "voxel_order": "zyx"}}
    out = tmp_path / "out"
    metrics = run_mapper(prepared, clip, out, kind, loss, "img", cfg, 42, torch.device("cpu"),
                         tmp_path / "ckpt", subject="subj01", progress=False)
    assert all((out / name).is_file() for name in MAPPER_OUTPUT_FILES)
    assert not (tmp_path / "ckpt").exists()
    with h5py.File(prepared) as f, h5py.File(out / "pred_test.h5") as p, h5py.File(out / "pred_train.h5") as q:
        assert np.array_equal(p["nsd_id"][()], f["test/nsd_id"][()])
        assert np.array_equal(q["nsd_id"][()], f["train/nsd_id"][()])
        assert p["pred"].shape == p["target"].shape == (20, 16) and q["pred"].shape == (210, 16)
        assert p["pred"].dtype == np.float32
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    pool = metrics["retrieval"]["pool"]
    assert pool["image_retrieval"] > 3 * pool["chance"] and pool["brain_retrieval"] > 3 * pool["chance"]
    loaded = load_mapper(out)
    with h5py.File(prepared) as f, h5py.File(out / "pred_test.h5") as p:
        assert np.allclose(loaded(torch.from_numpy(f["test/betas"][()])).detach().numpy(), p["pred"][()], atol=1e-5)
    if kind != "ridge":
        curve = (out / "curve.csv").read_text().splitlines()
        assert curve[0].startswith("epoch,lr,train_") and "val_loss" in curve[0] and len(curve) == 13
        assert 1 <= metrics["fit"]["best_epoch"] <= 12


def test_ridge_refuses_another_loss(tmp_path):
    prepared, clip = write_tiny_subject(tmp_path)
    with pytest.raises(ValueError, match="its loss must be 'mse'"):
        run_mapper(prepared, clip, tmp_path / "out", "ridge", "cos", "img", CFG, 0, torch.device("cpu"), None)


# --- training schedule --------------------------------------------------------------------------


TINY_MLP = {"hidden": 16, "blocks": 1, "dropout_in": 0.2, "dropout": 0.1}


def tiny_training(tmp_path, checkpoint_every=1000, epochs=3, reset=True, aug=None, augmented_validation=True):
    """An mlp (with dropout) trained on 40 samples in 5 batches of 8 per epoch, lr stepping every
    epoch; returns (TrainResult, checkpoint dir)."""
    rng = np.random.default_rng(11)
    betas = rng.standard_normal((48, 20)).astype(np.float32)
    targets = rng.standard_normal((16, 6)).astype(np.float32)
    rows, val = np.arange(48) % 16, np.arange(48) % 16 >= 13  # 3 of the 16 images validate
    cfg = {**CFG, "mlp": TINY_MLP,
           "train": {**CFG["train"], "epochs": epochs, "lr": 1e-2, "batch_size_plain": 8, "lr_step_epochs": 1,
                     "lr_gamma": 0.5, "checkpoint_every": checkpoint_every, "reset_optimizer_on_decay": reset,
                     "augmented_validation": augmented_validation}}
    torch.manual_seed(0)
    model = build_mapper("mlp", 20, 6, cfg)
    ckpt = tmp_path / f"ckpt_{checkpoint_every}_{reset}"
    result = train_network(model, betas, targets, aug, rows, val, "mse", cfg, 3, torch.device("cpu"), ckpt,
                           {"test": 1}, progress=False)
    return result, ckpt


@pytest.mark.parametrize("reset", [True, False])
def test_lr_step_restarts_adam_as_the_original_recreates_it(tmp_path, reset):
    """The checkpoint after the first step of epoch 2 (step 6, lr stepped before it). Adam from fresh
    state has step 1 and moments (1 - b1) g and (1 - b2) g^2, so exp_avg_sq = (1 - b2) / (1 - b1)^2
    exp_avg^2; carried-over moments have step 6 and no such relation."""
    result, ckpt = tiny_training(tmp_path, checkpoint_every=6, epochs=2, reset=reset)
    tensors, meta = load_checkpoint(ckpt)
    assert meta["step"] == 6 and meta["epoch"] == 1 and meta["batch"] == 1
    assert [row["lr"] for row in result.curve] == pytest.approx([1e-2, 5e-3])
    names = [k[: -len(".exp_avg")] for k in tensors if k.startswith("optim.") and k.endswith(".exp_avg")]
    assert names
    for name in names:
        step, m, v = tensors[f"{name}.step"], tensors[f"{name}.exp_avg"], tensors[f"{name}.exp_avg_sq"]
        fresh = torch.allclose(v, (1 - 0.999) / (1 - 0.9) ** 2 * m**2, rtol=1e-4, atol=1e-12)
        assert (float(step), fresh) == ((1.0, True) if reset else (6.0, False)), name


@pytest.mark.parametrize("checkpoint_every", [7, 10])  # inside epoch 2 after its restart; the end of epoch 1
def test_resuming_across_an_optimizer_restart_is_exact(tmp_path, checkpoint_every):
    """The last checkpoint of a finished run, resumed by a new run, ends where the run did: the
    restart is neither repeated inside an epoch that already had it nor skipped at the next."""
    reference, _ = tiny_training(tmp_path / "a")
    finished, ckpt = tiny_training(tmp_path / "b", checkpoint_every=checkpoint_every)
    assert load_checkpoint(ckpt)[1]["step"] == (14 if checkpoint_every == 7 else 10)
    resumed, _ = tiny_training(tmp_path / "b", checkpoint_every=checkpoint_every)
    for run in (finished, resumed):
        assert all(torch.equal(reference.state_dict[k], run.state_dict[k]) for k in reference.state_dict)
        assert run.curve == reference.curve and run.steps == reference.steps == 15


def test_validation_targets_are_augmented_as_the_original_validates(tmp_path):
    """With one augmented view per image, the validation loss is the MSE against that view (or the
    plain target when switched off), computed here directly with the returned weights."""
    rng = np.random.default_rng(11)
    betas = rng.standard_normal((48, 20)).astype(np.float32)
    targets = rng.standard_normal((16, 6)).astype(np.float32)
    aug = -targets[:, None, :]  # far from the plain target: the two validations cannot agree
    val = np.arange(48) % 16 >= 13
    for switch, expected_target in ((True, aug[:, 0]), (False, targets)):
        result, _ = tiny_training(tmp_path / str(switch), epochs=1, aug=aug, augmented_validation=switch)
        model = build_mapper("mlp", 20, 6, {**CFG, "mlp": TINY_MLP})
        model.load_state_dict(result.state_dict)
        with torch.no_grad():
            pred = model.eval()(torch.from_numpy(betas[val])).numpy()
        direct = ((pred - expected_target[(np.arange(48) % 16)[val]]) ** 2).mean()
        assert result.curve[0]["val_loss"] == pytest.approx(direct, rel=1e-5)


# --- augmented views (mappers.train.view_draw) ----------------------------------------------------

N_VIEW_SAMPLES, N_VIEW_VAL = 8, 2  # each sample its own image; the last two validate


def views_read(monkeypatch, tmp_path, view_draw="fresh", n_views=4, epochs=4, seed=3, checkpoint_every=1000):
    """A tiny mlp trained on 8 samples (6 in batches of 4, 2 validating) whose image i has the views
    (i, k), k < n_views, as targets: returns (training reads, validation reads, TrainResult), each
    read an (image, view) pair in the order the targets reached the loss."""
    rng = np.random.default_rng(0)
    betas = rng.standard_normal((N_VIEW_SAMPLES, 10)).astype(np.float32)
    images = np.arange(N_VIEW_SAMPLES)
    aug = np.stack(np.meshgrid(images, np.arange(n_views), indexing="ij"), axis=-1).astype(np.float32)
    plain = np.stack([images, -np.ones(N_VIEW_SAMPLES)], axis=1).astype(np.float32)
    train_reads, val_reads = [], []

    def recording_loss(loss, pred, target, cfg):
        reads = train_reads if torch.is_grad_enabled() else val_reads
        reads += [tuple(row) for row in target.detach().round().long().tolist()]
        return mapper_loss(loss, pred, target, cfg)

    monkeypatch.setattr(mapper_training, "mapper_loss", recording_loss)
    cfg = {**CFG, "mlp": TINY_MLP,
           "train": {**CFG["train"], "epochs": epochs, "batch_size_plain": 4, "checkpoint_every": checkpoint_every,
                     "view_draw": view_draw}}
    torch.manual_seed(0)
    model = build_mapper("mlp", 10, 2, cfg)
    val = images >= N_VIEW_SAMPLES - N_VIEW_VAL
    result = train_network(model, betas, plain, aug, images, val, "mse", cfg, seed, torch.device("cpu"),
                           tmp_path / "ckpt", {"test": 1}, progress=False)
    return train_reads, val_reads, result


def views_by_epoch(reads, per_epoch):
    """int (epochs, samples): the view each image read in each epoch, from reads in epoch order."""
    out = np.full((len(reads) // per_epoch, N_VIEW_SAMPLES), -1)
    for n, (image, view) in enumerate(reads):
        out[n // per_epoch, image] = view
    return out


def test_fresh_views_give_every_sample_a_new_view_in_every_epoch(monkeypatch, tmp_path):
    """K = epochs = 4: each sample, training and validating, reads each of its image's views once."""
    train_reads, val_reads, _ = views_read(monkeypatch, tmp_path)
    training = views_by_epoch(train_reads, N_VIEW_SAMPLES - N_VIEW_VAL)
    validation = views_by_epoch(val_reads, N_VIEW_VAL)
    assert training.shape == validation.shape == (4, N_VIEW_SAMPLES)
    for sample in range(N_VIEW_SAMPLES):
        reads = validation if sample >= N_VIEW_SAMPLES - N_VIEW_VAL else training
        assert sorted(reads[:, sample]) == [0, 1, 2, 3], f"sample {sample} read views {reads[:, sample]}"
    assert len({tuple(training[:, sample]) for sample in range(N_VIEW_SAMPLES - N_VIEW_VAL)}) > 1  # each its own order


def test_fresh_views_follow_the_seed(monkeypatch, tmp_path):
    """The same seed reads the same views in the same order; another seed other views (compared
    per sample and epoch: the data order changes with the seed anyway)."""
    first = views_read(monkeypatch, tmp_path / "a")[:2]
    assert views_read(monkeypatch, tmp_path / "b")[:2] == first
    other = views_read(monkeypatch, tmp_path / "c", seed=4)[0]
    assert not np.array_equal(views_by_epoch(other, 6), views_by_epoch(first[0], 6))


def test_fresh_views_resume_mid_epoch_with_the_same_draws(monkeypatch, tmp_path):
    """2 steps an epoch: the last checkpoint (step 5) is after the first batch of epoch 3; the
    rerun that resumes from it reads what the uninterrupted run read from there on, and ends with
    its weights."""
    ref_train, ref_val, reference = views_read(monkeypatch, tmp_path / "reference")
    views_read(monkeypatch, tmp_path / "resumed", checkpoint_every=5)
    assert load_checkpoint(tmp_path / "resumed" / "ckpt")[1]["step"] == 5
    train_reads, val_reads, resumed = views_read(monkeypatch, tmp_path / "resumed", checkpoint_every=5)
    assert train_reads == ref_train[16:] and len(train_reads) == 8  # steps 6-8: 2 + 4 + 2 samples
    assert val_reads == ref_val[4:]  # the validations of epochs 3 and 4
    assert all(torch.equal(reference.state_dict[k], resumed.state_dict[k]) for k in reference.state_dict)
    assert resumed.curve == reference.curve


def test_fresh_views_need_a_stored_view_per_epoch(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"needs clip.n_aug >= mappers.train.epochs, got clip.n_aug 3 < "
                                         r"mappers.train.epochs 4"):
        views_read(monkeypatch, tmp_path, n_views=3, epochs=4)


@pytest.mark.parametrize(
    "train, n_views",
    [({}, 0), ({"augmented_targets": False, "augmented_validation": False}, 3), ({"epochs": 3}, 3), ({}, 5)],
    ids=["no views", "views not read", "a view per epoch", "more views than epochs"],
)
def test_fresh_views_are_checked_only_where_views_are_read(train, n_views):
    check_view_draw({**CFG["train"], "view_draw": "fresh", "epochs": 4, **train}, n_views)
    with pytest.raises(ValueError, match="view_draw must be one of random, fresh, got 'cycle'"):
        check_view_draw({**CFG["train"], "view_draw": "cycle", **train}, n_views)


def test_random_views_are_drawn_with_replacement_from_the_epochs_stream(monkeypatch, tmp_path):
    """view_draw random as before: epoch e's generator default_rng([seed, e]) gives the data order,
    then a view per training sample in that order, then one per validation sample; 2 views for 4
    epochs is allowed."""
    train_reads, val_reads, _ = views_read(monkeypatch, tmp_path, view_draw="random", n_views=2, seed=5)
    train_idx, val_idx = np.arange(N_VIEW_SAMPLES - N_VIEW_VAL), np.arange(N_VIEW_SAMPLES - N_VIEW_VAL, N_VIEW_SAMPLES)
    expected_train, expected_val = [], []
    for epoch in range(4):
        rng = np.random.default_rng([5, epoch])
        order = rng.permutation(train_idx)
        expected_train += list(zip(order.tolist(), rng.integers(2, size=len(order)).tolist()))
        expected_val += list(zip(val_idx.tolist(), rng.integers(2, size=len(val_idx)).tolist()))
    assert train_reads == expected_train and val_reads == expected_val


# --- SIGTERM and resume -------------------------------------------------------------------------

DRIVER = """
import json, logging, sys, torch
torch.set_num_threads(1)
logging.basicConfig(level=logging.INFO, format="%(message)s")
from mindreader.checkpoint import EXIT_INTERRUPTED, TrainingInterrupted
from mindreader.mappers.pipeline import run_mapper
prepared, clip, out, ckpt, cfg = sys.argv[1:4] + [sys.argv[4], json.loads(sys.argv[5])]
try:
    run_mapper(prepared, clip, out, "mlp", "mse_cos", "img", cfg, 7, torch.device("cpu"), ckpt, progress=False)
except TrainingInterrupted:
    sys.exit(EXIT_INTERRUPTED)
"""


def test_sigterm_then_resume_ends_with_the_same_weights(tmp_path):
    prepared, clip = write_tiny_subject(tmp_path, n_voxels=300, n_images=120, n_aug=3)
    cfg = {**CFG, "mlp": {"hidden": 64, "blocks": 2, "dropout_in": 0.3, "dropout": 0.1},
           "train": {**CFG["train"], "epochs": 12, "batch_size_plain": 16, "checkpoint_every": 5}}

    def start(name):
        args = [str(prepared), str(clip), str(tmp_path / name), str(tmp_path / f"ckpt_{name}"), json.dumps(cfg)]
        return subprocess.Popen([sys.executable, "-c", DRIVER, *args], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    reference = start("reference")
    interrupted = start("interrupted")
    state = tmp_path / "ckpt_interrupted" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and interrupted.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    interrupted.send_signal(15)
    output = interrupted.communicate()[0]
    assert interrupted.returncode == EXIT_INTERRUPTED, output
    saved = json.loads(state.read_text())
    assert 0 < saved["step"] and saved["epoch"] < 12
    assert not (tmp_path / "interrupted" / "model.safetensors").exists()

    resumed = start("interrupted")
    resumed_output = resumed.communicate()[0]
    assert resumed.returncode == 0, resumed_output
    reference_output = reference.communicate()[0]
    assert reference.returncode == 0, reference_output
    # The rerun says where it resumed and runs only the steps after that.
    total = int(re.search(r"ran steps 1 to (\d+) of (\d+) in this process", reference_output).group(1))
    assert f"resumed from step {saved['step']} of {total}" in resumed_output
    assert f"ran steps {saved['step'] + 1} to {total} of {total} in this process" in resumed_output
    a = load_file(str(tmp_path / "reference" / "model.safetensors"))
    b = load_file(str(tmp_path / "interrupted" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "reference" / "curve.csv").read_text() == (tmp_path / "interrupted" / "curve.csv").read_text()
