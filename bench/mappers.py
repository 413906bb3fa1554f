"""Benchmark of the mappers, each against a baseline measured in the same run.

(a) FmriClipRes training throughput at subj01 size (15,724 voxels -> 512, the paper's widths,
    mse_cos_contrastive): samples/s and achieved GFLOP/s (FLOPs counted by torch's
    FlopCounterMode for one forward + backward), next to a large fp32 torch.matmul as the
    practical peak of the device; prints the ratio.
(b) Ridge with 10 alphas at N x 15,724 -> 512 (one eigendecomposition shared by every alpha and
    target, alpha chosen on a validation split, refit on all samples), next to scikit-learn's
    RidgeCV (efficient leave-one-out over the same alphas) on the same data and next to the floor,
    one X X^T product in the same precision; prints both ratios and the agreement of predictions.

Usage: .venv/bin/python bench/mappers.py [--part a|b|both] [--device cpu|cuda] [--batch B]
       [--steps S] [--ridge-samples N] [--dtype float64|float32|both] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Thread counts must be fixed before NumPy/torch load their BLAS: on a shared, oversubscribed
# machine multi-threaded LAPACK spins and slows down by an order of magnitude.
if "--threads" in sys.argv:
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = sys.argv[sys.argv.index("--threads") + 1]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from mindreader.mappers import FmriClipRes, fit_ridge, mapper_loss  # noqa: E402

N_VOXELS = 15724
EMBED_DIM = 512
ALPHAS = [1e1, 1e2, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 1e7]
LOSS_CFG = {"loss": {"cos_weight": 0.6, "temperature": 0.5, "row_weight": 0.5, "contrastive_weight": 0.5}}


class Timer:
    """Wall and process CPU seconds of a block (CPU time is steadier on a busy shared machine)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self):
        return f"{self.wall:.1f} s wall / {self.cpu:.1f} s CPU"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, size: int, repeats: int = 3) -> tuple[float, float]:
    """GFLOP/s of a size x size fp32 matmul per wall and per CPU second (best of ``repeats``)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    wall = cpu = float("inf")
    for _ in range(repeats):
        sync(device)
        with Timer() as timer:
            a @ b
            sync(device)
        wall, cpu = min(wall, timer.wall), min(cpu, timer.cpu)
    return 2 * size**3 / wall / 1e9, 2 * size**3 / cpu / 1e9


def bench_cnn(device: torch.device, batch: int, steps: int) -> None:
    torch.manual_seed(0)
    model = FmriClipRes(N_VOXELS, EMBED_DIM).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4, weight_decay=1e-5)
    x = torch.randn(batch, N_VOXELS, device=device)
    y = torch.nn.functional.normalize(torch.randn(batch, EMBED_DIM, device=device), dim=1)

    def step():
        loss = mapper_loss("mse_cos_contrastive", model(x), y, LOSS_CFG)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()  # also the warm-up
    flops = counter.get_total_flops()
    sync(device)
    with Timer() as timer:
        for _ in range(steps):
            step()
        sync(device)
    seconds = timer.wall / steps
    achieved = flops / seconds / 1e9
    achieved_cpu = flops * steps / timer.cpu / 1e9
    peak, peak_cpu = matmul_peak(device, 8192 if device.type == "cuda" else 4096)
    params = sum(p.numel() for p in model.parameters())
    print(f"(a) FmriClipRes {N_VOXELS} -> {EMBED_DIM}, {params:,} parameters, batch {batch}, {steps} steps on {device}")
    print(f"    {timer} for {steps} steps; {batch / seconds:.1f} samples/s, {flops / batch / 1e9:.2f} GFLOP per sample (fwd+bwd), "
          f"{achieved:.1f} GFLOP/s achieved")
    print(f"    fp32 matmul peak {peak:.1f} GFLOP/s; ratio achieved / peak = {achieved / peak:.3f}")
    if device.type == "cpu":  # per CPU second: steadier on a busy machine (meaningful with --threads 1)
        print(f"    per CPU second: {achieved_cpu:.1f} vs matmul {peak_cpu:.1f} GFLOP/s; ratio {achieved_cpu / peak_cpu:.3f}")


def ridge_data(n: int, n_test: int, seed: int = 0):
    """Betas with a low-rank stimulus signal plus noise, targets a noisy linear function of it."""
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(n + n_test, 64, generator=g)
    x = latent @ torch.randn(64, N_VOXELS, generator=g) * 0.3 + torch.randn(n + n_test, N_VOXELS, generator=g)
    y = latent @ torch.randn(64, EMBED_DIM, generator=g) * 0.1 + 0.5 * torch.randn(n + n_test, EMBED_DIM, generator=g)
    images = torch.arange(n) // 3  # three repeats per image, as single-trial NSD betas
    return x[:n], y[:n], x[n:], y[n:], images


def bench_ridge(n: int, dtype: torch.dtype) -> None:
    from sklearn.linear_model import RidgeCV

    from mindreader.mappers.data import validation_mask

    x, y, x_test, y_test, images = ridge_data(n, 500)
    val = torch.from_numpy(validation_mask(images.numpy(), 0.15, seed=0))
    xd = x.to(dtype)
    xd @ xd.T[:, :8]  # warm up BLAS threads
    with Timer() as floor:
        xd @ xd.T
    del xd

    with Timer() as ours:
        fit = fit_ridge(x, y, val, ALPHAS, dtype=dtype)
    pred_ours = (x_test.to(dtype) @ fit.weight.T + fit.bias).double().numpy()

    # Like with like: RidgeCV gets the same N training samples in the same precision as ours.
    xn, yn = x.to(dtype).numpy(), y.to(dtype).numpy()
    with Timer() as sklearn:
        sk = RidgeCV(alphas=ALPHAS, fit_intercept=True).fit(xn, yn)
    pred_sk = sk.predict(x_test.to(dtype).numpy()).astype(np.float64)

    # RidgeCV's model is the ridge refitted on all samples at its alpha: compare ours at that alpha.
    same = fit_ridge(x, y, None, [float(sk.alpha_)], dtype=dtype)
    pred_same = (x_test.to(dtype) @ same.weight.T + same.bias).double().numpy()

    def r2(pred):
        truth = y_test.double().numpy()
        return 1 - ((pred - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum()

    print(f"(b) ridge, {len(ALPHAS)} alphas, {n} x {N_VOXELS} -> {EMBED_DIM} ({fit.form} form), {str(dtype)[6:]}, "
          f"{torch.get_num_threads()} threads")
    print(f"    both fit the same {n} samples in {str(dtype)[6:]} (RidgeCV's coefficients: {sk.coef_.dtype})")
    print(f"    ours {ours} (alpha {fit.alpha:g} chosen on a 15% image split, refitted on all {n})")
    print(f"    RidgeCV {sklearn} (alpha {sk.alpha_:g} chosen by leave-one-out on all {n})")
    print(f"    floor, one X X^T: {floor}")
    for kind in ("wall", "cpu"):
        a, b, c = getattr(ours, kind), getattr(sklearn, kind), getattr(floor, kind)
        print(f"    {kind}: RidgeCV / ours = {b / a:.2f} (target >= 2); ours / floor = {a / c:.2f} (target <= 2)")
    print(f"    test R^2: ours {r2(pred_ours):.4f}, RidgeCV {r2(pred_sk):.4f}; correlation of predictions "
          f"{np.corrcoef(pred_ours.ravel(), pred_sk.ravel())[0, 1]:.5f}")
    diff = np.abs(pred_same - pred_sk).max() / np.abs(pred_sk).max()
    print(f"    at RidgeCV's alpha: max |ours - RidgeCV| / max |RidgeCV| over test predictions = {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["a", "b", "both"], default="both")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="(a) batch; default 128 on a GPU, 8 on the CPU")
    parser.add_argument("--steps", type=int, default=3, help="(a) timed training steps")
    parser.add_argument("--ridge-samples", type=int, default=8000, help="(b) training samples N")
    parser.add_argument(
        "--dtype", choices=["float32", "float64", "both"], default="both", help="(b) precision of ours, RidgeCV and the floor"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.part in ("a", "both"):
        bench_cnn(device, args.batch or (128 if device.type == "cuda" else 8), args.steps)
    if args.part in ("b", "both"):
        for dtype in ("float64", "float32") if args.dtype == "both" else (args.dtype,):
            bench_ridge(args.ridge_samples, getattr(torch, dtype))


if __name__ == "__main__":
    main()
