"""StyleGAN2 building blocks in plain PyTorch: FIR resampling, bias + activation, equalised
fully-connected and convolution layers, and the modulated convolution.

Equalised learning rate: weights are stored at unit scale and multiplied by He's constant at run
time, so Adam's per-parameter step sizes are comparable across layers; ``lr_multiplier`` scales
both the stored init and the run-time gain, which divides a layer's effective learning rate.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
# Activation name -> (function, gain that keeps unit variance after it).
ACTIVATIONS = {
    "linear": (lambda x: x, 1.0),
    "lrelu": (lambda x: F.leaky_relu(x, LRELU_SLOPE), math.sqrt(2.0)),
}


def check_shape(tensor: torch.Tensor, expected: list, name: str = "input") -> None:
    """Raise if ``tensor`` does not have ``expected`` shape (None matches any size)."""
    if tensor.ndim != len(expected) or any(e is not None and s != e for s, e in zip(tensor.shape, expected)):
        raise ValueError(f"{name}: expected shape {expected} (None = any), got {list(tensor.shape)}")


def check_activation(name: str) -> None:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose one of {sorted(ACTIVATIONS)}")


def bias_act(
    x: torch.Tensor, b: torch.Tensor | None, act: str = "linear", gain: float = 1.0, clamp: float | None = None
) -> torch.Tensor:
    """Add a per-channel bias (dim 1), apply ``act``, scale by its gain times ``gain``, clamp."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2)).to(x.dtype)
    gain = ACTIVATIONS[act][1] * gain
    if act == "linear" and clamp is None:
        return x * gain  # keeps nothing for backward
    return _ActClamp.apply(x, act, gain, clamp)


class _ActClamp(torch.autograd.Function):
    """act(x) * gain, clamped to +-clamp, keeping only its output for backward, as StyleGAN2-ADA's
    bias_act does. Autograd through the three ops would keep the activation's input and the
    clamp's input: two more activation-sized tensors in every layer (the output is kept anyway,
    as the next layer's input). The gradient is made of differentiable ops of the incoming one, so
    R1 and path length differentiate it again; it equals autograd's but where the clamp's input is
    exactly +-clamp (autograd passes the gradient there, this does not)."""

    @staticmethod
    def forward(ctx, x, act: str, gain: float, clamp: float | None):
        y = ACTIVATIONS[act][0](x) * gain
        if clamp is not None:
            y = y.clamp(-clamp, clamp)
        ctx.save_for_backward(y)
        ctx.act, ctx.gain, ctx.clamp = act, gain, clamp
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved_tensors
        # the ops autograd would run (clamp, gain, leaky ReLU), their conditions read off y
        if ctx.clamp is not None:
            dy = torch.where((y > -ctx.clamp) & (y < ctx.clamp), dy, 0.0)
        dx = dy * ctx.gain
        if ctx.act == "lrelu":
            dx = torch.where(y > 0, dx, dx * LRELU_SLOPE)
        return dx, None, None, None


def setup_filter(taps: list[float]) -> torch.Tensor:
    """Separable 2-D FIR filter from 1-D ``taps``, normalised to unit DC gain."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    gain: float = 1.0,
) -> torch.Tensor:
    """Upsample by zero insertion, pad (x0, x1, y0, y1; negative crops), FIR filter, subsample.

    ``x`` is (B, C, H, W) and ``f`` a constant 2-D filter (no gradient) applied to every channel alone.
    """
    check_shape(x, [None, None, None, None], "upfirdn2d x")
    return _UpFirDn2d.apply(x, f, up, down, tuple(padding), gain)


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d keeping nothing for backward but the filter: its gradient is the transposed
    filtering (StyleGAN2-ADA's), itself an upfirdn2d, so it differentiates again. Autograd
    through the padding and the depthwise convolution would keep the padded input, an
    activation-sized copy, for the filter's gradient, which a constant filter does not need."""

    @staticmethod
    def forward(ctx, x, f, up: int, down: int, padding: tuple[int, int, int, int], gain: float):
        ctx.save_for_backward(f)
        ctx.up, ctx.down, ctx.padding, ctx.gain, ctx.in_size = up, down, padding, gain, x.shape[2:]
        return _fir_filter(x, f, up, down, padding, gain)

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        px0, _, py0, _ = ctx.padding
        (in_h, in_w), (out_h, out_w) = ctx.in_size, dy.shape[2:]
        fh, fw = f.shape
        up, down = ctx.up, ctx.down
        padding = (
            fw - px0 - 1,
            in_w * up - out_w * down + px0 - up + 1,
            fh - py0 - 1,
            in_h * up - out_h * down + py0 - up + 1,
        )
        return _UpFirDn2d.apply(dy, f.flip([0, 1]), down, up, padding, ctx.gain), None, None, None, None, None


