"""What the generator's layers keep for backward: bias_act keeps only its output and FIR filtering
only its filter, with the gradients (first and second order, as R1 and path length take them)
of autograd through their plain ops, and every phase of the objective unchanged."""

import pytest
import torch
import torch.nn.functional as F

from mindreader.generator import layers, networks
from mindreader.generator.distributed import StepRandom
from mindreader.generator.layers import bias_act, setup_filter, upfirdn2d
from mindreader.generator.loss import LafiteLoss, LossConfig
from mindreader.generator.networks import Discriminator, Generator
from mindreader.generator.store import architecture
from test_generator_networks import small_arch

torch.set_num_threads(1)


def reference_bias_act(x, b, act="linear", gain=1.0, clamp=None):
    """bias_act as plain autograd ops (what it computed before keeping only its output)."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2)).to(x.dtype)
    fn, act_gain = layers.ACTIVATIONS[act]
    x = fn(x) * (act_gain * gain)
    return x.clamp(-clamp, clamp) if clamp is not None else x


def reference_upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0):
    """upfirdn2d through autograd (which keeps the padded input)."""
    return layers._fir_filter(x, f, up, down, padding, gain)


def assert_close(actual, expected, rel=1e-6):
    assert actual.shape == expected.shape
    assert (actual - expected).abs().max() <= rel * expected.abs().max(), (actual - expected).abs().max()


def second_order(fn, weight, bias, z, v):
    """The R1 / path-length pattern: y = fn(conv(z, weight), bias); g = dy.v/dz with its graph;
    returns (y, g, d|g|^2 / d(weight, bias))."""
    y = fn(F.conv2d(z, weight, padding=1), bias)
    (g,) = torch.autograd.grad((y * v).sum(), z, create_graph=True)
    # a piecewise-linear fn has no second derivative: its bias then has no gradient (None)
    grads = torch.autograd.grad(g.square().sum(), [weight, bias], allow_unused=True)
    return (y, g, *(torch.zeros_like(p) if d is None else d for d, p in zip(grads, [weight, bias])))


@pytest.mark.parametrize("act, gain, clamp", [("lrelu", 1.0, 0.4), ("lrelu", 0.7, None), ("linear", 1.0, 0.4)])
def test_bias_act_has_autograds_gradients_to_second_order(act, gain, clamp):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 9, 9, generator=g, requires_grad=True)
    weight = torch.randn(5, 3, 3, 3, generator=g, requires_grad=True)
    bias = torch.randn(5, generator=g, requires_grad=True)
    v = torch.randn(2, 5, 9, 9, generator=g)
    ours = second_order(lambda x, b: bias_act(x, b, act, gain, clamp), weight, bias, z, v)
    reference = second_order(lambda x, b: reference_bias_act(x, b, act, gain, clamp), weight, bias, z, v)
    if clamp is not None:
        assert (ours[0].abs() == clamp).float().mean() > 0.2, "the clamp is not exercised"
    assert torch.equal(ours[0], reference[0])
    for a, b in zip(ours[1:], reference[1:]):
        assert_close(a, b)


@pytest.mark.parametrize(
    "up, down, padding, side",
    [
        (1, 1, (1, 2, 1, 2), 10),  # after the up-sampling convolution (upsample_conv2d)
        (1, 2, (1, 1, 1, 1), 10),  # downsample2d (D's skip)
        (1, 1, (2, 2, 2, 2), 9),  # the blur before a stride-2 convolution (D)
        (2, 1, (2, 1, 2, 1), 7),  # zero insertion and filtering
        (1, 2, (-1, 2, 0, -1), 11),  # crops, an odd side
    ],
)
def test_upfirdn2d_has_autograds_gradients_to_second_order(up, down, padding, side):
    g = torch.Generator().manual_seed(1)
    f = setup_filter([1, 3, 3, 1])
    z = torch.randn(2, 3, side, side, generator=g, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, generator=g, requires_grad=True)
    bias = torch.randn(4, generator=g, requires_grad=True)
    out = reference_upfirdn2d(torch.zeros(1, 4, side, side), f, up, down, padding, 2.0)
    v = torch.randn(2, 4, *out.shape[2:], generator=g)

    def through(filtering):
        # a nonlinearity after the filter gives the second-order terms something to differentiate
        return lambda x, b: torch.tanh(filtering(x + b.reshape(1, -1, 1, 1), f, up, down, padding, 2.0))

    ours = second_order(through(upfirdn2d), weight, bias, z, v)
    reference = second_order(through(reference_upfirdn2d), weight, bias, z, v)
    for a, b in zip(ours, reference):
        assert_close(a, b)


def saved_storages(fn, *inputs) -> list[tuple[torch.Tensor, int]]:
    """(tensor, storage bytes) of every tensor autograd keeps for the backward of fn(*inputs)."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(*inputs)
    return out, saved


