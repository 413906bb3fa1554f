"""Benchmark of the generator at the demo config's scale: training throughput (kimg/s) of the
full Lafite objective against a plain conditional StyleGAN2 step (no contrastive terms, no
path-length regularisation) with the same networks, and generation throughput (images/s) of
batched generation against one image at a time.

    .venv/bin/python bench/generator.py [--steps 20] [--threads 2] [--device cpu] [--paper]

--paper uses the schema's paper-scale defaults (256 px, full channels): meant for a GPU.
The CLIP image tower is the demo CLIP's architecture with random weights (same cost as trained).
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from mindreader.clip.demo import build_demo_clip
from mindreader.clip.models import preprocess_images
from mindreader.generator.data import TrainingSet
from mindreader.generator.layers import modulated_conv2d, setup_filter, upfirdn2d
from mindreader.generator.networks import Generator
from mindreader.generator.reconstruct import generate_images
from mindreader.generator.stages import build, loss_config, train_config
from mindreader.generator.training import Trainer

REPO = Path(__file__).resolve().parents[1]


class DemoClipImages(torch.nn.Module):
    """The demo CLIP's image tower with its preprocessing, random weights, frozen."""

    def __init__(self, demo_cfg: dict):
        super().__init__()
        self.model, _ = build_demo_clip(demo_cfg)
        self.model.requires_grad_(False).eval()
        self.cfg = self.model.visual.preprocess_cfg
        self.image_size = int(demo_cfg["image_size"])

    def forward(self, x):
        cfg = self.cfg
        return self.model.encode_image(
            preprocess_images(x, cfg["size"], cfg["mean"], cfg["std"], cfg["interpolation"], cfg["resize_mode"])
        )


def schema_defaults(schema: dict) -> dict:
    out = {}
    for key, spec in schema["properties"].items():
        out[key] = schema_defaults(spec) if spec.get("type") == "object" else spec.get("default")
    return out


def random_set(n: int, n_conditions: int, c_dim: int, resolution: int) -> TrainingSet:
    g = torch.Generator().manual_seed(0)
    return TrainingSet(
        images=torch.randint(0, 256, (n, 3, resolution, resolution), dtype=torch.uint8, generator=g),
        image_index=torch.arange(n),
        nsd_id=torch.arange(n).numpy(),
        cond=torch.randn(n, 1, n_conditions, c_dim, generator=g),
    )


def time_training(cfg: dict, data: TrainingSet, encoder, device, steps: int, warmup: int = 2) -> tuple[float, float]:
    """(wall, CPU-time) kimg/s of ``steps`` training steps after ``warmup`` steps (two-condition
    fine-tuning shape)."""
    G, D, _, _ = build(cfg, data.cond.shape[-1], data.cond.shape[2], "max", 0)
    with tempfile.TemporaryDirectory() as tmp:
        schedule = train_config(cfg, 1.0, 0, initialised=False)
        trainer = Trainer(G, D, data, loss_config(cfg, 0.9), schedule, tmp, device, encoder=encoder)
        for step in range(warmup):
            trainer.train_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, cpu = time.perf_counter(), time.process_time()
        for step in range(warmup, warmup + steps):
            trainer.train_step(step)
        if device.type == "cuda":
            torch.cuda.synchronize()
    kimg = steps * cfg["batch"] / 1000
    return kimg / (time.perf_counter() - start), kimg / (time.process_time() - cpu)


def synthesis_layers(G: Generator) -> list:
    return [layer for block in G.synthesis.blocks() for layer in (getattr(block, "conv0", None), block.conv1) if layer]


def time_generation(G, c: torch.Tensor, device, batch_size: int) -> tuple[float, float]:
    """(wall, CPU-time) images/s of G_ema generation in batches of ``batch_size``."""
    generate_images(G, c[:batch_size], "random", 0, device, batch_size)  # warm-up
    start, cpu = time.perf_counter(), time.process_time()
    generate_images(G, c, "random", 0, device, batch_size)
    return len(c) / (time.perf_counter() - start), len(c) / (time.process_time() - cpu)


