"""Multi-process helpers: rank and world size, the global-batch gather used by the contrastive
terms, gradient averaging, and random draws that every rank makes for the whole global batch so
that N processes see exactly the samples, latents and noise one process would see.

Without an initialised process group every helper is the identity: the same code runs
single-process on the CPU.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from every rank along dim 0, in rank order; this rank's slice
    keeps its autograd graph, the others' slices are constants (as in CLIP training)."""
    rank, world = rank_and_world()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a new tensor; ``x`` itself is unchanged)."""
    _, world = rank_and_world()
    if world == 1:
        return x
    y = x.detach().clone()
    dist.all_reduce(y)
    return y / world


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its mean over ranks (one flat all-reduce)."""
    _, world = rank_and_world()
    grads = [p.grad for p in params if p.grad is not None]
    if world == 1 or not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is true on any rank (so every rank stops at the same step)."""
    _, world = rank_and_world()
    if world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class StepRandom:
    """Random draws for one step and phase, identical on every rank: each draw is made for the
    global batch from a generator seeded by (seed, step, phase), and this rank keeps its slice.

    Seeding by step (not by a running RNG) also makes a resumed run draw what the uninterrupted
    run drew.
    """

    def __init__(self, seed: int, step: int, phase: str, device: torch.device):
        digest = hashlib.sha256(f"{seed}/{step}/{phase}".encode()).digest()
        self.generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
        self.device = device
        self.rank, self.world = rank_and_world()

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0] // self.world
        return x[self.rank * n : (self.rank + 1) * n].to(self.device)

    def normal(self, local_shape: tuple[int, ...]) -> torch.Tensor:
        """Standard normal (local_shape) for this rank's part of the global batch (dim 0)."""
        shape = (local_shape[0] * self.world, *local_shape[1:])
        return self._local(torch.randn(shape, generator=self.generator))

    def uniform(self, local_shape: tuple[int, ...]) -> torch.Tensor:
        shape = (local_shape[0] * self.world, *local_shape[1:])
        return self._local(torch.rand(shape, generator=self.generator))

    def integers(self, high: int, local_size: int) -> torch.Tensor:
        """Integers in [0, high) for this rank's part of a global batch of local_size * world."""
        return self._local(torch.randint(high, (local_size * self.world,), generator=self.generator))

    def shared_uniform(self) -> float:
        """One number in [0, 1), the same on every rank (per-batch choices like the mixing cutoff)."""
        return float(torch.rand((), generator=self.generator))

    def shared_integer(self, low: int, high: int) -> int:
        return int(torch.randint(low, high, (), generator=self.generator))