def _fir_filter(x: torch.Tensor, f: torch.Tensor, up: int, down: int, padding: tuple, gain: float) -> torch.Tensor:
    """upfirdn2d's computation (differentiable by autograd, which keeps the padded input)."""
    batch, channels, height, width = x.shape
    if up > 1:
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    px0, px1, py0, py1 = padding
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    # conv2d correlates, so flip the filter to convolve; gain per dimension for up/down.
    weight = (f * (gain ** (f.ndim / 2))).flip([0, 1]).to(x.dtype)
    weight = weight[None, None].repeat(channels, 1, 1, 1)
    return F.conv2d(x, weight, groups=channels, stride=down)


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """FIR upsampling: output (B, C, H * up, W * up).

    Equals ``upfirdn2d(x, f, up, padding=((fw + up - 1) // 2, (fw - up) // 2) per side, gain=up^2)``
    but as a strided transposed convolution, which skips the products with inserted zeros.
    """
    fw = f.shape[-1]
    if (fw - up) % 2:
        p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
        return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up**2)
    channels = x.shape[1]
    weight = (f * up**2).to(x.dtype)[None, None].repeat(channels, 1, 1, 1)
    return F.conv_transpose2d(x, weight, stride=up, padding=(fw - up) // 2, groups=channels)


def upsample_conv2d(x: torch.Tensor, weight: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """FIR-upsample ``x`` (B, C_in, H, W) by ``up``, then correlate with ``weight`` (C_out, C_in, k, k),
    k odd: output (B, C_out, H * up, W * up).

    Defined as zero insertion, padding (p0 + k // 2, p1 + k // 2) on each axis with
    (p0, p1) = ((fw + up - 1) // 2, (fw - up) // 2), the FIR filter ``f`` with gain up^2, then an
    unpadded correlation with ``weight`` (``F.conv2d``'s convention, no flip): StyleGAN2-ADA's
    ``conv2d_resample(x, w, f, up, padding=k // 2)`` with ``flip_weight=True``. So the border pixels
    see the filter's tails, not zero padding. StyleGAN2-ADA's own up-sampling layers convolve
    (``flip_weight=False``): their weights equal ours flipped over both spatial axes.

    Computed as StyleGAN2-ADA does: a transposed convolution with stride ``up`` (only the products
    with the non-zero input samples; about 2x faster than filtering first at the demo's shapes
    on a CPU, bench/generator.py), then the FIR filter with the padding left over.
    """
    kernel = weight.shape[-1]
    fw = f.shape[-1]
    if kernel % 2 == 0:
        raise ValueError(f"upsample_conv2d: odd kernel expected, got {kernel}")
    # Padding of the upsampled image (the definition) less what the transposed convolution adds.
    p0 = (fw + up - 1) // 2 + kernel // 2 - (kernel - 1)
    p1 = (fw - up) // 2 + kernel // 2 - (kernel - up)
    # A transposed convolution can only crop: it takes what both sides crop.
    crop = max(min(-p0, -p1), 0)
    # Transposed convolution convolves (scatters the kernel): flip to correlate with ``weight``.
    x = F.conv_transpose2d(x, weight.flip([2, 3]).transpose(0, 1), stride=up, padding=crop)
    p0, p1 = p0 + crop, p1 + crop
    return upfirdn2d(x, f, padding=(p0, p1, p0, p1), gain=up**2)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    """FIR anti-aliased downsampling: output (B, C, H / down, W / down)."""
    fw = f.shape[-1]
    p0, p1 = (fw - down + 1) // 2, (fw - down) // 2
    return upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))


class FullyConnectedLayer(nn.Module):
    """y = act(x W^T * gain + b * lr_multiplier), weight stored at unit scale."""

    def __init__(
        self,
        in_features: int,  # input width
        out_features: int,  # output width
        bias: bool = True,  # learn an additive bias
        activation: str = "linear",  # "linear" or "lrelu"
        lr_multiplier: float = 1.0,  # learning-rate multiplier of this layer (0.01 in mapping nets)
        bias_init: float = 0.0,  # initial bias value (1 for style affines: start at identity)
    ):
        super().__init__()
        check_activation(activation)
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, [None, self.in_features], "FullyConnectedLayer x")
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain if self.bias is not None else None
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