def grouped_modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Baseline: the modulated, demodulated convolution as one batch-grouped convolution over
    per-sample weights (StyleGAN2's "fused" formulation)."""
    batch, in_channels = styles.shape
    w = weight.unsqueeze(0) * styles.reshape(batch, 1, -1, 1, 1)
    w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    x = x.reshape(1, batch * in_channels, *x.shape[2:])
    out = F.conv2d(x, w.reshape(-1, in_channels, *weight.shape[2:]), padding=weight.shape[-1] // 2, groups=batch)
    return out.reshape(batch, -1, *out.shape[2:])


def upsampling_modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Ours, up-sampling by 2 (StyleGAN2-ADA's way: transposed convolution, then the FIR filter)."""
    return modulated_conv2d(x, weight, styles, up=2, resample_filter=setup_filter([1, 3, 3, 1]).to(x.device))


def filter_first_modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Baseline with the same output: FIR-upsample the modulated input to the padded (2H + 2) map
    (zero insertion, filter), then an unpadded convolution, then demodulation."""
    f = setup_filter([1, 3, 3, 1]).to(x.device)
    x = upfirdn2d(x * styles.reshape(*styles.shape, 1, 1), f, up=2, padding=(3, 2, 3, 2), gain=4)
    coefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
    return F.conv2d(x, weight) * coefs.reshape(*coefs.shape, 1, 1)


def time_modconv(fn, shapes: list[tuple[int, int, int]], batch: int, device, repeats: int = 5, up: int = 1) -> float:
    """CPU-or-GPU seconds of forward + backward of ``fn`` over the synthesis layers ``shapes``
    (output resolutions; inputs at 1 / ``up`` of them)."""
    g = torch.Generator().manual_seed(0)
    args = [
        (
            torch.randn(batch, c_in, res // up, res // up, generator=g).to(device).requires_grad_(True),
            torch.randn(c_out, c_in, 3, 3, generator=g).to(device).requires_grad_(True),
            (torch.rand(batch, c_in, generator=g) + 0.5).to(device).requires_grad_(True),
        )
        for c_in, c_out, res in shapes
    ]
    for x, w, s in args:  # warm-up
        fn(x, w, s).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter() if device.type == "cuda" else time.process_time()
    for _ in range(repeats):
        for x, w, s in args:
            fn(x, w, s).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats
    return (time.process_time() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per setting")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--paper", action="store_true", help="paper scale (schema defaults) instead of the demo config")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg = config["generator"]
    if args.paper:
        cfg = schema_defaults(yaml.safe_load((REPO / "config" / "schema.yaml").read_text())["properties"]["generator"])
    cfg = copy.deepcopy(cfg)
    encoder = DemoClipImages(config["clip"]["demo"]).to(device)
    c_dim = int(config["clip"]["demo"]["embed_dim"])
    data = random_set(max(256, cfg["batch"] * 4), 2, c_dim, cfg["resolution"])
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'{args.threads} threads'}), "
        f"resolution {cfg['resolution']}, batch {cfg['batch']}, channels {cfg['channel_base']}/{cfg['channel_max']}, "
        f"branch width {cfg['branch_width']}, precision {cfg['precision'] if device.type == 'cuda' else 'fp32'}"
    )

    # CPU time is what an idle machine's wall time would be with --threads 1 (the dev machine is shared).
    lafite = time_training(cfg, data, encoder, device, args.steps)
    plain_cfg = {**cfg, "itc": 0.0, "itd": 0.0, "pl_weight": 0.0}
    plain = time_training(plain_cfg, data, None, device, args.steps)
    for name, (wall, cpu) in (
        ("Lafite objective (itc + itd + R1 + path length)", lafite),
        ("plain conditional StyleGAN2 (R1 only)", plain),
    ):
        print(f"training, {name}: wall {wall * 60:.2f} kimg/min, CPU time {cpu * 60:.2f} kimg/CPU-min")
    print(f"ratio Lafite / plain: wall {lafite[0] / plain[0]:.2f}, CPU time {lafite[1] / plain[1]:.2f}")

    G, _, _, _ = build(cfg, c_dim, 2, "max", 0)
    # Each layer convolves at its output resolution (after the upsampling of up-layers).
    shapes = [(layer.in_channels, layer.out_channels, layer.resolution) for layer in synthesis_layers(G)]
    ours = time_modconv(modulated_conv2d, shapes, cfg["batch"], device)
    grouped = time_modconv(grouped_modulated_conv2d, shapes, cfg["batch"], device)
    print(
        f"modulated conv, forward + backward over G's {len(shapes)} synthesis layers at batch {cfg['batch']}: "
        f"ours {ours * 1000:.1f} ms, batch-grouped {grouped * 1000:.1f} ms, ratio grouped / ours {grouped / ours:.2f}"
    )
    up_shapes = [
        (layer.in_channels, layer.out_channels, layer.resolution) for layer in synthesis_layers(G) if layer.up > 1
    ]
    ours = time_modconv(upsampling_modulated_conv2d, up_shapes, cfg["batch"], device, up=2)
    first = time_modconv(filter_first_modulated_conv2d, up_shapes, cfg["batch"], device, up=2)
    print(
        f"up-sampling modulated conv, forward + backward over G's {len(up_shapes)} up-sampling layers: "
        f"ours {ours * 1000:.1f} ms, filter first {first * 1000:.1f} ms, ratio filter first / ours {first / ours:.2f}"
    )
    G.to(device)
    c = torch.nn.functional.normalize(torch.randn(256, 2, c_dim), dim=-1)
    batched = time_generation(G, c, device, 64)
    single = time_generation(G, c[:32], device, 1)
    for name, (wall, cpu) in (("batch 64", batched), ("one at a time", single)):
        print(f"generation, {name}: wall {wall:.1f} images/s, CPU time {cpu:.1f} images/CPU-s")
    print(f"ratio batched / one at a time: wall {batched[0] / single[0]:.2f}, CPU time {batched[1] / single[1]:.2f}")


if __name__ == "__main__":
    main()
