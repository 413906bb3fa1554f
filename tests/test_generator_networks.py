"""Generator and discriminator: shapes, the modulated convolution, demodulation, per-sample
conditional logits, FIR resampling, and the one -> two condition weight copy."""

import math

import pytest
import torch
import torch.nn.functional as F

from mindreader.generator.conditioning import expand_conditions
from mindreader.generator.layers import downsample2d, modulated_conv2d, setup_filter, upfirdn2d, upsample2d
from mindreader.generator.networks import Discriminator, Generator
from mindreader.generator.store import architecture

torch.set_num_threads(1)


def tiny_G(resolution=16, n_conditions=1, fusion="max", c_dim=12):
    torch.manual_seed(0)
    return Generator(
        z_dim=8,
        w_dim=8,
        img_resolution=resolution,
        img_channels=3,
        c_dim=c_dim,
        n_conditions=n_conditions,
        fusion=fusion,
        branch_width=6,
        channel_base=64,
        channel_max=8,
        mapping_layers=2,
    )


def tiny_D(resolution=16, n_conditions=1, c_dim=12, group=2):
    torch.manual_seed(1)
    return Discriminator(resolution, 3, c_dim, n_conditions, channel_base=64, channel_max=8, mbstd_group_size=group)


@pytest.mark.parametrize("resolution", [8, 16, 32])
@pytest.mark.parametrize("n_conditions", [1, 2])
def test_shapes_at_several_resolutions(resolution, n_conditions):
    G, D = tiny_G(resolution, n_conditions), tiny_D(resolution, n_conditions)
    z, c = torch.randn(4, 8), torch.randn(4, n_conditions, 12)
    img = G(z, c)
    assert img.shape == (4, 3, resolution, resolution)
    logits, fts = D(img, c)
    assert logits.shape == (4,) and fts.shape == (4, n_conditions, 12)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2


def test_wrong_condition_shape_is_named():
    G = tiny_G()
    with pytest.raises(ValueError, match="Generator c"):
        G(torch.randn(2, 8), torch.randn(2, 2, 12))


def test_modulated_conv_equals_explicit_per_sample_convolution():
    torch.manual_seed(0)
    x, weight, styles = torch.randn(3, 5, 9, 9), torch.randn(7, 5, 3, 3), torch.randn(3, 5)
    for demodulate in (False, True):
        out = modulated_conv2d(x, weight, styles, demodulate=demodulate)
        for i in range(3):
            w = weight * styles[i].reshape(1, 5, 1, 1)
            if demodulate:
                w = w / w.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
            expected = F.conv2d(x[i : i + 1], w, padding=1)
            torch.testing.assert_close(out[i : i + 1], expected, atol=1e-5, rtol=1e-5)


def test_demodulation_gives_unit_variance_for_unit_variance_input():
    torch.manual_seed(0)
    x = torch.randn(4, 32, 64, 64)
    out = modulated_conv2d(x, torch.randn(16, 32, 3, 3), torch.rand(4, 32) * 3 + 0.1, demodulate=True)
    var = out[:, :, 1:-1, 1:-1].var(dim=[2, 3])  # interior: zero padding lowers the border's variance
    assert torch.allclose(var, torch.ones_like(var), atol=0.08)
    undemodulated = modulated_conv2d(x, torch.randn(16, 32, 3, 3), torch.rand(4, 32) * 3 + 0.1, demodulate=False)
    assert undemodulated.var() > 10


def test_fir_resampling_keeps_constant_images():
    f = setup_filter([1, 3, 3, 1])
    x = torch.full((1, 2, 8, 8), 3.0)
    up, down = upsample2d(x, f), downsample2d(x, f)
    assert up.shape == (1, 2, 16, 16) and down.shape == (1, 2, 4, 4)
    torch.testing.assert_close(up[:, :, 2:-2, 2:-2], torch.full_like(up[:, :, 2:-2, 2:-2], 3.0))
    torch.testing.assert_close(down[:, :, 1:-1, 1:-1], torch.full_like(down[:, :, 1:-1, 1:-1], 3.0))


