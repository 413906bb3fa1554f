"""Properties of generator training that the paper's method rests on, each checked against a
formula or a fact written out here: no test image in pre-training, fine-tuning starts from the
pre-trained weights, R1, path length with its running mean, the non-saturating loss, style
mixing, the end-to-end mapper loss, and reconstructions drawn by G_ema."""

from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import REPO
from test_generator_networks import tiny_D, tiny_G

from mindreader.generator.data import pretraining_set
from mindreader.generator.distributed import StepRandom
from mindreader.generator.loss import LafiteLoss, LossConfig
from mindreader.generator.reconstruct import generate_images, reconstruct
from mindreader.generator.stages import from_pretrained
from mindreader.generator.store import architecture, save_networks
from mindreader.nsd.write import write_stimuli

torch.set_num_threads(1)
CPU = torch.device("cpu")


def write_ids(path, nsd_ids, **datasets):
    with h5py.File(path, "w") as f:
        f.create_dataset("nsd_id", data=np.asarray(nsd_ids, dtype=np.int64))
        for name, value in datasets.items():
            f.create_dataset(name, data=value)


def test_pretraining_never_sees_a_test_image_of_any_subject(tmp_path):
    # Image i is a flat grey of value 10 * i, so a held image tells which stimulus it is.
    n = 20
    images = (np.arange(n, dtype=np.uint8) * 10)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8)
    write_stimuli(tmp_path / "nsd", images)
    write_ids(tmp_path / "images.h5", np.arange(n), target=np.random.default_rng(0).normal(size=(n, 4)))
    tests = {"subj01": [3, 7], "subj02": [7, 11, 19]}
    prepared = []
    for subject, test_ids in tests.items():
        prepared.append(tmp_path / f"{subject}.h5")
        with h5py.File(prepared[-1], "w") as f:
            f.create_dataset("test/nsd_id", data=np.asarray(test_ids, dtype=np.int64))
    data = pretraining_set(tmp_path / "nsd", tmp_path / "images.h5", prepared, 8)
    held_out = {3, 7, 11, 19}
    assert set(data.nsd_id.tolist()) == set(range(n)) - held_out
    seen = data.images[data.image_index][:, 0, 0, 0].numpy() // 10
    assert set(seen.tolist()).isdisjoint(held_out) and np.array_equal(seen, data.nsd_id)


def demo_generator_config() -> dict:
    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["generator"]
    # The sizes of tiny_G / tiny_D.
    tiny = {"resolution": 16, "z_dim": 8, "w_dim": 8, "mapping_layers": 2, "channel_base": 64, "channel_max": 8}
    return {**cfg, **tiny, "branch_width": 6, "branch_lr_multiplier": 0.01, "noise_inputs": True, "mbstd_group_size": 2}


@pytest.mark.parametrize("variant, n_conditions", [("img", 1), ("img+cap", 2)])
def test_fine_tuning_starts_from_the_pretrained_weights(tmp_path, variant, n_conditions):
    cfg = demo_generator_config()
    g_kwargs, d_kwargs = architecture(cfg, 12, 1, "max")
    torch.manual_seed(11)
    G0, G0_ema = tiny_G(), tiny_G()
    with torch.no_grad():
        for p in G0_ema.parameters():
            p.add_(torch.randn_like(p))
    D0 = tiny_D(group=2)
    save_networks(tmp_path / "pre", G0, G0_ema, D0, g_kwargs, d_kwargs, conditions=["img"])
    G, G_ema, D, _, _ = from_pretrained(tmp_path / "pre", cfg, 12, n_conditions, "max", seed=5)
    for mine, source in ((G, G0), (G_ema, G0_ema), (D, D0)):
        own = source.state_dict()
        for name, value in mine.state_dict().items():
            copied = name.replace("branches.1.", "branches.0.").replace("heads.1.", "heads.0.")
            assert torch.equal(value, own[copied]), name


def loss_and_batch(**cfg):
    G, D = tiny_G(), tiny_D(group=2)
    loss = LafiteLoss(G, D, LossConfig(signal_weight=0.9, **cfg))
    torch.manual_seed(3)
    return loss, {"real": torch.rand(4, 3, 16, 16) * 2 - 1, "cond": torch.randn(4, 2, 1, 12)}


