"""The oracle path: a run's G_ema drawing the test images from their TRUE CLIP embeddings (no
brain), against G_ema called directly here on conditions and z built in the test; its evaluation
reports retrieval as not applicable; its rows sit next to the brain-driven ones in every table."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from conftest import tiny_config

from mindreader.evaluation import METRICS, BatteryConfig, evaluate_run
from mindreader.generator.networks import Discriminator, Generator
from mindreader.generator.reconstruct import reconstruct
from mindreader.generator.store import architecture, save_networks

torch.set_num_threads(1)
CPU = torch.device("cpu")
C_DIM = 8
Z_DIM = 16
# The test samples in their test order (not sorted: the order must carry over).
TEST_IDS = [9, 2, 7, 4]
ALL_IDS = list(range(1, 12))
RETRIEVAL = [m.key for m in METRICS if m.kind == "retrieval"]


def networks(n_conditions: int):
    arch = {
        **tiny_config()["generator"],
        "resolution": 16,
        "z_dim": Z_DIM,
        "w_dim": 16,
        "mapping_layers": 2,
        "channel_base": 128,
        "channel_max": 16,
        "branch_width": 8,
    }
    g_kwargs, d_kwargs = architecture(arch, C_DIM, n_conditions, "max")
    torch.manual_seed(0)
    G, G_ema, D = Generator(**g_kwargs), Generator(**g_kwargs), Discriminator(**d_kwargs)
    with torch.no_grad():
        for p in G_ema.parameters():  # G_ema unlike G: the images must come from G_ema
            p.mul_(0.7)
    return G, G_ema, D, g_kwargs, d_kwargs


def embeddings(seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.standard_normal(C_DIM).astype(np.float32) * 2 for i in ALL_IDS}


def write_targets(path, table: dict[int, np.ndarray], ids: list[int]) -> None:
    """A CLIP targets file (results/clip/images.h5 layout) holding ``ids`` in the order given."""
    with h5py.File(path, "w") as f:
        f["nsd_id"] = np.array(ids, dtype=np.int64)
        f["target"] = np.stack([table[i] for i in ids])


def write_predictions(path, pred: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f["nsd_id"] = np.array(TEST_IDS, dtype=np.int64)
        f["pred"], f["target"] = pred, pred


def stylegan_uint8(img: torch.Tensor) -> np.ndarray:
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture
def run(tmp_path):
    """True img and cap embeddings (files in different row orders), and predictions unlike them."""
    true = {"img": embeddings(1), "cap": embeddings(2)}
    write_targets(tmp_path / "images.h5", true["img"], ALL_IDS)
    write_targets(tmp_path / "captions.h5", true["cap"], ALL_IDS[::-1])
    rng = np.random.default_rng(3)
    preds = {t: rng.standard_normal((len(TEST_IDS), C_DIM)).astype(np.float32) for t in ("img", "cap")}
    for target, pred in preds.items():
        write_predictions(tmp_path / f"{target}_pred_test.h5", pred)
    files = {"img": tmp_path / "images.h5", "cap": tmp_path / "captions.h5"}
    predictions = [tmp_path / "img_pred_test.h5", tmp_path / "cap_pred_test.h5"]
    return tmp_path, true, files, predictions


@pytest.mark.parametrize("n_conditions", [2, 1], ids=["img+cap", "avg"])
def test_oracle_file_is_G_ema_on_the_true_embeddings_in_test_order(run, n_conditions):
    tmp_path, true, files, predictions = run
    G, G_ema, D, g_kwargs, d_kwargs = networks(n_conditions)
    save_networks(tmp_path / "G", G, G_ema, D, g_kwargs, d_kwargs, conditions=["img", "cap"])
    images = reconstruct(tmp_path / "G", predictions, tmp_path / "oracle.h5", "random", 5, CPU, 3, files)

    per_condition = torch.from_numpy(np.stack([[true[t][i] for t in ("img", "cap")] for i in TEST_IDS]))
    if n_conditions == 1:  # the avg variant: the mean of both true embeddings, one condition
        per_condition = per_condition.mean(dim=1, keepdim=True)
    c = per_condition / per_condition.norm(dim=-1, keepdim=True)
    z = torch.randn(len(TEST_IDS), Z_DIM, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = stylegan_uint8(G_ema.eval()(z, c, noise_mode="const"))
        from_G = stylegan_uint8(G.eval()(z, c, noise_mode="const"))
    assert images.shape == (len(TEST_IDS), 16, 16, 3)
    np.testing.assert_array_equal(images, expected)
    assert not np.array_equal(images, from_G)
    with h5py.File(tmp_path / "oracle.h5") as f:
        assert f["nsd_id"][()].tolist() == TEST_IDS
        np.testing.assert_array_equal(f["images"][()], expected)
        assert f.attrs["source"] == "oracle" and f.attrs["z_policy"] == "random" and f.attrs["seed"] == 5

    brain = reconstruct(tmp_path / "G", predictions, tmp_path / "brain.h5", "random", 5, CPU, 3)
    assert not np.array_equal(brain, images)
    with h5py.File(tmp_path / "brain.h5") as f:
        assert f.attrs["source"] == "brain" and f["nsd_id"][()].tolist() == TEST_IDS


def test_oracle_and_brain_differ_only_in_the_condition(run):
    """Predictions equal to the true embeddings (in any scale: both are normalised) give the
    oracle's images exactly: same z, same noise, same G_ema."""
    tmp_path, true, files, _ = run
    G, G_ema, D, g_kwargs, d_kwargs = networks(2)
    save_networks(tmp_path / "G", G, G_ema, D, g_kwargs, d_kwargs, conditions=["img", "cap"])
    exact = []
    for target in ("img", "cap"):
        write_predictions(tmp_path / f"{target}_exact.h5", 3 * np.stack([true[target][i] for i in TEST_IDS]))
        exact.append(tmp_path / f"{target}_exact.h5")
    oracle = reconstruct(tmp_path / "G", exact, tmp_path / "oracle.h5", "random", 0, CPU, 2, files)
    brain = reconstruct(tmp_path / "G", exact, tmp_path / "brain.h5", "random", 0, CPU, 4)
    np.testing.assert_array_equal(oracle, brain)


