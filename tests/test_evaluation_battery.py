"""The battery's networks and per-run evaluation. Networks here carry RANDOM weights written by
the tests (no pretrained file can be downloaded): they check loading, shapes and plumbing, not
the published numbers."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torchvision

from mindreader import metrics
from mindreader.evaluation import METRICS, BatteryConfig, evaluate_images, evaluate_run
from mindreader.evaluation.networks import build_network, load_network
from mindreader.weights import sha256_of

torch.set_num_threads(1)
CFG = BatteryConfig(
    n_boot=50,
    n_boot_fd=20,
    batch_size=4,
    image_side=64,
    retrieval_pool=300,
    retrieval_draws=5,
    seed=0,
    fid_protocols=("paired", "generated"),
)


def _random_weights(tmp_path, name, model):
    path = tmp_path / f"{name}-random.pth"
    torch.save(model.state_dict(), path)
    return {"weights_name": None, "weights": str(path), "sha256": sha256_of(path)}


def test_each_metrics_direction_and_scale_in_the_tables():
    # Distances are better low, scores and identification or retrieval rates high; the rates
    # (fractions) are shown as percentages.
    lower_is_better = {"fid_paired", "fid_generated", "fd_clip", "eff", "swav"}
    percent = {"alex2", "alex5", "incep", "clip", "img_ret", "brain_ret", "cap_ret", "cap_brain_ret"}
    for metric in METRICS:
        assert metric.higher_is_better == (metric.key not in lower_is_better), metric.key
        assert metric.percent == (metric.key in percent), metric.key


def pixel_features(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """A stand-in feature network: a different view of the pixels under each feature name."""
    flat = x.flatten(1)
    views = (flat, flat.square(), flat.sqrt(), 1 - flat, flat[:, ::2], flat[:, 1::2], flat.exp())
    return dict(zip(("fid", "clip", "alex2", "alex5", "incep", "eff", "swav"), views))


def test_each_metric_is_its_function_of_its_own_features():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 256, size=(6, 4, 4, 3), dtype=np.uint8)
    rec = np.clip(gt.astype(int) + rng.integers(-90, 90, gt.shape), 0, 255).astype(np.uint8)
    true = rng.standard_normal((6, 5))
    pred = {"img": true + rng.standard_normal((6, 5)), "cap": true + 2 * rng.standard_normal((6, 5))}
    predictions = {target: (p, true) for target, p in pred.items()}
    results = evaluate_images(gt, rec, {"pixels": pixel_features}, {}, predictions, CFG, torch.device("cpu"))

    def features(images):
        x = torch.from_numpy(metrics.unit_float_images(images)).permute(0, 3, 1, 2)
        return {name: f.numpy() for name, f in pixel_features(x).items()}

    a, b = features(gt), features(rec)
    expected = {
        "fid_paired": metrics.frechet_distance_features(a["fid"], b["fid"]),
        "fd_clip": metrics.frechet_distance_features(a["clip"], b["clip"]),
        "pixcorr": metrics.pixcorr_per_image(gt, rec, CFG.image_side).mean(),
        "ssim": metrics.ssim_per_image(gt, rec, CFG.image_side).mean(),
        **{key: metrics.two_way_identification(a[key], b[key]) for key in ("alex2", "alex5", "incep", "clip")},
        **{key: metrics.correlation_distance_per_image(a[key], b[key]).mean() for key in ("eff", "swav")},
    }
    for key, (target, direction) in {
        "img_ret": ("img", "image"),
        "brain_ret": ("img", "brain"),
        "cap_ret": ("cap", "image"),
        "cap_brain_ret": ("cap", "brain"),
    }.items():
        hits = metrics.retrieval_hits(*predictions[target], CFG.retrieval_pool, CFG.retrieval_draws, CFG.seed)
        expected[key] = hits[direction].sum() / hits["appearances"].sum()
    assert {key: results[key]["value"] for key in expected} == pytest.approx(expected)


def test_missing_weights_are_reported_missing_not_computed(tmp_path):
    net, reason = load_network(
        "alexnet", {"weights_name": "alexnet", "weights": str(tmp_path / "absent.pth")}, torch.device("cpu")
    )
    assert net is None and "absent.pth" in reason and "fetch" in reason.lower()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    results = evaluate_images(
        images, images, {}, {"alex2": reason}, {"img": "no predictions"}, CFG, torch.device("cpu")
    )
    assert results["alex2"] == {"missing": reason}
    assert "missing" in results["fid_paired"] and "missing" in results["img_ret"]
    assert "value" not in results["alex5"]
    assert results["ssim"]["value"] == pytest.approx(1.0)


def test_a_network_without_checksum_is_missing(tmp_path):
    cfg = _random_weights(tmp_path, "swav", torchvision.models.resnet50())
    net, reason = load_network("swav", {**cfg, "sha256": None}, torch.device("cpu"))
    assert net is None and "sha256" in reason


def test_a_damaged_file_is_an_error(tmp_path):
    cfg = _random_weights(tmp_path, "alexnet", torchvision.models.alexnet())
    with pytest.raises(ValueError, match="sha256"):
        load_network("alexnet", {**cfg, "sha256": "0" * 64}, torch.device("cpu"))


def test_alexnet_gives_both_layers(tmp_path):
    cfg = _random_weights(tmp_path, "alexnet", torchvision.models.alexnet())
    net, reason = load_network("alexnet", cfg, torch.device("cpu"))
    assert reason is None
    feats = net(torch.rand(2, 3, 64, 64))
    assert feats["alex2"].shape == (2, 192 * 31 * 31) and feats["alex5"].shape == (2, 256 * 15 * 15)


def test_swav_release_layout_loads_into_resnet50():
    backbone = torchvision.models.resnet50()
    state = {f"module.{k}": v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    state["module.projection_head.0.weight"] = torch.zeros(2048, 2048)
    state["module.prototypes.weight"] = torch.zeros(3000, 128)
    net = build_network("swav", state)
    assert net(torch.rand(1, 3, 32, 32))["swav"].shape == (1, 2048)


def test_fid_inception_loads_a_local_state_dict():
    # pytorch-fid's FID blocks have torchvision's parameter names and shapes: a random
    # torchvision Inception3 with 1008 classes has exactly the FID network's state dict.
    random_state = torchvision.models.inception.Inception3(
        num_classes=1008, aux_logits=False, init_weights=False
    ).state_dict()
    net = build_network("inception_fid", random_state)
    assert net(torch.rand(2, 3, 40, 40))["fid"].shape == (2, 2048)


def _write_run_inputs(tmp_path, n=6, side=16, dim=8):
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
    rec = np.clip(gt.astype(int) + rng.integers(-40, 40, gt.shape), 0, 255).astype(np.uint8)
    with h5py.File(tmp_path / "finetune.h5", "w") as f:
        f["images"], f["nsd_id"] = rec, np.arange(10, 10 + n)
        f.attrs["z_policy"], f.attrs["seed"] = "random", 0
    target = rng.standard_normal((n, dim)).astype(np.float32)
    with h5py.File(tmp_path / "pred_test.h5", "w") as f:
        f["nsd_id"], f["pred"], f["target"] = np.arange(10, 10 + n), target + 0.1, target
    return gt


def test_evaluate_run_reports_every_metric_with_ci(tmp_path):
    gt = _write_run_inputs(tmp_path)
    cfg = _random_weights(tmp_path, "alexnet", torchvision.models.alexnet())
    net, _ = load_network("alexnet", cfg, torch.device("cpu"))
    summary, per_image = evaluate_run(
        tmp_path / "finetune.h5",
        gt,
        {"img": tmp_path / "pred_test.h5"},
        {"alexnet": net},
        {"fid": "weights file not found: x"},
        CFG,
        torch.device("cpu"),
        {"missing": "weights file not found: x"},
    )
    results = summary["metrics"]
    assert set(results) == {m.key for m in METRICS}
    for key in ("pixcorr", "ssim", "alex2", "alex5", "img_ret", "brain_ret"):
        lo, hi = results[key]["ci95"]
        assert lo <= results[key]["value"] <= hi, key
    assert results["img_ret"]["value"] == 1.0 and results["img_ret"]["chance"] == pytest.approx(1 / 6)
    assert results["fid_paired"] == results["fid_generated"] == {"missing": "weights file not found: x"}
    assert "missing" in results["cap_ret"]
    assert list(per_image["nsd_id"]) == list(range(10, 16))
    assert {"pixcorr", "ssim", "alex2", "alex5"} <= set(per_image.columns)
    assert summary["reconstruction"]["z_policy"] == "random"