def test_r1_is_gamma_half_times_the_squared_gradient_norm_of_the_real_logits():
    loss, batch = loss_and_batch(r1_gamma=0.7, r1_interval=8)
    c, _ = loss.conditions(batch, StepRandom(0, 2, "Dreg", CPU), detach_mappers=True)
    real = batch["real"].clone().requires_grad_(True)
    (grads,) = torch.autograd.grad(loss.D(real, c)[0].sum(), real)
    expected = grads.square().sum(dim=[1, 2, 3]).mean() * 0.7 / 2 * 8
    losses, terms = loss.d_r1(batch, StepRandom(0, 2, "Dreg", CPU))
    assert losses["D"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_path_length_penalty_and_its_running_mean():
    loss, batch = loss_and_batch(pl_weight=2.0, pl_interval=4, pl_decay=0.25, pl_batch_shrink=2)
    captured = {}
    generate = loss.generate

    def capturing(c, rnd, mixing=True):
        img, ws = generate(c, rnd, mixing)
        captured.update(img=img, ws=ws, rng=rnd.generator.get_state())  # the next draw is the pl noise
        return img, ws

    loss.generate = capturing
    mean = 0.0
    for step in range(2):
        losses, terms = loss.g_pl(batch, StepRandom(0, step, "Greg", CPU))
        img, ws = captured["img"], captured["ws"]
        rng = torch.Generator()
        rng.set_state(captured["rng"])
        pl_noise = torch.randn(img.shape, generator=rng) / math.sqrt(img.shape[2] * img.shape[3])
        (grads,) = torch.autograd.grad((img * pl_noise).sum(), ws, retain_graph=True)
        lengths = grads.square().sum(dim=2).mean(dim=1).sqrt()  # per sample, over the ws
        mean = mean + 0.25 * (lengths.mean().item() - mean)
        assert terms["Loss/G/pl_mean"].item() == pytest.approx(mean, rel=1e-5)
        penalty = (lengths - mean).square().mean().item()
        assert losses["G"].item() == pytest.approx(penalty * 2.0 * 4, rel=1e-4)
    assert img.shape[0] == 2  # every pl_batch_shrink-th sample


def test_non_saturating_losses_read_Ds_logits():
    loss, batch = loss_and_batch(itd=0.0)
    logits = []
    forward = loss.D.forward

    def recording(img, c):
        out = forward(img, c)
        logits.append(out[0].detach())
        return out

    loss.D.forward = recording
    losses, terms = loss.g_main(batch, StepRandom(0, 0, "Gmain", CPU))
    assert losses["G"].item() == pytest.approx(F.softplus(-logits[0]).mean().item(), rel=1e-6)
    losses, terms = loss.d_main(batch, StepRandom(0, 0, "Dmain", CPU))
    fake, real = logits[1], logits[2]
    assert terms["Loss/D/fake"].item() == pytest.approx(math.fsum(math.log1p(math.exp(v)) for v in fake) / 4, rel=1e-5)
    assert terms["Loss/D/real"].item() == pytest.approx(math.fsum(math.log1p(math.exp(-v)) for v in real) / 4, rel=1e-5)
    assert losses["D"].item() == pytest.approx(terms["Loss/D/fake"].item() + terms["Loss/D/real"].item(), rel=1e-6)


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_style_mixing_takes_the_layers_after_a_cutoff_from_a_second_latent(probability):
    loss, batch = loss_and_batch(style_mixing=probability)
    outputs = []
    mapping = loss.G.mapping.forward

    def recording(z):
        outputs.append(mapping(z))
        return outputs[-1]

    loss.G.mapping.forward = recording
    c = torch.randn(4, 1, 12)
    drawn = set()
    for step in range(20):
        outputs.clear()
        _, ws = loss.generate(c, StepRandom(0, step, "Gmain", CPU))
        first = outputs[0]
        if probability == 0.0:
            assert torch.equal(ws, first)
            continue
        second = outputs[1]
        cutoffs = [k for k in range(1, ws.shape[1]) if torch.equal(ws[:, :k], first[:, :k])]
        cutoff = max(cutoffs)
        assert torch.equal(ws[:, cutoff:], second[:, cutoff:]) and not torch.equal(first, second)
        drawn.add(cutoff)
    if probability == 1.0:  # as StyleGAN2-ADA: any cutoff from 1 to the number of ws - 1
        assert drawn == set(range(1, ws.shape[1]))


def test_end_to_end_mapper_loss_weights():
    loss, _ = loss_and_batch()
    cfg = loss.cfg
    torch.manual_seed(4)
    pred, target, adv = torch.randn(6, 2, 12), F.normalize(torch.randn(6, 2, 12), dim=-1), torch.tensor(0.8)
    expected = 0.1 * 0.8
    for k in range(2):
        p, t = pred[:, k], target[:, k]
        mse = ((p - t) ** 2).mean()
        cos = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1))
        sim = F.normalize(p, dim=1) @ F.normalize(t, dim=1).t() / cfg.temperature
        columns = (sim.diagonal() - sim.exp().sum(dim=0).log()).mean()  # lam 0: softmax over predictions
        expected += 0.2 * mse + 0.3 * (1 - cos.mean()) - 0.5 * columns
    assert (cfg.mapper_mse, cfg.mapper_cos, cfg.mapper_contra, cfg.mapper_adv) == (0.2, 0.3, 0.5, 0.1)
    assert loss.mapper_loss(pred, target, adv, {}).item() == pytest.approx(expected.item(), rel=1e-5)