def test_a_condition_without_its_true_embeddings_is_an_error(run):
    tmp_path, _, files, predictions = run
    G, G_ema, D, g_kwargs, d_kwargs = networks(2)
    save_networks(tmp_path / "G", G, G_ema, D, g_kwargs, d_kwargs, conditions=["img", "cap"])
    with pytest.raises(ValueError, match=r"no true-embedding file for condition\(s\) \['cap'\]"):
        reconstruct(tmp_path / "G", predictions, tmp_path / "o.h5", "zero", 0, CPU, 4, {"img": files["img"]})
    write_targets(tmp_path / "few.h5", embeddings(1), [1, 2, 3])
    with pytest.raises(ValueError, match="few.h5: no embedding for"):
        reconstruct(
            tmp_path / "G", predictions, tmp_path / "o.h5", "zero", 0, CPU, 4, {**files, "img": tmp_path / "few.h5"}
        )


def test_oracle_evaluation_reports_retrieval_not_applicable(tmp_path):
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    with h5py.File(tmp_path / "oracle.h5", "w") as f:
        f["images"], f["nsd_id"] = gt[::-1].copy(), np.arange(6)
        f.attrs["source"] = "oracle"
    with h5py.File(tmp_path / "pred_test.h5", "w") as f:
        target = rng.standard_normal((6, 4))
        f["nsd_id"], f["pred"], f["target"] = np.arange(6), target, target
    cfg = BatteryConfig(50, 20, 4, 32, 300, 3, 0, ("paired",))
    args = (gt, {"img": tmp_path / "pred_test.h5"}, {}, {}, cfg, CPU, {"missing": "not requested"})
    oracle, _ = evaluate_run(tmp_path / "oracle.h5", *args, source="oracle")
    brain, _ = evaluate_run(tmp_path / "oracle.h5", *args, source="brain")
    assert oracle["source"] == "oracle" and brain["source"] == "brain"
    for key in RETRIEVAL:
        assert oracle["metrics"][key]["missing"].startswith("not applicable to oracle rows"), key
    assert brain["metrics"]["img_ret"]["value"] == 1.0
    for key in ("pixcorr", "ssim"):
        assert oracle["metrics"][key] == brain["metrics"][key]
    with pytest.raises(ValueError, match="unknown reconstruction source 'mind'"):
        evaluate_run(tmp_path / "oracle.h5", *args, source="mind")
