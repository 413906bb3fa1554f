"""Mind Reader's FID (StyleGAN2-ADA's fid50k_full protocol: generated samples vs the test images)
and resizing each image once. The FID Inception here has RANDOM weights (no pretrained file can be
downloaded): the tests check the protocol (counts, conditions, seeds, statistics, sizes), not
published numbers. References are computed here from the definitions: the uint8 rounding of
StyleGAN2-ADA, one antialiased bilinear resize, population covariances, the Frechet distance."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from mindreader import metrics
from mindreader.evaluation import BatteryConfig
from mindreader.evaluation.battery import extract_features
from mindreader.evaluation.generated_fid import evaluate_generated_fid, generated_fid, generated_moments
from mindreader.evaluation.networks import FID_NETWORK, FeatureNetwork, build_network
from mindreader.evaluation.run import generated_fid_result
from mindreader.generator.networks import Discriminator, Generator
from mindreader.generator.store import architecture, save_networks
from mindreader.nsd.paths import STIMULI_RELPATH
from mindreader.smoke import random_fid_inception_state

torch.set_num_threads(1)
C_DIM = 8  # condition width of the tiny generators below
CFG = BatteryConfig(
    n_boot=20,
    n_boot_fd=10,
    batch_size=4,
    image_side=64,
    retrieval_pool=300,
    retrieval_draws=5,
    seed=0,
    fid_protocols=("paired", "generated"),
)


@pytest.fixture(scope="module")
def inception_state():
    """Random weights for pytorch-fid's Inception, the smoke run's: with the batch norms' default
    statistics (mean 0, var 1) the random network's features are ~1e-6 and every distance would
    vanish below the tests' tolerances."""
    torch.manual_seed(0)
    return random_fid_inception_state()


@pytest.fixture(scope="module")
def inception(inception_state):
    return build_network(FID_NETWORK, inception_state)


def _tiny_networks(n_conditions: int = 2):
    """A tiny G (16 px) and D from the demo config's architecture, noise inputs on and strong."""
    arch = {
        **tiny_config()["generator"],
        "resolution": 16,
        "z_dim": 16,
        "w_dim": 16,
        "mapping_layers": 2,
        "channel_base": 128,
        "channel_max": 16,
        "branch_width": 8,
        "noise_inputs": True,
    }
    g_kwargs, d_kwargs = architecture(arch, C_DIM, n_conditions, "max")
    torch.manual_seed(0)
    G, D = Generator(**g_kwargs), Discriminator(**d_kwargs)
    for name, param in G.named_parameters():
        if name.endswith("noise_strength"):  # zero at init: make the noise inputs matter
            param.data.fill_(0.5)
    return G.eval(), D, g_kwargs, d_kwargs


class GeneratorCalls:
    """Records every Generator call (z, c, output image) through torch's global module hooks."""

    def __init__(self):
        self.z, self.c, self.images = [], [], []

    def __enter__(self):
        def record(module, args, output):
            if isinstance(module, Generator):
                self.z.append(args[0].detach().clone())
                self.c.append(args[1].detach().clone())
                self.images.append(output.detach().clone())

        self.handle = torch.nn.modules.module.register_module_forward_hook(record)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _stylegan_uint8(img: torch.Tensor) -> torch.Tensor:
    # StyleGAN2-ADA's metric_utils: (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return (img * 127.5 + 128).clamp(0, 255).to(torch.uint8)