def test_generated_images_are_the_same_in_any_batch_size_and_none_for_no_conditions():
    G = tiny_G()
    c = F.normalize(torch.randn(5, 1, 12), dim=-1)
    in_twos = generate_images(G, c, "random", 0, CPU, batch_size=2)
    np.testing.assert_array_equal(generate_images(G, c, "random", 0, CPU), in_twos)
    none = generate_images(G, c[:0], "random", 0, CPU)
    assert none.shape == (0, G.img_resolution, G.img_resolution, 3) and none.dtype == np.uint8
    # random noise inputs (the fork's metrics): also the same in any batch size, drawn from the
    # seed, and not the constant maps. Caught: noise drawn per batch; random noise ignored.
    with torch.no_grad():  # StyleGAN2 starts with noise strength 0: give the noise a weight
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.5)
    in_twos = generate_images(G, c, "random", 0, CPU, batch_size=2)
    noisy = generate_images(G, c, "random", 0, CPU, noise_mode="random")
    np.testing.assert_array_equal(generate_images(G, c, "random", 0, CPU, batch_size=2, noise_mode="random"), noisy)
    assert not np.array_equal(noisy, in_twos)
    np.testing.assert_array_equal(generate_images(G, c, "random", 0, CPU, noise_mode="random"), noisy)


def test_reconstructions_are_drawn_by_G_ema(tmp_path):
    cfg = demo_generator_config()
    g_kwargs, d_kwargs = architecture(cfg, 12, 1, "max")
    G, G_ema, D = tiny_G(), tiny_G(), tiny_D(group=2)
    with torch.no_grad():
        for p in G_ema.parameters():
            p.mul_(0.5)
    save_networks(tmp_path / "run", G, G_ema, D, g_kwargs, d_kwargs, conditions=["img"])
    pred = np.random.default_rng(1).normal(size=(5, 12)).astype(np.float32)
    write_ids(tmp_path / "pred_test.h5", [4, 1, 9, 2, 7], pred=pred)
    images = reconstruct(tmp_path / "run", [tmp_path / "pred_test.h5"], tmp_path / "rec.h5", "zero", 0, CPU)
    c = F.normalize(torch.from_numpy(pred), dim=-1)[:, None]
    for net, equal in ((G_ema, True), (G, False)):
        with torch.no_grad():
            direct = net.eval()(torch.zeros(5, 8), c, noise_mode="const")
        direct = (direct * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(images, direct) is equal
    with h5py.File(tmp_path / "rec.h5") as f:
        assert f["nsd_id"][()].tolist() == [4, 1, 9, 2, 7]