def test_transposed_upsampling_equals_zero_insertion_and_filtering():
    f = setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(upsample2d(x, f), upfirdn2d(x, f, up=2, padding=(2, 1, 2, 1), gain=4))
    # The filter taps land where a direct 1-D computation puts them (odd/even phases 1/4, 3/4).
    row = upsample2d(torch.tensor([[[[0.0, 4.0, 0.0]]]]).repeat(1, 1, 3, 1), f)[0, 0, 2]
    torch.testing.assert_close(row, torch.tensor([0.0, 1.0, 3.0, 3.0, 1.0, 0.0]))


def test_conditional_logit_is_per_sample():
    D = tiny_D(n_conditions=2, group=1)
    img, c = torch.randn(4, 3, 16, 16), torch.randn(4, 2, 12)
    before, fts = D(img, c)
    changed = c.clone()
    changed[2] = torch.randn(2, 12)
    after, _ = D(img, changed)
    assert torch.equal(before[[0, 1, 3]], after[[0, 1, 3]])
    assert not torch.isclose(before[2], after[2])
    unconditional = before - 0.5 * (fts * c).sum(dim=[1, 2])
    torch.testing.assert_close(after - 0.5 * (fts * changed).sum(dim=[1, 2]), unconditional)


@pytest.mark.parametrize("fusion", ["max", "avg", "cat"])
def test_weight_copy_from_one_to_two_conditions(fusion):
    G1, D1 = tiny_G(), tiny_D()
    G2, D2 = tiny_G(n_conditions=2, fusion=fusion), tiny_D(n_conditions=2)
    G2.load_state_dict(expand_conditions(G1.state_dict(), G2.state_dict(), 2))
    D2.load_state_dict(expand_conditions(D1.state_dict(), D2.state_dict(), 2))
    z, c = torch.randn(4, 8), torch.randn(4, 1, 12)
    torch.testing.assert_close(
        G2(z, c.repeat(1, 2, 1), noise_mode="const"), G1(z, c, noise_mode="const"), atol=1e-5, rtol=1e-5
    )
    img = torch.randn(4, 3, 16, 16)
    _, fts1 = D1(img, c)
    _, fts2 = D2(img, c.repeat(1, 2, 1))
    torch.testing.assert_close(fts2, fts1.repeat(1, 2, 1))
    assert torch.equal(
        G2.synthesis.b8.conv0.style.branches[1][0].weight, G1.synthesis.b8.conv0.style.branches[0][0].weight
    )


def test_weight_copy_rejects_an_incompatible_network():
    G1, G2 = tiny_G(c_dim=12), tiny_G(n_conditions=2, c_dim=10)
    with pytest.raises(ValueError, match="cannot initialise"):
        expand_conditions(G1.state_dict(), G2.state_dict(), 2)


def test_architecture_passes_the_branch_lr_multiplier_and_the_noise_switch():
    cfg = {
        "z_dim": 8, "w_dim": 8, "resolution": 8, "branch_width": 6, "channel_base": 64, "channel_max": 16,
        "mapping_layers": 2, "mbstd_group_size": 2, "branch_lr_multiplier": 1.0, "noise_inputs": False,
    }
    g_kwargs, _ = architecture(cfg, c_dim=5, n_conditions=1, fusion="max")
    G = Generator(**g_kwargs)
    branch_fc = G.synthesis.b4.conv1.style.branches[0][0]
    assert branch_fc.weight_gain == pytest.approx(1.0 / math.sqrt(5))
    assert G.synthesis.noise_shapes() == {}
    assert not any("noise" in name for name, _ in G.named_parameters())
    img = G(torch.randn(3, 8), torch.randn(3, 1, 5))
    assert img.shape == (3, 3, 8, 8)
