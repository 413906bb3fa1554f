"""Contrastive terms, perturbation, crops, EMA, and the phases of the Lafite objective."""

import math

import pytest
import torch
import torch.nn.functional as F

from mindreader.generator.conditioning import combine_targets, get_variant, perturb
from mindreader.generator.distributed import StepRandom
from mindreader.generator.loss import LafiteLoss, LossConfig, contra, random_crop_resize
from mindreader.generator.training import ema_beta, update_ema
from test_generator_networks import tiny_D, tiny_G

torch.set_num_threads(1)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_contra_against_direct_formula(lam):
    torch.manual_seed(0)
    a, b, t = torch.randn(5, 7), torch.randn(5, 7), 0.5
    sim = [[F.cosine_similarity(a[i], b[j], dim=0).item() / t for j in range(5)] for i in range(5)]
    # Row i: image-side a_i against every condition; column j: condition b_j against every image.
    rows = sum(sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in range(5))) for i in range(5)) / 5
    columns = sum(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(5))) for j in range(5)) / 5
    assert contra(a, b, t, lam).item() == pytest.approx(lam * rows + (1 - lam) * columns, abs=1e-5)
    # Perfectly aligned, well separated pairs approach log(1) = 0 from below.
    assert -0.01 < contra(torch.eye(5) * 3, torch.eye(5), 0.05, lam).item() <= 0


def test_contra_exp_form_is_lafites_exp_of_the_scaled_cosine():
    # contrastive_form exp, Lafite's loss.py: sim = exp(cos / T); log(softmax(sim)_ii * T), whose
    # constant log T is left out. Caught: exp not applied, or applied to the cosine before scaling.
    torch.manual_seed(2)
    a, b, t = torch.randn(5, 7), torch.randn(5, 7), 0.5
    sim = [[math.exp(F.cosine_similarity(a[i], b[j], dim=0).item() / t) for j in range(5)] for i in range(5)]
    columns = sum(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(5))) for j in range(5)) / 5
    assert contra(a, b, t, 0.0, "exp").item() == pytest.approx(columns, abs=1e-5)
    assert contra(a, b, t, 0.0, "exp").item() != pytest.approx(contra(a, b, t, 0.0).item(), abs=1e-3)
    with pytest.raises(ValueError, match="form"):
        contra(a, b, t, 0.0, "softmax")


def test_contra_direction_matters_and_lam_is_checked():
    torch.manual_seed(1)
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    assert contra(a, b, 0.5, 0.0).item() != pytest.approx(contra(a, b, 0.5, 1.0).item(), abs=1e-3)
    assert contra(a, b, 0.5, 0.0).item() == pytest.approx(contra(b, a, 0.5, 1.0).item(), abs=1e-6)
    with pytest.raises(ValueError, match="lam"):
        contra(a, b, 0.5, 1.5)
    with pytest.raises(ValueError, match="one shape"):
        contra(a, b[:5], 0.5, 0.0)


def test_perturbation_formula():
    torch.manual_seed(0)
    c, noise = torch.randn(4, 16) * 3, torch.randn(4, 16)
    out = perturb(c, 0.25, noise)
    e = noise / noise.norm(dim=1, keepdim=True)
    expected = 0.25 * c / c.norm(dim=1, keepdim=True) + 0.75 * e
    torch.testing.assert_close(out, expected / expected.norm(dim=1, keepdim=True))
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(perturb(c, 1.0, noise), F.normalize(c, dim=1))
    with pytest.raises(ValueError):
        perturb(c, 1.5, noise)


def test_variants():
    assert get_variant("img+cap").targets == ("img", "cap") and get_variant("img+cap").fusion == "max"
    assert get_variant("img+cap").n_conditions == 2
    assert get_variant("cap").targets == ("cap",)
    # The original's use_mapped='add': both predictions, averaged into one condition.
    assert get_variant("avg").targets == ("img", "cap") and get_variant("avg").n_conditions == 1
    assert [v for v in ("img", "cap", "img+cap", "avg", "img+cap-avg", "img+cap-cat") if get_variant(v).in_paper] == [
        "img",
        "cap",
        "img+cap",
        "avg",
    ]
    with pytest.raises(ValueError, match="unknown conditioning variant"):
        get_variant("text")


