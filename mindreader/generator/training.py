"""The GAN training loop: phases as data, lazy regularisation, EMA of G, checkpoints every N kimg
and on SIGTERM with exact resume, sample grids, a loss log, and multi-process data parallelism.

Distributed runs (torchrun, one process per GPU, or gloo on the CPU) average gradients with one
all-reduce per parameter group, as StyleGAN2-ADA does; the random draws of every step are made
for the global batch on every rank (``StepRandom``), so N processes with batch B / N train
exactly what one process with batch B trains.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mindreader.checkpoint import (
    StopOnSignal,
    TrainingInterrupted,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unflatten_tensors,
)
from mindreader.generator.data import TrainingSet
from mindreader.generator.distributed import StepRandom, any_rank, average_gradients, rank_and_world
from mindreader.generator.loss import LafiteLoss, LossConfig
from mindreader.generator.samples import save_grid

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """Raised when a phase's gradients stay non-finite for ``max_nonfinite_steps`` in a row."""


@dataclass
class TrainConfig:
    """Schedule of one training stage (config/README.md, section generator)."""

    kimg: float  # training length in thousands of real images shown
    batch: int  # global batch (split evenly over processes)
    lr: float = 0.0025  # Adam learning rate of G and D
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas of G and D
    mapper_lr: float = 0.0025  # Adam learning rate of the end-to-end mappers (the original: G's)
    mapper_betas: tuple[float, float] = (0.0, 0.99)  # their Adam betas (the original: G's)
    mapper_lazy_interval: int = 10  # lr and betas adjusted as for a regulariser every this many
    # steps, as the original's training loop does for the mappers (0: no adjustment)
    ema_kimg: float = 10.0  # EMA half-life of G_ema in kimg
    ema_rampup: float | None = 0.05  # half-life at most this fraction of the images shown (None: off)
    checkpoint_kimg: float = 10.0  # checkpoint every this many kimg (0: only on SIGTERM)
    sample_kimg: float = 0.0  # sample grid every this many kimg (0: only at the end)
    sample_images: int = 8  # training images (columns) of a sample grid
    log_steps: int = 10  # one row of losses.csv per this many steps
    max_nonfinite_steps: int = 10  # fail after a phase's gradients are non-finite this many times in a row
    mirror: bool = False  # x-flips: each real image mirrored left-right with probability 1/2 per read
    seed: int = 0  # seed of every random draw of the loop

    def __post_init__(self):
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        self.mapper_betas = (float(self.mapper_betas[0]), float(self.mapper_betas[1]))


@dataclass
class Phase:
    """One optimisation phase: a loss function run every ``interval`` steps, stepping the
    optimisers of the parameter groups it returns losses for."""

    name: str
    interval: int
    fn: Callable
    optimizers: dict[str, torch.optim.Optimizer]


@dataclass
class TrainResult:
    G: nn.Module
    G_ema: nn.Module
    D: nn.Module
    mappers: nn.ModuleList | None
    rows: list[dict]
    steps: int
    seconds: float
    extra: dict = field(default_factory=dict)


def lazy_adam(params, lr: float, betas: tuple[float, float], interval: int) -> torch.optim.Adam:
    """Adam whose lr and betas are adjusted for a regulariser applied every ``interval`` steps."""
    ratio = interval / (interval + 1) if interval > 0 else 1.0
    return torch.optim.Adam(params, lr=lr * ratio, betas=(betas[0] ** ratio, betas[1] ** ratio), eps=1e-8)


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """G_ema <- beta * G_ema + (1 - beta) * G for parameters; buffers copied."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters()):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers()):
        b_ema.copy_(b)


def ema_beta(batch: int, cur_nimg: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """Per-step EMA decay for a half-life of ema_kimg (ramped up with the images shown)."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


