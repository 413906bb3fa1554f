"""Lafite-style conditional StyleGAN2: mapping network, condition-aware synthesis, and a resnet
discriminator with one projection head per condition.

Conditioning follows Lafite's "structure 2": the CLIP vector does not enter the mapping network;
every synthesis and ToRGB layer passes each condition through its own two-layer FC branch, fuses
the branch outputs (max for the paper's two-head model; avg or cat as ablations) and computes the
layer's style from [w, fused] with one affine layer.

Modules are named by resolution (``synthesis.b32.conv1``) so state-dict keys read like the
architecture. Shapes: images (B, C, H, W) in [-1, 1]; conditions (B, K, c_dim), K conditions.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from mindreader.generator.layers import (
    Conv2dLayer,
    FullyConnectedLayer,
    bias_act,
    check_shape,
    modulated_conv2d,
    setup_filter,
    upsample2d,
)

FUSIONS = ("max", "avg", "cat")
NOISE_MODES = ("random", "const", "none")
# Dtype of the reduced-precision blocks for each ``precision``; fp32: no reduced precision.
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# Devices on which blocks compute in reduced precision: the CPU (tests, the demo) stays in fp32.
REDUCED_PRECISION_DEVICES = ("cuda",)


def block_dtypes(
    resolutions: list[int], img_resolution: int, num_fp16_res: int, precision: str
) -> dict[int, torch.dtype]:
    """Dtype of each block on a GPU, by resolution: ``precision`` in the top ``num_fp16_res``
    resolutions but never below 8 x 8, fp32 elsewhere (StyleGAN2-ADA's rule)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of {sorted(PRECISIONS)}")
    lowest = max((2 * img_resolution) >> num_fp16_res, 8)
    return {res: PRECISIONS[precision] if res >= lowest else torch.float32 for res in resolutions}


def compute_dtype(gpu_dtype: torch.dtype, full_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """What a block computes in on ``device``: its GPU dtype on a reduced-precision device, else
    the dtype of its parameters."""
    return gpu_dtype if gpu_dtype != torch.float32 and device.type in REDUCED_PRECISION_DEVICES else full_dtype


def channels_per_resolution(img_resolution: int, channel_base: int, channel_max: int) -> dict[int, int]:
    """Feature maps at each resolution 4 .. img_resolution: channel_base / res, at most channel_max."""
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise ValueError(f"resolution must be a power of two >= 4, got {img_resolution}")
    resolutions = [2**i for i in range(2, int(np.log2(img_resolution)) + 1)]
    return {res: max(1, min(channel_base // res, channel_max)) for res in resolutions}


class MappingNetwork(nn.Module):
    """z -> w by an MLP (unconditional: the condition enters the synthesis layers instead)."""

    def __init__(
        self,
        z_dim: int,  # latent z width
        w_dim: int,  # intermediate latent w width
        num_ws: int,  # number of w copies the synthesis network consumes
        num_layers: int = 8,  # FC layers
        lr_multiplier: float = 0.01,  # learning-rate multiplier of the FC layers
    ):
        super().__init__()
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        widths = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            layer = FullyConnectedLayer(widths[idx], widths[idx + 1], activation="lrelu", lr_multiplier=lr_multiplier)
            setattr(self, f"fc{idx}", layer)
        self.num_layers = num_layers

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        check_shape(z, [None, self.z_dim], "MappingNetwork z")
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # normalise 2nd moment
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return x.unsqueeze(1).repeat(1, self.num_ws, 1)


class ConditionedStyle(nn.Module):
    """Style of one layer from w and K conditions: per-condition FC branches, fused, then affine."""

    def __init__(
        self,
        w_dim: int,  # w width
        out_features: int,  # style width (= input channels of the modulated conv)
        c_dim: int,  # condition (CLIP embedding) width
        n_conditions: int,  # K: conditions, one branch each
        branch_width: int,  # width of each branch's two FC layers (Lafite: 512)
        fusion: str = "max",  # how K > 1 branch outputs combine: max, avg, cat
        lr_multiplier: float = 0.01,  # learning-rate multiplier of the branch FC layers
    ):
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion '{fusion}'; choose one of {FUSIONS}")
        self.c_dim = c_dim
        self.n_conditions = n_conditions
        self.fusion = fusion
        self.branches = nn.ModuleList(
            nn.Sequential(
                FullyConnectedLayer(c_dim, branch_width, activation="lrelu", lr_multiplier=lr_multiplier),
                FullyConnectedLayer(branch_width, branch_width, activation="lrelu", lr_multiplier=lr_multiplier),
            )
            for _ in range(n_conditions)
        )
        fused_width = branch_width * (n_conditions if fusion == "cat" else 1)
        self.affine = FullyConnectedLayer(w_dim + fused_width, out_features, bias_init=1.0)

    def forward(self, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        check_shape(c, [w.shape[0], self.n_conditions, self.c_dim], "ConditionedStyle c")
        outs = [branch(c[:, k]) for k, branch in enumerate(self.branches)]
        if self.fusion == "cat":
            fused = torch.cat(outs, dim=1)
        elif self.fusion == "avg":
            fused = torch.stack(outs).mean(dim=0)
        else:
            fused = torch.stack(outs).amax(dim=0)
        return self.affine(torch.cat([w, fused], dim=1))


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally upsampling) + noise + bias + lrelu."""

    def __init__(
        self,
        in_channels: int,  # input feature maps
        out_channels: int,  # output feature maps
        w_dim: int,  # w width
        resolution: int,  # output resolution
        cond_kwargs: dict,  # ConditionedStyle arguments other than w_dim and out_features
        up: int = 1,  # 2: upsample by 2 first
        use_noise: bool = True,  # add per-pixel noise scaled by a learned strength
        name: str = "",  # full name, the key of this layer's noise input
        conv_clamp: float | None = None,  # clamp the output to +-this (None: no clamp)
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.resolution = resolution
        self.up = up
        self.conv_clamp = conv_clamp
        self.use_noise = use_noise
        self.name = name
        self.style = ConditionedStyle(w_dim, in_channels, **cond_kwargs)
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, noise_mode: str = "random", noise: dict | None = None
    ) -> torch.Tensor:
        check_shape(
            x, [None, self.in_channels, self.resolution // self.up, self.resolution // self.up], f"{self.name} x"
        )
        styles = self.style(w, c)
        noise_map = None
        if self.use_noise and noise_mode != "none":
            if noise is not None:
                base = noise[self.name]
            elif noise_mode == "random":
                base = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device)
            else:
                base = self.noise_const
            noise_map = base * self.noise_strength
        x = modulated_conv2d(
            x, self.weight, styles, noise_map, up=self.up, demodulate=True, resample_filter=self.resample_filter
        )
        return bias_act(x, self.bias, "lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to RGB, without demodulation."""

    def __init__(
        self,
        in_channels: int,  # input feature maps
        img_channels: int,  # output colour channels
        w_dim: int,  # w width
        cond_kwargs: dict,  # ConditionedStyle arguments other than w_dim and out_features
        conv_clamp: float | None = None,  # clamp the output to +-this (None: no clamp)
    ):
        super().__init__()
        self.in_channels = in_channels
        self.conv_clamp = conv_clamp
        self.style = ConditionedStyle(w_dim, in_channels, **cond_kwargs)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        check_shape(x, [None, self.in_channels, None, None], "ToRGBLayer x")
        styles = self.style(w, c) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, "linear", clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip-architecture generator: (const | up-conv), conv, ToRGB.

    On a GPU the feature maps are in ``dtype`` (reduced precision at the top resolutions); the
    image and the layers' styles stay fp32.
    """

    def __init__(
        self,
        in_channels: int,  # input feature maps (0: this is the 4x4 block with a learned constant)
        out_channels: int,  # feature maps of this resolution
        w_dim: int,  # w width
        resolution: int,  # resolution of this block
        img_channels: int,  # colour channels
        cond_kwargs: dict,  # ConditionedStyle arguments other than w_dim and out_features
        use_noise: bool = True,  # noise inputs in the conv layers
        conv_clamp: float | None = None,  # clamp conv and ToRGB outputs to +-this (None: no clamp)
        dtype: torch.dtype = torch.float32,  # dtype of the feature maps on a GPU
    ):
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.dtype = dtype
        self.register_buffer("resample_filter", setup_filter([1, 3, 3, 1]))
        name = f"b{resolution}"
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(
                in_channels,
                out_channels,
                w_dim,
                resolution,
                cond_kwargs,
                up=2,
                use_noise=use_noise,
                name=f"{name}.conv0",
                conv_clamp=conv_clamp,
            )
        self.conv1 = SynthesisLayer(
            out_channels,
            out_channels,
            w_dim,
            resolution,
            cond_kwargs,
            use_noise=use_noise,
            name=f"{name}.conv1",
            conv_clamp=conv_clamp,
        )
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, cond_kwargs, conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def noise_layers(self) -> list[SynthesisLayer]:
        layers = [self.conv1] if self.in_channels == 0 else [self.conv0, self.conv1]
        return [layer for layer in layers if layer.use_noise]

    def forward(self, x, img, ws, c, noise_mode="random", noise=None):
        check_shape(ws, [None, self.num_conv + self.num_torgb, None], f"b{self.resolution} ws")
        full_dtype = self.conv1.weight.dtype
        dtype = compute_dtype(self.dtype, full_dtype, ws.device)
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, ws[:, 0], c, noise_mode, noise)
        else:
            x = self.conv0(x.to(dtype), ws[:, 0], c, noise_mode, noise)
            x = self.conv1(x, ws[:, 1], c, noise_mode, noise)
        y = self.torgb(x, ws[:, -1], c).to(full_dtype)
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws (B, num_ws, w_dim) + conditions -> image (B, C, R, R)."""

    def __init__(
        self,
        w_dim: int,  # w width
        img_resolution: int,  # output resolution (power of two)
        img_channels: int,  # colour channels
        channel_base: int,  # feature maps = channel_base / resolution ...
        channel_max: int,  # ... capped at channel_max
        cond_kwargs: dict,  # ConditionedStyle arguments other than w_dim and out_features
        use_noise: bool = True,  # noise inputs in the conv layers
        num_fp16_res: int = 0,  # reduced precision on a GPU in this many top resolutions
        conv_clamp: float | None = None,  # clamp conv and ToRGB outputs to +-this (None: no clamp)
        precision: str = "fp16",  # dtype of those resolutions: fp16, bf16 or fp32
    ):
        super().__init__()
        self.img_resolution = img_resolution
        self.channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        self.block_resolutions = sorted(self.channels)
        dtypes = block_dtypes(self.block_resolutions, img_resolution, num_fp16_res, precision)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = self.channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(
                in_channels,
                self.channels[res],
                w_dim,
                res,
                img_channels,
                cond_kwargs,
                use_noise,
                conv_clamp,
                dtypes[res],
            )
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last ToRGB's w

    def blocks(self) -> list[SynthesisBlock]:
        return [getattr(self, f"b{res}") for res in self.block_resolutions]

    def noise_shapes(self) -> dict[str, int]:
        """Name -> resolution of every noise input; ``forward(noise=...)`` takes (B, 1, res, res) maps."""
        return {layer.name: layer.resolution for block in self.blocks() for layer in block.noise_layers()}

    def forward(self, ws, c, noise_mode="random", noise=None):
        check_shape(ws, [None, self.num_ws, None], "SynthesisNetwork ws")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"unknown noise_mode '{noise_mode}'; choose one of {NOISE_MODES}")
        x = img = None
        w_idx = 0
        for block in self.blocks():
            x, img = block(x, img, ws[:, w_idx : w_idx + block.num_conv + block.num_torgb], c, noise_mode, noise)
            w_idx += block.num_conv
        return img


class Generator(nn.Module):
    """z (B, z_dim) + conditions (B, K, c_dim) -> image (B, C, R, R) in about [-1, 1]."""

    def __init__(
        self,
        z_dim: int,  # latent z width (paper: 512)
        w_dim: int,  # intermediate latent w width (paper: 512)
        img_resolution: int,  # output resolution (paper: 256)
        img_channels: int,  # colour channels
        c_dim: int,  # condition (CLIP embedding) width
        n_conditions: int,  # K conditions (1 single-head, 2 image + caption)
        fusion: str,  # how K > 1 condition branches combine: max, avg, cat
        branch_width: int,  # width of each per-layer condition branch (Lafite: 512)
        channel_base: int,  # feature maps = channel_base / resolution (paper: 32768) ...
        channel_max: int,  # ... capped at channel_max (paper: 512)
        mapping_layers: int = 8,  # FC layers of the mapping network
        mapping_lr_multiplier: float = 0.01,  # learning-rate multiplier of the mapping network
        branch_lr_multiplier: float = 0.01,  # learning-rate multiplier of the condition branches
        use_noise: bool = True,  # noise inputs in the conv layers
        num_fp16_res: int = 0,  # reduced precision on a GPU in this many top resolutions (paper: 4)
        conv_clamp: float | None = None,  # clamp conv and ToRGB outputs to +-this (paper: 256; None: off)
        precision: str = "fp16",  # dtype of those resolutions: fp16 (paper), bf16, or fp32 (none reduced)
    ):
        super().__init__()
        self.z_dim = z_dim
        self.c_dim = c_dim
        self.n_conditions = n_conditions
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        cond_kwargs = {
            "c_dim": c_dim,
            "n_conditions": n_conditions,
            "branch_width": branch_width,
            "fusion": fusion,
            "lr_multiplier": branch_lr_multiplier,
        }
        self.synthesis = SynthesisNetwork(
            w_dim,
            img_resolution,
            img_channels,
            channel_base,
            channel_max,
            cond_kwargs,
            use_noise,
            num_fp16_res,
            conv_clamp,
            precision,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier)

    def forward(self, z, c, noise_mode="random", noise=None):
        check_shape(c, [z.shape[0], self.n_conditions, self.c_dim], "Generator c")
        return self.synthesis(self.mapping(z), c, noise_mode, noise)


# Which samples form a minibatch-std group (MinibatchStdLayer).
MBSTD_GROUPINGS = ("consecutive", "strided")


class MinibatchStdLayer(nn.Module):
    """Append the std of features over groups of samples as extra channels.

    ``grouping`` "consecutive": samples 0..g-1, g..2g-1, ..., so that a global batch split across
    ranks in order forms the same groups as the whole batch in one process; "strided":
    StyleGAN2-ADA's (and Lafite's), sample i in group i mod (n / g), within each process's batch.
    """

    def __init__(
        self,
        group_size: int,  # samples per group (the batch must be divisible by min(group, batch))
        num_channels: int = 1,  # feature groups, one std channel each
        grouping: str = "consecutive",  # MBSTD_GROUPINGS
    ):
        super().__init__()
        if grouping not in MBSTD_GROUPINGS:
            raise ValueError(f"unknown minibatch-std grouping '{grouping}'; choose one of {MBSTD_GROUPINGS}")
        self.group_size = group_size
        self.num_channels = num_channels
        self.grouping = grouping

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, [None, None, None, None], "MinibatchStdLayer x")
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        if n % g:
            raise ValueError(f"batch {n} is not divisible by the minibatch-std group size {g}")
        f = self.num_channels
        member = 1 if self.grouping == "consecutive" else 0  # the axis along a group's members
        y = x.reshape(n // g, g, f, c // f, h, w) if member else x.reshape(g, n // g, f, c // f, h, w)
        y = (y - y.mean(dim=member, keepdim=True)).square().mean(dim=member)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # (n/g, f): one row per group
        y = y.repeat_interleave(g, dim=0) if member else y.repeat(g, 1)
        return torch.cat([x, y.reshape(n, f, 1, 1).repeat(1, 1, h, w)], dim=1)


class DiscriminatorBlock(nn.Module):
    """One resolution of the resnet discriminator: (fromRGB), conv, down-conv, 1x1 down skip.

    On a GPU it computes in ``dtype`` (reduced precision at the top resolutions)."""

    def __init__(
        self,
        in_channels: int,  # input feature maps (0: first block, reads the image)
        tmp_channels: int,  # feature maps inside the block
        out_channels: int,  # output feature maps (at half resolution)
        resolution: int,  # input resolution of this block
        img_channels: int,  # colour channels
        conv_clamp: float | None = None,  # clamp fromRGB and conv outputs to +-this (not the skip's)
        dtype: torch.dtype = torch.float32,  # dtype of the feature maps on a GPU
    ):
        super().__init__()
        self.in_channels = in_channels
        self.resolution = resolution
        self.dtype = dtype
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_shape(x, [None, None, self.resolution, self.resolution], f"b{self.resolution} x")
        x = x.to(compute_dtype(self.dtype, self.conv0.weight.dtype, x.device))
        if self.in_channels == 0:
            x = self.fromrgb(x)
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=math.sqrt(0.5))
        return y + x


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch std, conv, FC; a real/fake logit and one projection per condition."""

    def __init__(
        self,
        in_channels: int,  # feature maps at 4x4
        c_dim: int,  # condition width (projection heads map to it)
        n_conditions: int,  # K projection heads
        mbstd_group_size: int = 4,  # minibatch-std group size
        mbstd_num_channels: int = 1,  # minibatch-std channels
        conv_clamp: float | None = None,  # clamp the conv output to +-this (None: no clamp)
        mbstd_grouping: str = "consecutive",  # MBSTD_GROUPINGS
    ):
        super().__init__()
        self.in_channels = in_channels
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels, mbstd_grouping)
        self.conv = Conv2dLayer(
            in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp
        )
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, 1)
        self.heads = nn.ModuleList(FullyConnectedLayer(in_channels, c_dim) for _ in range(n_conditions))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(x, [None, self.in_channels, 4, 4], "b4 x")
        x = self.conv(self.mbstd(x.to(self.conv.weight.dtype)))  # always full precision
        x = self.fc(x.flatten(1))
        fts = torch.stack([head(x) for head in self.heads], dim=1)
        return self.out(x).squeeze(1), fts


# How D's projection term enters each sample's logit (Discriminator).
PROJECTIONS = ("per_sample", "batch_sum")


class Discriminator(nn.Module):
    """image (B, C, R, R) + conditions (B, K, c_dim) -> per-sample conditional logit (B,) and
    projection features (B, K, c_dim).

    Conditional logit = logit + <fts, c> with one condition, logit + 0.5 * sum_k <fts_k, c_k> with
    two (Lafite's weights: 1 / K). ``projection`` "per_sample": each sample's own product;
    "batch_sum": Lafite's and the fork's, the products summed over the whole batch and that one
    scalar added to every sample's logit. A one-condition D copied into both heads of a
    two-condition one thus gives the same logit for the same condition in both.
    """

    def __init__(
        self,
        img_resolution: int,  # input resolution (power of two)
        img_channels: int,  # colour channels
        c_dim: int,  # condition width
        n_conditions: int,  # K projection heads
        channel_base: int,  # feature maps = channel_base / resolution ...
        channel_max: int,  # ... capped at channel_max
        mbstd_group_size: int = 4,  # minibatch-std group size
        num_fp16_res: int = 0,  # reduced precision on a GPU in this many top resolutions (paper: 4)
        conv_clamp: float | None = None,  # clamp fromRGB and conv outputs to +-this (paper: 256; None: off)
        precision: str = "fp16",  # dtype of those resolutions: fp16 (paper), bf16, or fp32 (none reduced)
        projection: str = "per_sample",  # per_sample, or batch_sum (Lafite's; see the class docstring)
        mbstd_grouping: str = "consecutive",  # consecutive, or strided (StyleGAN2-ADA's; MinibatchStdLayer)
    ):
        super().__init__()
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection '{projection}'; choose one of {PROJECTIONS}")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.c_dim = c_dim
        self.n_conditions = n_conditions
        self.projection = projection
        self.projection_weight = 1.0 / n_conditions
        if img_resolution < 8:
            raise ValueError(f"the discriminator needs a resolution of at least 8, got {img_resolution}")
        channels = channels_per_resolution(img_resolution, channel_base, channel_max)
        self.block_resolutions = sorted((r for r in channels if r > 4), reverse=True)
        dtypes = block_dtypes(self.block_resolutions, img_resolution, num_fp16_res, precision)
        for res in self.block_resolutions:
            in_channels = channels[res] if res < img_resolution else 0
            block = DiscriminatorBlock(
                in_channels, channels[res], channels[res // 2], res, img_channels, conv_clamp, dtypes[res]
            )
            setattr(self, f"b{res}", block)
        self.b4 = DiscriminatorEpilogue(
            channels[4], c_dim, n_conditions, mbstd_group_size, conv_clamp=conv_clamp, mbstd_grouping=mbstd_grouping
        )

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_shape(img, [None, self.img_channels, self.img_resolution, self.img_resolution], "Discriminator img")
        check_shape(c, [img.shape[0], self.n_conditions, self.c_dim], "Discriminator c")
        x = img
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x)
        logits, fts = self.b4(x)
        projection = (fts * c.to(fts.dtype)).sum(dim=2).sum(dim=1)
        if self.projection == "batch_sum":
            projection = projection.sum().expand_as(projection)
        return logits + self.projection_weight * projection, fts