def test_bias_act_keeps_only_its_output_and_upfirdn2d_only_its_filter():
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    b = torch.zeros(8, requires_grad=True)
    y, saved = saved_storages(lambda: bias_act(x, b, "lrelu", clamp=0.5))
    assert [t.untyped_storage().data_ptr() for t in saved] == [y.untyped_storage().data_ptr()]
    f = setup_filter([1, 3, 3, 1])
    _, saved = saved_storages(lambda: upfirdn2d(x, f, down=2, padding=(1, 1, 1, 1)))
    assert [t.untyped_storage().nbytes() for t in saved] == [f.untyped_storage().nbytes()]
    # a linear, unclamped bias_act is a product with a constant: nothing kept
    _, saved = saved_storages(lambda: bias_act(x, b, "linear", gain=0.5))
    assert saved == []


@pytest.fixture
def float64():
    """Float64 everywhere (the step's random draws too): the two computations then differ only by
    rounding, ~1e-15, where float32 leaves ~1e-6 after twenty layers and a second backward."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def phase_gradients(G, D, batch) -> dict[str, list[torch.Tensor]]:
    """Every phase's loss and its gradients with respect to the group it trains."""
    cfg = LossConfig(signal_weight=0.9, r1_gamma=1.0, pl_batch_shrink=2, itc=0.0, itd=10.0)
    loss = LafiteLoss(G, D, cfg)
    loss.pl_mean = torch.zeros([], dtype=torch.float32)  # path lengths are measured in float32
    out = {}
    for fn in (loss.g_main, loss.g_pl, loss.d_main, loss.d_r1):
        losses, _ = fn(batch, StepRandom(0, 0, fn.__name__, torch.device("cpu")))
        ((group, value),) = losses.items()
        params = list((G if group == "G" else D).parameters())
        grads = torch.autograd.grad(value, params, allow_unused=True)
        # None: not in the graph; a piecewise-linear op's second derivative can be an explicit zero
        out[fn.__name__] = [value] + [torch.zeros_like(p) if d is None else d for d, p in zip(grads, params)]
    return out


def test_every_phase_has_the_losses_and_gradients_of_plain_autograd(monkeypatch, float64):
    # a clamp that bites (the paper's 256 is never reached by a tiny random network)
    g_kwargs, d_kwargs = architecture(small_arch(conv_clamp=0.5), 12, 2, "max")
    torch.manual_seed(0)
    G, D = Generator(**g_kwargs), Discriminator(**d_kwargs)
    batch = {"real": torch.rand(4, 3, 16, 16) * 2 - 1, "cond": torch.randn(4, 1, 2, 12)}
    ours = phase_gradients(G, D, batch)
    for module in (layers, networks):
        monkeypatch.setattr(module, "bias_act", reference_bias_act)
    monkeypatch.setattr(layers, "upfirdn2d", reference_upfirdn2d)
    reference = phase_gradients(G, D, batch)
    for phase in reference:
        assert len(ours[phase]) == len(reference[phase]) > 10, phase
        assert ours[phase][-1].dtype == torch.float64  # the gradients (path length: loss in float32)
        for a, b in zip(ours[phase], reference[phase]):
            assert (a - b).norm() <= 1e-12 * b.norm(), phase