class Trainer:
    """Trains G and D (and the mappers, end to end) on a TrainingSet."""

    def __init__(
        self,
        G: nn.Module,  # Generator (trained in place)
        D: nn.Module,  # Discriminator (trained in place)
        data: TrainingSet,  # samples of this stage
        loss_cfg: LossConfig,  # the objective
        cfg: TrainConfig,  # the schedule
        checkpoint_dir: str | Path,  # where checkpoints go (not a rule output)
        device: torch.device,  # where to train
        G_ema: nn.Module | None = None,  # starting EMA (fine-tuning); None: a copy of G
        encoder: Callable | None = None,  # CLIP image encoder x in [0, 1] -> (B, D); None: no itc
        mappers: nn.ModuleList | None = None,  # end-to-end: mappers trained with the GAN
        fingerprint: str = "",  # identity of the job; a checkpoint with another one is ignored
        grid_dir: str | Path | None = None,  # where sample grids go (None: no grids)
        callback: Callable[[int], None] | None = None,  # called after every step with the step index
    ):
        self.rank, self.world = rank_and_world()
        if cfg.batch % self.world:
            raise ValueError(f"global batch {cfg.batch} is not divisible by {self.world} processes")
        self.local_batch = cfg.batch // self.world
        self.cfg = cfg
        self.device = device
        self.data = data
        self.G = G.to(device).train()
        self.D = D.to(device).train()
        self.G_ema = (copy.deepcopy(G) if G_ema is None else G_ema).to(device).eval().requires_grad_(False)
        self.mappers = mappers.to(device).train() if mappers is not None else None
        self.loss = LafiteLoss(self.G, self.D, loss_cfg, encoder, self.mappers).to(device)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.fingerprint = fingerprint
        self.grid_dir = Path(grid_dir) if grid_dir is not None else None
        self.callback = callback
        self.opt_G = lazy_adam(
            self.G.parameters(), cfg.lr, cfg.betas, loss_cfg.pl_interval if loss_cfg.pl_weight > 0 else 0
        )
        self.opt_D = lazy_adam(
            self.D.parameters(), cfg.lr, cfg.betas, loss_cfg.r1_interval if loss_cfg.r1_gamma > 0 else 0
        )
        self.opt_M = (
            lazy_adam(self.mappers.parameters(), cfg.mapper_lr, cfg.mapper_betas, cfg.mapper_lazy_interval)
            if self.mappers is not None
            else None
        )
        joint = self.opt_M is not None and loss_cfg.mapper_phase == "joint"
        g_main_opts = {"G": self.opt_G, **({"M": self.opt_M} if joint else {})}
        self.phases = [
            Phase("Gmain", 1, self.loss.g_main, g_main_opts),
            Phase("Greg", loss_cfg.pl_interval, self.loss.g_pl, {"G": self.opt_G}),
            Phase("Dmain", 1, self.loss.d_main, {"D": self.opt_D}),
            Phase("Dreg", loss_cfg.r1_interval, self.loss.d_r1, {"D": self.opt_D}),
        ]
        if self.opt_M is not None and not joint:
            self.phases.append(Phase("Mmain", 1, self.loss.m_main, {"M": self.opt_M}))
        if loss_cfg.pl_weight <= 0:
            self.phases = [p for p in self.phases if p.name != "Greg"]
        if loss_cfg.r1_gamma <= 0:
            self.phases = [p for p in self.phases if p.name != "Dreg"]
        self.total_steps = max(1, math.ceil(cfg.kimg * 1000 / cfg.batch))
        self.step = 0
        self.rows: list[dict] = []
        # each term's sum and count over the steps since the last row: checkpointed, so that a row
        # whose window a SIGTERM cut averages all of its steps after the resume
        self.window_sums: dict[str, float] = {}
        self.window_counts: dict[str, int] = {}
        self.seconds = 0.0
        self.nonfinite_steps = 0  # phase steps skipped for non-finite gradients, in all
        self.nonfinite_run = {phase.name: 0 for phase in self.phases}  # ... in a row, per phase

    # --- one step -------------------------------------------------------------------------
    def group_params(self, group: str) -> list[nn.Parameter]:
        return list({"G": self.G, "D": self.D, "M": self.mappers}[group].parameters())

    def run_phase(self, phase: Phase, batch: dict, step: int) -> dict:
        """One phase: its losses' gradients, averaged over processes, then one step of each of its
        optimisers; none if any gradient is non-finite on any process (``skip_nonfinite``).

        Precision is the networks' own (reduced in their top blocks on a GPU, fp32 elsewhere), with
        no loss scaling, as StyleGAN2-ADA trains."""
        rnd = StepRandom(self.cfg.seed, step, phase.name, self.device)
        losses, terms = phase.fn(batch, rnd)
        # Every group's gradients first: a step changes parameters that another group's graph uses.
        # The graph is kept only for a group still to come: otherwise backward frees each saved
        # tensor once used, so G's largest gradients never coexist with D's saved activations.
        last = len(losses) - 1
        grads = {
            group: torch.autograd.grad(loss, self.group_params(group), retain_graph=i < last, allow_unused=True)
            for i, (group, loss) in enumerate(losses.items())
        }
        params = [p for group in grads for p in self.group_params(group)]
        for group, group_grads in grads.items():
            group_params = self.group_params(group)
            for p, g in zip(group_params, group_grads):
                p.grad = torch.zeros_like(p) if g is None else g.to(p.dtype)
            average_gradients(group_params)
        finite = bool(torch.stack([p.grad.isfinite().all() for p in params]).all())
        if any_rank(not finite, self.device):
            self.skip_nonfinite(phase.name, step)
        else:
            self.nonfinite_run[phase.name] = 0
            for group in grads:
                phase.optimizers[group].step()
        for p in params:
            p.grad = None
        return terms

    def skip_nonfinite(self, phase: str, step: int) -> None:
        """Count a phase step skipped for non-finite gradients; fail after too many in a row."""
        self.nonfinite_steps += 1
        self.nonfinite_run[phase] += 1
        run = self.nonfinite_run[phase]
        log.warning("step %d: non-finite gradients in phase %s (%d in a row): its update is skipped", step, phase, run)
        if run >= self.cfg.max_nonfinite_steps:
            raise TrainingDiverged(
                f"training diverged: the gradients of phase {phase} were non-finite {run} times in a row "
                f"(the last at step {step}; max_nonfinite_steps {self.cfg.max_nonfinite_steps}). "
                f"{self.checkpoint_dir} keeps the last checkpoint written before that run, if any "
                "(a rerun with the same config resumes from it)"
            )

    def in_nonfinite_run(self) -> bool:
        """True while some phase's last update was skipped: no checkpoint is written then."""
        return any(self.nonfinite_run.values())

    def train_step(self, step: int) -> dict:
        indices = StepRandom(self.cfg.seed, step, "data", torch.device("cpu")).integers(
            len(self.data), self.local_batch
        )
        flip = None
        if self.cfg.mirror:
            flip = StepRandom(self.cfg.seed, step, "mirror", torch.device("cpu")).integers(2, self.local_batch) == 1
        batch = self.data.batch(indices, self.device, flip)
        terms = {}
        for phase in self.phases:
            if step % phase.interval == 0:
                terms.update(self.run_phase(phase, batch, step))
        cur_nimg = (step + 1) * self.cfg.batch
        update_ema(self.G_ema, self.G, ema_beta(self.cfg.batch, cur_nimg, self.cfg.ema_kimg, self.cfg.ema_rampup))
        return {k: float(v) for k, v in terms.items()}

    # --- checkpoints ----------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        mods = {"G": self.G, "G_ema": self.G_ema, "D": self.D, "loss": self.loss}
        if self.mappers is not None:
            mods["M"] = self.mappers
        return mods

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        opts = {"opt_G": self.opt_G, "opt_D": self.opt_D}
        if self.opt_M is not None:
            opts["opt_M"] = self.opt_M
        return opts

    def save(self) -> None:
        if self.rank == 0:
            tensors = {}
            for name, module in self.modules().items():
                tensors.update(
                    {f"{name}.{k}": v for k, v in module.state_dict().items() if name != "loss" or k == "pl_mean"}
                )
            meta = {}
            for name, opt in self.optimizers().items():
                opt_tensors, meta[name] = optimizer_state(opt, name)
                tensors.update(opt_tensors)
            rng_tensors, rng_meta = rng_state()
            tensors.update(rng_tensors)
            state = {
                "step": self.step,
                "fingerprint": self.fingerprint,
                "rows": self.rows,
                "window_sums": self.window_sums,
                "window_counts": self.window_counts,
                "seconds": self.seconds,
                "nonfinite_steps": self.nonfinite_steps,
                "nonfinite_run": self.nonfinite_run,
                "optimizers": meta,
                "rng": rng_meta,
            }
            save_checkpoint(self.checkpoint_dir, tensors, state)
        if self.world > 1:
            torch.distributed.barrier()

    def try_resume(self) -> None:
        loaded = load_checkpoint(self.checkpoint_dir)
        if loaded is None:
            return
        tensors, state = loaded
        if state.get("fingerprint") != self.fingerprint:
            log.warning(
                "%s holds a checkpoint of another job (fingerprint differs): starting afresh", self.checkpoint_dir
            )
            return
        for name, module in self.modules().items():
            own = unflatten_tensors(name, tensors)
            module.load_state_dict({k: v.to(self.device) for k, v in own.items()}, strict=name != "loss")
        for name, opt in self.optimizers().items():
            load_optimizer_state(opt, name, tensors, state["optimizers"][name])
        set_rng_state(tensors, state["rng"])
        self.step = int(state["step"])
        self.rows = list(state["rows"])
        # absent from checkpoints written before the window was kept: the row starts afresh
        self.window_sums = {k: float(v) for k, v in state.get("window_sums", {}).items()}
        self.window_counts = {k: int(v) for k, v in state.get("window_counts", {}).items()}
        self.seconds = float(state["seconds"])
        self.nonfinite_steps = int(state["nonfinite_steps"])
        self.nonfinite_run = {name: int(n) for name, n in state["nonfinite_run"].items()}
        log.info(
            "resumed from step %d of %d (%.1f kimg)", self.step, self.total_steps, self.step * self.cfg.batch / 1000
        )

    # --- the loop -------------------------------------------------------------------------
    def grid(self, name: str) -> None:
        if self.grid_dir is None or self.rank != 0:
            return
        save_grid(
            self.grid_dir / name,
            self.G_ema,
            self.data,
            self.loss.cfg.train_z,
            self.device,
            self.mappers,
            seed=self.cfg.seed,
            n=self.cfg.sample_images,
        )

    def crossed(self, every_kimg: float, step: int) -> bool:
        """True if the images shown crossed a multiple of every_kimg during this step."""
        if every_kimg <= 0:
            return False
        every = every_kimg * 1000
        return (step + 1) * self.cfg.batch // every > step * self.cfg.batch // every

    def train(self) -> TrainResult:
        self.try_resume()
        bar = tqdm(
            total=self.total_steps, initial=self.step, desc="train", unit="step", disable=self.rank != 0, mininterval=2
        )
        with StopOnSignal() as stop:
            while self.step < self.total_steps:
                start = time.perf_counter()
                terms = self.train_step(self.step)
                self.seconds += time.perf_counter() - start
                for k, v in terms.items():
                    self.window_sums[k] = self.window_sums.get(k, 0.0) + v
                    self.window_counts[k] = self.window_counts.get(k, 0) + 1
                step = self.step
                self.step += 1
                kimg = self.step * self.cfg.batch / 1000
                if self.step % self.cfg.log_steps == 0 or self.step == self.total_steps:
                    row = {"step": self.step, "kimg": kimg, "seconds": round(self.seconds, 3)}
                    row.update({k: self.window_sums[k] / self.window_counts[k] for k in sorted(self.window_sums)})
                    row["Progress/nonfinite_steps"] = self.nonfinite_steps
                    self.rows.append(row)
                    self.window_sums, self.window_counts = {}, {}
                    log.info(
                        "step %d kimg %.2f kimg/s %.3f %s",
                        self.step,
                        kimg,
                        kimg / max(self.seconds, 1e-9),
                        " ".join(f"{k}={v:.3f}" for k, v in row.items() if k.startswith("Loss/")),
                    )
                bar.set_postfix(kimg=f"{kimg:.1f}", kimg_s=f"{kimg / max(self.seconds, 1e-9):.3f}", refresh=False)
                bar.update(1)
                if self.crossed(self.cfg.sample_kimg, step):
                    self.grid(f"grid_{int(round(kimg * 1000)):08d}.png")
                if self.callback is not None:
                    self.callback(step)
                if any_rank(stop.requested, self.device):
                    if self.in_nonfinite_run():
                        raise TrainingInterrupted(
                            f"stopped by signal at step {self.step} amid non-finite gradients, without a "
                            "checkpoint; rerun to resume from the last one"
                        )
                    self.save()
                    raise TrainingInterrupted(f"stopped by signal at step {self.step}; rerun to resume")
                # the last step's too: a rerun of this job need not train again
                if self.step == self.total_steps or self.crossed(self.cfg.checkpoint_kimg, step):
                    if self.in_nonfinite_run():
                        log.warning("no checkpoint after step %d: amid non-finite gradients", step)
                    else:
                        self.save()
        bar.close()
        self.grid("samples.png")
        return TrainResult(self.G, self.G_ema, self.D, self.mappers, self.rows, self.step, self.seconds)


def set_seed_for_init(seed: int) -> None:
    """Seed torch before building networks so that every rank builds the same ones."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