def test_combine_targets_averages_into_one_condition_or_keeps_each():
    pred = torch.randn(3, 2, 5)
    torch.testing.assert_close(combine_targets(pred, 1)[:, 0], (pred[:, 0] + pred[:, 1]) / 2)
    assert combine_targets(pred, 2) is pred
    with pytest.raises(ValueError, match="cannot condition"):
        combine_targets(torch.randn(3, 3, 5), 2)


def test_crop_of_full_scale_is_identity_and_crops_move():
    x = torch.rand(2, 3, 8, 8)
    same = random_crop_resize(x, torch.ones(2), torch.rand(2, 2), 8)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=1e-5)
    corner = random_crop_resize(x, torch.full((2,), 0.5), torch.zeros(2, 2), 4)
    torch.testing.assert_close(corner, F.avg_pool2d(x[:, :, :4, :4], 1), atol=1e-5, rtol=1e-5)


def test_ema_update_and_half_life():
    G, G_ema = tiny_G(), tiny_G()
    with torch.no_grad():
        for p in G_ema.parameters():
            p.add_(1.0)
    before = [p.clone() for p in G_ema.parameters()]
    update_ema(G_ema, G, 0.75)
    for b, p, e in zip(before, G.parameters(), G_ema.parameters()):
        torch.testing.assert_close(e, 0.75 * b + 0.25 * p)
    # After ema_kimg worth of images the old weights count half.
    beta = ema_beta(batch=32, cur_nimg=10**9, ema_kimg=10, ema_rampup=None)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    assert ema_beta(32, 1000, 10, 0.05) < beta  # ramp-up: shorter half-life early
    # StyleGAN2-ADA's ramp-up at the first step of batch 4: a half-life of 4 * 0.05 = 0.2 images
    assert ema_beta(4, 4, 10, 0.05) == pytest.approx(0.5 ** (4 / 0.2))


def loss_and_batch(n_conditions=2, itc=True):
    G, D = tiny_G(n_conditions=n_conditions), tiny_D(n_conditions=n_conditions)
    torch.manual_seed(3)
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 12))
    cfg = LossConfig(signal_weight=0.9, r1_gamma=1.0, pl_batch_shrink=2)
    loss = LafiteLoss(G, D, cfg, encoder if itc else None)
    batch = {"real": torch.rand(4, 3, 16, 16) * 2 - 1, "cond": torch.randn(4, 3, n_conditions, 12)}
    return loss, batch