def _features(inception, uint8_images: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return inception(uint8_images.float() / 255.0)["fid"].double().numpy()


def _reference_fid(fake: np.ndarray, real: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2), population covariances (StyleGAN2-ADA).

    With S1 = A^T A / n1 and S2 = B^T B / n2 (A, B centred), the nonzero eigenvalues of S1 S2 are
    those of (A B^T)(A B^T)^T / (n1 n2): tr sqrt(S1 S2) is the sum of the singular values of A B^T
    over sqrt(n1 n2), computed here on the few samples instead of 2048 x 2048 matrices.
    """
    a, b = fake - fake.mean(axis=0), real - real.mean(axis=0)
    n1, n2 = len(fake), len(real)
    tr_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum() / np.sqrt(n1 * n2)
    mean_term = ((fake.mean(axis=0) - real.mean(axis=0)) ** 2).sum()
    return float(mean_term + (a**2).sum() / n1 + (b**2).sum() / n2 - 2 * tr_sqrt)


def test_generated_fid_counts_cycles_the_test_conditions_and_is_seeded(inception):
    G, *_ = _tiny_networks()
    c = F.normalize(torch.randn(2, 2, C_DIM, generator=torch.Generator().manual_seed(1)), dim=-1)
    real = np.random.default_rng(0).integers(0, 256, size=(3, 3, 16, 16), dtype=np.uint8)
    real_features = _features(inception, torch.from_numpy(real))
    with GeneratorCalls() as calls:
        value = generated_fid(G, c, real_features, inception, 5, 2, 11, torch.device("cpu"))
    # 5 images in batches of 2, 2, 1; image i conditioned on test sample i mod 2, nothing else
    assert [len(z) for z in calls.z] == [2, 2, 1]
    torch.testing.assert_close(torch.cat(calls.c), c[torch.arange(5) % 2], rtol=0, atol=0)
    fake_features = _features(inception, _stylegan_uint8(torch.cat(calls.images)))
    assert value == pytest.approx(_reference_fid(fake_features, real_features), rel=1e-6, abs=0)

    # seeded: the same seed draws the same images (noise inputs included), another seed others
    with GeneratorCalls() as again:
        moments = generated_moments(G, c, inception, 5, 2, 11, torch.device("cpu"))
    torch.testing.assert_close(torch.cat(again.images), torch.cat(calls.images), rtol=0, atol=0)
    np.testing.assert_allclose(moments.total, fake_features.sum(axis=0), rtol=1e-12)
    with GeneratorCalls() as other:
        generated_moments(G, c, inception, 5, 2, 12, torch.device("cpu"))
    assert not torch.equal(torch.cat(other.z), torch.cat(calls.z))
    assert not torch.equal(torch.cat(other.images), torch.cat(calls.images))


def _write_run(tmp_path, nsd_id: np.ndarray, side: int = 40):
    """A tiny run: generator folder, img and cap pred_test.h5, and an NSD stimuli brick."""
    G, D, g_kwargs, d_kwargs = _tiny_networks()
    run = tmp_path / "run"
    save_networks(run, G, G, D, g_kwargs, d_kwargs, conditions=["img", "cap"])
    rng = np.random.default_rng(2)
    files, preds = [], []
    for target in ("img", "cap"):
        pred = rng.standard_normal((len(nsd_id), C_DIM)).astype(np.float32) * 3
        with h5py.File(tmp_path / f"{target}_pred_test.h5", "w") as f:
            f["nsd_id"], f["pred"], f["target"] = nsd_id, pred, pred + 0.1
        files.append(tmp_path / f"{target}_pred_test.h5")
        preds.append(pred)
    brick = rng.integers(0, 256, size=(10, side, side, 3), dtype=np.uint8)
    stimuli = tmp_path / "nsd" / STIMULI_RELPATH
    stimuli.parent.mkdir(parents=True)
    with h5py.File(stimuli, "w") as f:
        f["imgBrick"] = brick
    return run, files, np.stack(preds, axis=1), brick


def test_generated_fid_of_a_run_uses_its_test_predictions_and_test_images(tmp_path, inception):
    nsd_id = np.array([7, 2, 2, 5])  # image 2 seen in two test samples: it counts twice, as the fork's items
    run, files, pred, brick = _write_run(tmp_path, nsd_id)
    with GeneratorCalls() as calls:
        result = evaluate_generated_fid(run, files, tmp_path / "nsd", inception, "test_set", 3, 5, torch.device("cpu"))
    assert (result["n_generated"], result["n_real"], result["n_real_images"], result["resolution"]) == (4, 4, 3, 16)
    # one image per test sample, each conditioned on that sample's normalised predictions
    torch.testing.assert_close(torch.cat(calls.c), F.normalize(torch.from_numpy(pred), dim=-1))
    fake_features = _features(inception, _stylegan_uint8(torch.cat(calls.images)))
    # the real side: each test sample's stimulus resized once to G's 16 px (antialiased bilinear, rounded)
    real = F.interpolate(
        torch.from_numpy(brick[nsd_id]).permute(0, 3, 1, 2).float(),
        size=(16, 16),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    real_features = _features(inception, real.round().clamp(0, 255).to(torch.uint8))
    assert result["value"] == pytest.approx(_reference_fid(fake_features, real_features), rel=1e-6, abs=0)


def test_the_oracle_generated_fid_conditions_on_the_true_embeddings(tmp_path, inception):
    nsd_id = np.array([7, 2, 5])
    run, files, _, _ = _write_run(tmp_path, nsd_id)
    rng = np.random.default_rng(4)
    true = {t: rng.standard_normal((10, C_DIM)).astype(np.float32) for t in ("img", "cap")}
    for target, table in true.items():
        with h5py.File(tmp_path / f"{target}_true.h5", "w") as f:
            f["nsd_id"], f["target"] = np.arange(10), table
    oracle = {t: tmp_path / f"{t}_true.h5" for t in true}
    with GeneratorCalls() as calls:
        result = evaluate_generated_fid(
            run, files, tmp_path / "nsd", inception, "test_set", 3, 5, torch.device("cpu"), oracle
        )
    expected = np.stack([true["img"][nsd_id], true["cap"][nsd_id]], axis=1)
    torch.testing.assert_close(torch.cat(calls.c), F.normalize(torch.from_numpy(expected), dim=-1))
    assert result["n_generated"] == 3 and "normalised TRUE embedding" in result["protocol"]


def test_the_generated_fid_entry_says_why_it_is_missing(tmp_path):
    paired_only = dataclasses.replace(CFG, fid_protocols=("paired",))
    assert "not requested" in generated_fid_result(paired_only, None, {})["missing"]
    assert generated_fid_result(CFG, None, {"fid": "weights file not found: x"}) == {
        "missing": "weights file not found: x"
    }


def test_every_image_is_resized_once_straight_to_each_metrics_size():
    # 40 px images, PixCorr at 64 px, a network that takes 24 px: via 64 px the network would see
    # visibly different pixels than from one 40 -> 24 resize.
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 256, size=(3, 40, 40, 3), dtype=np.uint8)
    rec = rng.integers(0, 256, size=(3, 20, 20, 3), dtype=np.uint8)
    probe = FeatureNetwork(torch.nn.Identity(), side=24, normalise=False, single="pixels")

    def once(images, side):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        return F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)

    for images in (gt, rec):
        seen = extract_features({"probe": probe}, images, CFG, torch.device("cpu"), "test")["pixels"]
        np.testing.assert_allclose(seen, once(images, 24).flatten(1).numpy(), atol=1e-6)
        via_image_side = once(np.ascontiguousarray(once(images, 64).permute(0, 2, 3, 1).numpy()), 24)
        assert np.abs(seen - via_image_side.flatten(1).numpy()).max() > 0.01  # the two-step result differs

    a = once(gt, 64).clamp(0, 1).flatten(1).double().numpy()
    b = once(rec, 64).clamp(0, 1).flatten(1).double().numpy()
    expected = [np.corrcoef(x, y)[0, 1] for x, y in zip(a, b)]
    np.testing.assert_allclose(metrics.pixcorr_per_image(gt, rec, 64), expected, atol=1e-5)
