"""Generator and discriminator: shapes, the modulated convolution, demodulation, per-sample
conditional logits, FIR resampling, and the one -> two condition weight copy."""

import math

import pytest
import torch
import torch.nn.functional as F

from mindreader.generator.conditioning import expand_conditions
from mindreader.generator import networks
from mindreader.generator.layers import (
    Conv2dLayer,
    downsample2d,
    modulated_conv2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)
from mindreader.generator.networks import (
    Discriminator,
    Generator,
    SynthesisLayer,
    ToRGBLayer,
    block_dtypes,
    compute_dtype,
)
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


@pytest.mark.parametrize("n_conditions, weight", [(1, 1.0), (2, 0.5)])
def test_projection_weight_is_one_for_one_condition_and_half_each_for_two(n_conditions, weight):
    D = tiny_D(n_conditions=n_conditions, group=1)
    img, c = torch.randn(4, 3, 16, 16), torch.randn(4, n_conditions, 12)
    unconditional, _ = D(img, torch.zeros_like(c))
    logits, fts = D(img, c)
    projection = sum((fts[:, k] * c[:, k]).sum(dim=1) for k in range(n_conditions))
    torch.testing.assert_close(logits, unconditional + weight * projection)


def test_one_condition_D_copied_into_two_heads_keeps_its_logit():
    D1, D2 = tiny_D(group=1), tiny_D(n_conditions=2, group=1)
    D2.load_state_dict(expand_conditions(D1.state_dict(), D2.state_dict(), 2))
    img, c = torch.randn(4, 3, 16, 16), torch.randn(4, 1, 12)
    torch.testing.assert_close(D2(img, c.repeat(1, 2, 1))[0], D1(img, c)[0])


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
        "num_fp16_res": 4, "conv_clamp": 256, "precision": "fp16", "projection": "per_sample",
        "mbstd_grouping": "consecutive",
    }
    g_kwargs, _ = architecture(cfg, c_dim=5, n_conditions=1, fusion="max")
    G = Generator(**g_kwargs)
    branch_fc = G.synthesis.b4.conv1.style.branches[0][0]
    assert branch_fc.weight_gain == pytest.approx(1.0 / math.sqrt(5))
    assert G.synthesis.noise_shapes() == {}
    assert not any("noise" in name for name, _ in G.named_parameters())
    img = G(torch.randn(3, 8), torch.randn(3, 1, 5))
    assert img.shape == (3, 3, 8, 8)


def reference_up_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """StyleGAN2-ADA's conv2d_resample(x, w, f=[1, 3, 3, 1], up=2, padding=1) with correlation,
    from its definition: zero insertion, pad (3, 2) per axis (the filter's (4 + 1) // 2 and
    (4 - 2) // 2 plus the conv's 1), 4 x 4 FIR with gain 4, unpadded 3 x 3 correlation."""
    batch, channels, height, width = x.shape
    up = torch.zeros(batch, channels, 2 * height, 2 * width, dtype=x.dtype)
    up[:, :, ::2, ::2] = x
    up = F.pad(up, [3, 2, 3, 2])
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    fir = torch.outer(taps, taps) / 64 * 4
    up = F.conv2d(up, fir.flip([0, 1]).expand(channels, 1, 4, 4), groups=channels)
    return F.conv2d(up, weight)


@pytest.mark.parametrize("side", [4, 8])
def test_upsampling_conv_equals_the_reference_on_every_pixel(side):
    torch.manual_seed(0)
    f = setup_filter([1, 3, 3, 1])
    x, weight, styles = torch.randn(3, 5, side, side), torch.randn(7, 5, 3, 3), torch.rand(3, 5) + 0.5
    for demodulate in (False, True):
        out = modulated_conv2d(x, weight, styles, up=2, demodulate=demodulate, resample_filter=f)
        for i in range(3):
            w = weight * styles[i].reshape(1, 5, 1, 1)
            if demodulate:
                w = w / w.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
            expected = reference_up_conv(x[i : i + 1], w)
            assert out[i : i + 1].shape == expected.shape == (1, 7, 2 * side, 2 * side)
            assert (out[i : i + 1] - expected).abs().max() <= 1e-5
    # The synthesis layer's up-conv (modulated, demodulated, bias, lrelu), and Conv2dLayer's.
    layer = getattr(tiny_G(resolution=2 * side).synthesis, f"b{2 * side}").conv0
    w_lat, c = torch.randn(2, 8), torch.randn(2, 1, 12)
    x = torch.randn(2, layer.in_channels, side, side)
    with torch.no_grad():
        out = layer(x, w_lat, c, noise_mode="none")
        styles = layer.style(w_lat, c)
        for i in range(2):
            w = layer.weight * styles[i].reshape(1, -1, 1, 1)
            w = w / w.square().sum(dim=[1, 2, 3], keepdim=True).add(1e-8).sqrt()
            expected = F.leaky_relu(reference_up_conv(x[i : i + 1], w) + layer.bias.reshape(1, -1, 1, 1), 0.2)
            assert (out[i : i + 1] - expected * math.sqrt(2)).abs().max() <= 1e-5
        conv = Conv2dLayer(5, 7, 3, up=2)
        x = torch.randn(2, 5, side, side)
        expected = reference_up_conv(x, conv.weight * conv.weight_gain) + conv.bias.reshape(1, -1, 1, 1)
        assert (conv(x) - expected).abs().max() <= 1e-5