def test_phases_return_named_terms_and_finite_losses():
    loss, batch = loss_and_batch()
    for fn, group in ((loss.g_main, "G"), (loss.g_pl, "G"), (loss.d_main, "D"), (loss.d_r1, "D")):
        losses, terms = fn(batch, StepRandom(0, 0, fn.__name__, torch.device("cpu")))
        assert set(losses) == {group} and torch.isfinite(losses[group])
        assert all(k.startswith(("Loss/", "Scores/")) for k in terms)
    losses, terms = loss.g_main(batch, StepRandom(0, 0, "g", torch.device("cpu")))
    assert {"Loss/G/adv", "Loss/G/itc/0", "Loss/G/itc/1", "Loss/G/itd/0", "Loss/G/itd/1"} <= set(terms)
    # G's loss is the adversarial term minus each head's contrastive terms at half weight.
    expected = terms["Loss/G/adv"] - 5 * sum(terms[f"Loss/G/{n}/{k}"] for n in ("itc", "itd") for k in (0, 1))
    assert losses["G"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert loss.pl_mean.item() > 0


def test_contrastive_terms_below_unit_weight_are_in_the_loss():
    """A contrastive weight below 1 still switches its terms on, each at weight / K (K = 2)."""
    loss, batch = loss_and_batch()
    loss.cfg.itc = loss.cfg.itd = 0.5
    losses, terms = loss.g_main(batch, StepRandom(0, 0, "g", torch.device("cpu")))
    heads = sum(terms[f"Loss/G/{n}/{k}"] for n in ("itc", "itd") for k in (0, 1))
    assert losses["G"].item() == pytest.approx((terms["Loss/G/adv"] - 0.25 * heads).item(), rel=1e-5)
    losses, terms = loss.d_main(batch, StepRandom(0, 0, "d", torch.device("cpu")))
    itd = terms["Loss/D/itd/0"] + terms["Loss/D/itd/1"]
    expected = terms["Loss/D/fake"] + terms["Loss/D/real"] - 0.25 * itd
    assert losses["D"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_itc_crops_take_between_crop_min_and_crop_max_of_the_side(monkeypatch):
    loss, batch = loss_and_batch()
    loss.cfg.crop_min, loss.cfg.crop_max = 0.6, 0.8
    scales = []

    def recording(x, scale, offset, size):
        scales.append(scale)
        return random_crop_resize(x, scale, offset, size)

    monkeypatch.setattr("mindreader.generator.loss.random_crop_resize", recording)
    for step in range(5):
        loss.g_main(batch, StepRandom(0, step, "Gmain", torch.device("cpu")))
    drawn = torch.cat(scales)
    assert 0.6 <= drawn.min() and drawn.max() <= 0.8


def test_same_step_randomness_gives_the_same_loss():
    loss, batch = loss_and_batch(n_conditions=1, itc=False)
    a, _ = loss.d_main(batch, StepRandom(7, 3, "Dmain", torch.device("cpu")))
    b, _ = loss.d_main(batch, StepRandom(7, 3, "Dmain", torch.device("cpu")))
    c, _ = loss.d_main(batch, StepRandom(7, 4, "Dmain", torch.device("cpu")))
    assert a["D"].item() == b["D"].item() != c["D"].item()


def test_path_length_step_mixes_styles_as_configured():
    loss, batch = loss_and_batch(n_conditions=1, itc=False)
    seen = []
    generate = loss.generate

    def recording(c, rnd, mixing=True):
        seen.append(mixing)
        return generate(c, rnd, mixing)

    loss.generate = recording
    loss.g_pl(batch, StepRandom(0, 0, "Greg", torch.device("cpu")))
    loss.cfg.pl_style_mixing = False
    loss.g_pl(batch, StepRandom(0, 0, "Greg", torch.device("cpu")))
    assert seen == [True, False]


def e2e_loss(n_conditions, loss_input="perturbed"):
    G, D = tiny_G(n_conditions=n_conditions), tiny_D(n_conditions=n_conditions)
    torch.manual_seed(4)
    mappers = torch.nn.ModuleList(torch.nn.Linear(20, 12) for _ in range(2))
    cfg = LossConfig(signal_weight=0.9, mapper_loss_input=loss_input)
    batch = {"real": torch.rand(4, 3, 16, 16) * 2 - 1, "betas": torch.randn(4, 20), "target": torch.randn(4, 2, 12)}
    return LafiteLoss(G, D, cfg, None, mappers), batch


def test_end_to_end_mapper_loss_reads_the_conditions_that_G_sees():
    loss, batch = e2e_loss(n_conditions=2)
    c, pred = loss.conditions(batch, StepRandom(0, 0, "Gmain", torch.device("cpu")), detach_mappers=False)
    assert torch.equal(pred, c) and pred.requires_grad
    raw = torch.stack([m(batch["betas"]) for m in loss.mappers], dim=1)
    noise = StepRandom(0, 0, "Gmain", torch.device("cpu")).normal((4, 2, 12))
    torch.testing.assert_close(c, perturb(raw, 0.9, noise))
    loss.cfg.mapper_loss_input = "raw"
    _, pred = loss.conditions(batch, StepRandom(0, 0, "Gmain", torch.device("cpu")), detach_mappers=False)
    torch.testing.assert_close(pred, raw)


def test_end_to_end_avg_variant_conditions_on_the_mean_of_the_two_mappers():
    loss, batch = e2e_loss(n_conditions=1)
    c, pred = loss.conditions(batch, StepRandom(0, 0, "Gmain", torch.device("cpu")), detach_mappers=False)
    raw = torch.stack([m(batch["betas"]) for m in loss.mappers], dim=1)
    noise = StepRandom(0, 0, "Gmain", torch.device("cpu")).normal((4, 2, 12))
    assert c.shape == (4, 1, 12) and pred.shape == (4, 2, 12)
    torch.testing.assert_close(c[:, 0], perturb((raw[:, 0] + raw[:, 1]) / 2, 0.9, noise[:, 0]))
    torch.testing.assert_close(pred, perturb(raw, 0.9, noise))
    losses, terms = loss.g_main(batch, StepRandom(0, 1, "Gmain", torch.device("cpu")))
    assert {"G", "M"} == set(losses) and "Loss/M/mse/1" in terms


def test_end_to_end_raw_perturbation_mixes_the_noise_into_the_mappers_raw_outputs():
    # e2e.perturb raw, the fork's loss.py: txt = mapper(fmri); e = randn / |randn|;
    # txt_ = (1 - 0.1) * txt + 0.1 * e; txt_ /= |txt_|. Caught: the predictions normalised first.
    loss, batch = e2e_loss(n_conditions=2)
    loss.cfg.mapper_perturb = "raw"
    c, pred = loss.conditions(batch, StepRandom(0, 0, "Gmain", torch.device("cpu")), detach_mappers=False)
    raw = torch.stack([m(batch["betas"]) for m in loss.mappers], dim=1)
    noise = StepRandom(0, 0, "Gmain", torch.device("cpu")).normal((4, 2, 12))
    mixed = 0.9 * raw + 0.1 * noise / noise.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(c, mixed / mixed.norm(dim=-1, keepdim=True))
    assert torch.equal(pred, c)
    assert not torch.allclose(c, perturb(raw, 0.9, noise), atol=1e-3)


def test_end_to_end_float64_mappers_predict_perturb_and_score_in_float64():
    # e2e.mapper_dtype float64 (the fork's fmri_vec.to(torch.double)): the betas reach the mappers
    # in float64, noise and perturbation follow, G sees the conditions in float32. Caught: the
    # betas left in float32 (a float64 Linear refuses them) or the conditions handed to G in float64.
    loss, batch = e2e_loss(n_conditions=2)
    loss.mappers.double()
    c, pred = loss.conditions(batch, StepRandom(0, 0, "Gmain", torch.device("cpu")), detach_mappers=False)
    assert pred.dtype == torch.float64 and c.dtype == torch.float32
    raw = torch.stack([m(batch["betas"].double()) for m in loss.mappers], dim=1)
    noise = StepRandom(0, 0, "Gmain", torch.device("cpu")).normal((4, 2, 12)).double()
    torch.testing.assert_close(pred, perturb(raw, 0.9, noise))
    losses, terms = loss.g_main(batch, StepRandom(0, 1, "Gmain", torch.device("cpu")))
    assert losses["M"].dtype == torch.float64 and torch.isfinite(losses["M"])


def test_separate_mapper_phase_is_the_forks_mapper_objective_on_a_forward_of_its_own():
    # e2e.mapper_phase separate, the fork's Mmain: G's main phase trains G alone; the mappers'
    # phase draws its own conditions, runs G and D again and returns
    # 0.1 * softplus(-D(G(c))) + sum_k 0.2 * MSE + 0.3 * (1 - cos) - 0.5 * contra, with contra
    # log softmax over the column of the similarity matrix (lam 0). Caught: the mapper loss left
    # in G's phase, the adversarial term dropped, a sign of the contrastive term flipped.
    loss, batch = e2e_loss(n_conditions=2)
    loss.cfg.mapper_phase = "separate"
    assert set(loss.g_main(batch, StepRandom(0, 0, "Gmain", torch.device("cpu")))[0]) == {"G"}
    losses, terms = loss.m_main(batch, StepRandom(0, 0, "Mmain", torch.device("cpu")))
    assert set(losses) == {"M"} and "Loss/M/contra/1" in terms
    again = StepRandom(0, 0, "Mmain", torch.device("cpu"))
    raw = torch.stack([m(batch["betas"]) for m in loss.mappers], dim=1)
    noise = again.normal((4, 2, 12))
    mixed = 0.9 * F.normalize(raw, dim=-1) + 0.1 * F.normalize(noise, dim=-1)
    c = mixed / mixed.norm(dim=-1, keepdim=True)
    img, _ = loss.generate(c, again)
    expected = 0.1 * F.softplus(-loss.D(img, c)[0]).mean()
    for k in range(2):
        p, t = c[:, k], batch["target"][:, k]
        sim = F.normalize(p, dim=1) @ F.normalize(t, dim=1).t() / 0.5
        column = (sim.diagonal() - sim.exp().sum(dim=0).log()).mean()
        cos = (p * t).sum(dim=1) / (p.norm(dim=1) * t.norm(dim=1))
        expected = expected + 0.2 * (p - t).square().mean() + 0.3 * (1 - cos.mean()) - 0.5 * column
    torch.testing.assert_close(losses["M"], expected)


@pytest.mark.parametrize("train_z", ["random", "zero"])
def test_style_mixing_takes_a_random_latent_whatever_the_training_z(train_z):
    # The fork trains with z = 0 and mixes randn_like(z) into the layers after a random cutoff
    # (probability style_mixing): with mixing always on, the ws before the cutoff are mapping(z)
    # (zero z: mapping(0)) and the later ones mapping(z2) of a standard-normal z2. Caught: the
    # mixing latent zeroed with z (train_z zero then mixed nothing).
    loss, batch = loss_and_batch(n_conditions=1, itc=False)
    loss.cfg.train_z, loss.cfg.style_mixing = train_z, 1.0
    c = batch["cond"][:, 0]
    rnd = StepRandom(0, 0, "Gmain", torch.device("cpu"))
    _, ws = loss.generate(c, rnd)
    again = StepRandom(0, 0, "Gmain", torch.device("cpu"))
    z = again.normal((4, loss.G.z_dim))
    z2 = again.normal((4, loss.G.z_dim))
    cutoff = again.shared_integer(1, ws.shape[1]) if again.shared_uniform() < 1.0 else None
    first = loss.G.mapping(torch.zeros_like(z) if train_z == "zero" else z)
    torch.testing.assert_close(ws[:, :cutoff], first[:, :cutoff])
    torch.testing.assert_close(ws[:, cutoff:], loss.G.mapping(z2)[:, cutoff:])
    assert not torch.allclose(ws[:, -1], first[:, -1])


def test_lafites_batch_crop_is_one_integer_crop_resized_bicubic_or_a_white_pad(monkeypatch):
    # itc_crop_mode per_batch, Lafite's full_preprocess written out: cut = randint(int(0.5 * side),
    # side), left and top = randint(0, side - cut), the crop of every image resized bicubic; an
    # image below CLIP's side padded with white at random offsets. Caught: per-sample crops.
    from mindreader.generator.loss import batch_crop_resize

    x = torch.rand(3, 3, 16, 16)
    got = batch_crop_resize(x, 8, 0.5, StepRandom(0, 2, "Gmain", torch.device("cpu")))
    again = StepRandom(0, 2, "Gmain", torch.device("cpu"))
    cut = again.shared_integer(8, 16)
    left, top = again.shared_integer(0, 16 - cut), again.shared_integer(0, 16 - cut)
    crop = x[:, :, top : top + cut, left : left + cut]
    torch.testing.assert_close(got, F.interpolate(crop, (8, 8), mode="bicubic", align_corners=False))
    small = batch_crop_resize(x, 20, 0.5, StepRandom(0, 2, "Gmain", torch.device("cpu")))
    again = StepRandom(0, 2, "Gmain", torch.device("cpu"))
    left, top = again.shared_integer(0, 4), again.shared_integer(0, 4)
    assert small.shape == (3, 3, 20, 20) and torch.equal(small[:, :, top : top + 16, left : left + 16], x)
    assert (small.sum() - x.sum()).item() == pytest.approx(3 * 3 * (400 - 256))  # the pad is white
    from mindreader.generator import loss as loss_module

    calls = []
    monkeypatch.setattr(loss_module, "batch_crop_resize", lambda *a: calls.append(a) or batch_crop_resize(*a))
    loss, batch = loss_and_batch()
    loss.cfg.crop_mode = "per_batch"
    losses, terms = loss.g_main(batch, StepRandom(0, 0, "Gmain", torch.device("cpu")))
    assert torch.isfinite(losses["G"]) and "Loss/G/itc/0" in terms and len(calls) == 1
    with pytest.raises(ValueError, match="itc crop mode"):
        LossConfig(signal_weight=0.9, crop_mode="per_image")