class Conv2dLayer(nn.Module):
    """Equalised convolution with optional FIR up/downsampling by 2 (discriminator layers)."""

    def __init__(
        self,
        in_channels: int,  # input channels
        out_channels: int,  # output channels
        kernel_size: int,  # square kernel side (odd)
        bias: bool = True,  # learn an additive bias
        activation: str = "linear",  # "linear" or "lrelu"
        up: int = 1,  # 2: FIR-upsample and convolve (upsample_conv2d)
        down: int = 1,  # 2: FIR-blur and convolve with stride 2 (not with up)
        resample_filter: tuple = (1, 3, 3, 1),  # FIR taps of the resampling filter
        conv_clamp: float | None = None,  # clamp outputs to +-this (None: no clamp)
    ):
        super().__init__()
        check_activation(activation)
        if up not in (1, 2) or down not in (1, 2) or up * down > 2:
            raise ValueError(f"up and down must be 1 or 2, not both 2, got up={up}, down={down}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.up = up
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", setup_filter(list(resample_filter)))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size**2)

    def forward(self, x: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
        check_shape(x, [None, self.in_channels, None, None], "Conv2dLayer x")
        w = self.weight.to(x.dtype) * self.weight_gain
        if self.up > 1:
            x = upsample_conv2d(x, w, self.resample_filter, self.up)
        elif self.down > 1 and self.kernel_size > 1:
            # Blur with the padding that the strided kernel needs, then convolve with stride 2.
            fw = self.resample_filter.shape[-1]
            p = (fw - self.down) + (self.kernel_size - 1)
            x = upfirdn2d(x, self.resample_filter, padding=((p + 1) // 2, p // 2, (p + 1) // 2, p // 2))
            x = F.conv2d(x, w, stride=self.down)
        else:
            if self.down > 1:
                x = downsample2d(x, self.resample_filter, self.down)
            x = F.conv2d(x, w, padding=self.kernel_size // 2)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, self.activation, gain=gain, clamp=clamp)

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, k={self.kernel_size}, up={self.up}, down={self.down}, act={self.activation}"


def modulated_conv2d(
    x: torch.Tensor,  # (B, C_in, H, W) input
    weight: torch.Tensor,  # (C_out, C_in, k, k) stored weight (already scaled by its gain)
    styles: torch.Tensor,  # (B, C_in) per-sample scale of each input channel
    noise: torch.Tensor | None = None,  # (B, 1, H', W') added to the output, or None
    up: int = 1,  # 2: FIR-upsample the input first (upsample_conv2d: correlation with ``weight``)
    demodulate: bool = True,  # rescale each sample's output channels to unit expected variance
    resample_filter: torch.Tensor | None = None,  # FIR filter for up > 1
) -> torch.Tensor:
    """StyleGAN2's modulated convolution, computed as StyleGAN2-ADA trains it: scale the input
    channels by the styles, convolve with the shared weight, scale the output channels by the
    demodulation coefficients. Equal to convolving each sample with its own modulated weight,
    without materialising the (B, C_out, C_in, k, k) weights or a batch-grouped convolution
    (1.3x faster over G's layers at the demo's scale on a CPU; bench/generator.py).

    In fp16, demodulated weights and styles are first divided by their largest magnitudes (per
    output channel, per sample), as StyleGAN2-ADA does against overflow: demodulation cancels
    the scale, so only the rounding changes."""
    batch, in_channels, _, _ = x.shape
    kh = weight.shape[-1]
    check_shape(x, [None, weight.shape[1], None, None], "modulated_conv2d x")
    check_shape(styles, [batch, in_channels], "modulated_conv2d styles")
    if x.dtype == torch.float16 and demodulate:
        weight = weight / (math.sqrt(in_channels * kh * kh) * weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
    x = x * styles.reshape(batch, -1, 1, 1).to(x.dtype)
    if up > 1:
        x = upsample_conv2d(x, weight.to(x.dtype), resample_filter, up)
    else:
        x = F.conv2d(x, weight.to(x.dtype), padding=kh // 2)
    if demodulate:
        # |w_b|^2 per output channel = sum_i s_bi^2 sum_k w_oik^2.
        coefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
        x = x * coefs.reshape(batch, -1, 1, 1).to(x.dtype)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x