def small_arch(**changes) -> dict:
    """The config's architecture keys for a 16 px network with few channels."""
    arch = {"z_dim": 8, "w_dim": 8, "resolution": 16, "branch_width": 6, "channel_base": 64, "channel_max": 8}
    arch.update(mapping_layers=2, mbstd_group_size=2, branch_lr_multiplier=0.01, noise_inputs=True)
    arch.update(num_fp16_res=4, conv_clamp=256, precision="fp16", projection="per_sample", mbstd_grouping="consecutive")
    return {**arch, **changes}


def test_reduced_precision_blocks_follow_stylegan2_ada():
    fp16, bf16, fp32 = torch.float16, torch.bfloat16, torch.float32
    resolutions = [4, 8, 16, 32, 64, 128, 256]
    # The top four resolutions of a 256 px network; never below 8 x 8; none with 0 or fp32.
    top4 = {4: fp32, 8: fp32, 16: fp32, 32: fp16, 64: fp16, 128: fp16, 256: fp16}
    assert block_dtypes(resolutions, 256, 4, "fp16") == top4
    assert block_dtypes([4, 8, 16, 32], 32, 4, "bf16") == {4: fp32, 8: bf16, 16: bf16, 32: bf16}
    assert set(block_dtypes(resolutions, 256, 0, "fp16").values()) == {fp32}
    assert set(block_dtypes(resolutions, 256, 4, "fp32").values()) == {fp32}
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        block_dtypes(resolutions, 256, 4, "fp8")
    # Only CUDA devices compute in reduced precision; the CPU keeps the parameters' dtype.
    assert compute_dtype(fp16, fp32, torch.device("cuda", 0)) == fp16
    assert compute_dtype(fp16, fp32, torch.device("cpu")) == fp32
    assert compute_dtype(fp32, fp32, torch.device("cuda", 0)) == fp32
    g_kwargs, d_kwargs = architecture(small_arch(num_fp16_res=2), 12, 1, "max")
    G, D = Generator(**g_kwargs), Discriminator(**d_kwargs)
    assert [G.synthesis.b4.dtype, G.synthesis.b8.dtype, G.synthesis.b16.dtype] == [fp32, fp16, fp16]
    assert [D.b16.dtype, D.b8.dtype] == [fp16, fp16]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_blocks_compute_in_their_dtype(monkeypatch, precision):
    """With the CPU made a reduced-precision device, the top blocks' feature maps are fp16 / bf16;
    the image, D's head, the logits and the R1 and path-length gradients are fp32; the outputs are
    close to the fp32 ones."""
    g_kwargs, d_kwargs = architecture(small_arch(num_fp16_res=2, precision=precision), 12, 1, "max")
    torch.manual_seed(0)
    G, D = Generator(**g_kwargs), Discriminator(**d_kwargs)
    z, c = torch.randn(4, 8), torch.randn(4, 1, 12)
    with torch.no_grad():
        full_img = G(z, c, noise_mode="const")
        full_logits, _ = D(full_img, c)
    monkeypatch.setattr(networks, "REDUCED_PRECISION_DEVICES", ("cpu",))
    dtypes = {}

    def record_dtype(block, args, out):
        dtypes[names[block]] = (out[0] if isinstance(out, tuple) else out).dtype

    names = {block: f"G.{name}" for name, block in G.synthesis.named_children()}
    names.update({block: f"D.{name}" for name, block in D.named_children() if name != "b4"})
    for block in names:
        block.register_forward_hook(record_dtype)
    ws = G.mapping(z).requires_grad_(True)
    img = G.synthesis(ws, c, noise_mode="const")
    real = img.detach().requires_grad_(True)
    logits, fts = D(real, c)
    reduced = networks.PRECISIONS[precision]
    assert dtypes == {"G.b4": torch.float32, "G.b8": reduced, "G.b16": reduced, "D.b16": reduced, "D.b8": reduced}
    assert img.dtype == logits.dtype == fts.dtype == torch.float32
    tolerance = 0.01 if precision == "fp16" else 0.05  # of the largest magnitude: 10 and 7 mantissa bits
    assert (img - full_img).abs().max() <= tolerance * full_img.abs().max()
    assert (logits - full_logits).abs().max() <= tolerance * full_logits.abs().max()
    (pl_grads,) = torch.autograd.grad((img * torch.randn_like(img)).sum(), ws, create_graph=True)
    (r1_grads,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    assert pl_grads.dtype == r1_grads.dtype == torch.float32
    (pl_grads.square().sum() + r1_grads.square().sum()).backward()
    grads = [p.grad for p in [*G.synthesis.b16.parameters(), *D.b16.parameters()] if p.grad is not None]
    assert len(grads) > 10 and all(g.dtype == torch.float32 and g.isfinite().all() for g in grads)


def test_conv_clamp_bounds_every_conv_and_torgb_output():
    clamp = 0.3
    g_kwargs, d_kwargs = architecture(small_arch(conv_clamp=clamp), 12, 1, "max")
    torch.manual_seed(0)
    G, D = Generator(**g_kwargs), Discriminator(**d_kwargs)
    layers = [m for m in G.modules() if isinstance(m, (SynthesisLayer, ToRGBLayer))]
    layers += [m for name, m in D.named_modules() if isinstance(m, Conv2dLayer) and not name.endswith("skip")]
    assert len(layers) == 8 + 6 and all(m.conv_clamp == clamp for m in layers)
    assert D.b16.skip.conv_clamp is None and D.b8.skip.conv_clamp is None  # as StyleGAN2-ADA
    calls = []
    hooks = [
        m.register_forward_hook(lambda m, args, kwargs, out: calls.append((m, args, kwargs, out)), with_kwargs=True)
        for m in layers
    ]
    c = torch.randn(4, 1, 12)
    with torch.no_grad():
        D(G(torch.randn(4, 8), c, noise_mode="const"), c)
        for hook in hooks:
            hook.remove()
        assert len(calls) == len(layers)
        # Each output is the same layer's unclamped output clamped to +-clamp x its gain.
        exceeded = 0
        for m, args, kwargs, out in calls:
            bound = clamp * kwargs.get("gain", 1.0)
            m.conv_clamp = None
            free = m(*args, **kwargs)
            m.conv_clamp = clamp
            torch.testing.assert_close(out, free.clamp(-bound, bound))
            exceeded += bool(free.abs().max() > bound)
    assert exceeded >= len(layers) // 2


def test_fp16_modulated_conv_is_prenormalised_against_overflow():
    """Large styles overflow fp16 sums unless weights and styles are first divided by their largest
    magnitudes (demodulation cancels the scale): the output is finite and equals the fp32 one."""
    torch.manual_seed(0)
    x, weight, styles = torch.randn(2, 64, 8, 8), torch.randn(16, 64, 3, 3), torch.rand(2, 64) * 2000 + 1000
    full = modulated_conv2d(x, weight, styles)
    half = modulated_conv2d(x.half(), weight, styles)
    assert half.dtype == torch.float16 and half.isfinite().all()
    assert (half.float() - full).abs().max() <= 0.01 * full.abs().max()


@pytest.mark.parametrize("n_conditions", [1, 2])
def test_batch_sum_projection_adds_one_scalar_over_the_batch_to_every_logit(n_conditions):
    # generator.projection batch_sum (Lafite's and the fork's D): logit_i + w * sum_j sum_k <fts_jk, c_jk>
    # with w = 1/K; per_sample: logit_i + w * sum_k <fts_ik, c_ik>. Caught: batch_sum left per sample.
    torch.manual_seed(0)
    D = tiny_D(n_conditions=n_conditions)
    img, c = torch.randn(4, 3, 16, 16), torch.randn(4, n_conditions, 12)
    with torch.no_grad():
        per_sample, fts = D(img, c)
        D.projection = "batch_sum"
        summed, same_fts = D(img, c)
    torch.testing.assert_close(same_fts, fts)
    own = (fts * c).sum(dim=(1, 2)) / n_conditions
    plain = per_sample - own
    torch.testing.assert_close(summed, plain + own.sum())
    assert not torch.allclose(summed, per_sample)
    with pytest.raises(ValueError, match="unknown projection"):
        networks.Discriminator(16, 3, 12, 1, 64, 8, projection="mean")


def test_strided_minibatch_std_groups_as_stylegan2_ada():
    # mbstd_grouping strided: StyleGAN2-ADA's layer written out (group g along the leading axis,
    # statistics over it, each sample given its group's row by repeat); consecutive: groups of
    # neighbours. Caught: strided computed as consecutive.
    from mindreader.generator.networks import MinibatchStdLayer

    x, g, f = torch.randn(8, 4, 3, 3), 2, 2
    y = x.reshape(g, -1, f, 4 // f, 3, 3)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4]).reshape(-1, f, 1, 1).repeat(g, 1, 3, 3)
    torch.testing.assert_close(MinibatchStdLayer(g, f, "strided")(x), torch.cat([x, y], dim=1))
    consecutive = MinibatchStdLayer(g, f)(x)[:, 4:, 0, 0]
    pair = x[:2].reshape(2, f, 4 // f, 3, 3)
    expected = ((pair - pair.mean(0)).square().mean(0) + 1e-8).sqrt().mean(dim=[1, 2, 3])
    torch.testing.assert_close(consecutive[0], expected)
    torch.testing.assert_close(consecutive[1], expected)
    assert not torch.allclose(MinibatchStdLayer(g, f, "strided")(x), MinibatchStdLayer(g, f)(x))
