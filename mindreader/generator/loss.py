"""Lafite's objective for the conditional StyleGAN2, and Mind Reader's end-to-end mapper term.

Each training phase (G main, G path-length, D main, D R1) is one function that takes the batch
and the step's random draws and returns the loss of each parameter group it trains ("G", "D",
"M" for the end-to-end mappers) plus its named terms (``Loss/G/itc`` ...) for the log.

contra(A, B) is Lafite's contrastive term over the *global* batch (features gathered from every
rank): with sim_ij = cos(A_i, B_j) / temperature, A the image side and B the conditions,
lam * mean_i log softmax(sim, rows)_ii + (1 - lam) * mean_i log softmax(sim, columns)_ii;
Lafite and Mind Reader train with lam = 0 (for each condition, a softmax over the images). Each rank computes it on the whole batch with only its own
slice attached to the graph; the gradient averaging over ranks divides by the world size, so the
term is multiplied by the world size before backward to give exactly the single-process gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mindreader.generator.conditioning import combine_targets, mapper_predictions, perturb
from mindreader.generator.distributed import StepRandom, all_reduce_mean, gather_with_grad, rank_and_world

Z_POLICIES = ("random", "zero")
MAPPER_LOSS_INPUTS = ("perturbed", "raw")
# End to end, what the perturbation's noise is mixed into: the normalised predictions (ours) or
# the mappers' raw outputs (the fork's).
PERTURB_INPUTS = ("normalized", "raw")
# End to end, where the mappers step: in G's main phase on its forward (joint, ours), or in a phase
# of their own after D's, on a forward of their own (separate, the fork's).
MAPPER_PHASES = ("joint", "separate")


# The similarity inside contra's softmax: cos / temperature (the fork's) or exp(cos / temperature)
# (Lafite's released code, which trained its language-free model with it).
CONTRASTIVE_FORMS = ("cos", "exp")


def contra(a: torch.Tensor, b: torch.Tensor, temperature: float, lam: float, form: str = "cos") -> torch.Tensor:
    """Lafite's contra_loss: lam * mean log-softmax diagonal over each row of sim (a_i against
    every b_j) + (1 - lam) * over each column (b_j against every a_i), sim = cos(a, b) / temperature
    (form cos) or exp(cos(a, b) / temperature) (form exp). Lafite's constant log(temperature)
    offset is left out (it has no gradient)."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"contra: expected two (N, D) tensors of one shape, got {list(a.shape)} and {list(b.shape)}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"contra: lam must be in [0, 1], got {lam}")
    if form not in CONTRASTIVE_FORMS:
        raise ValueError(f"contra: unknown form '{form}'; choose one of {CONTRASTIVE_FORMS}")
    sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).t() / temperature
    if form == "exp":
        sim = sim.exp()
    value = sim.new_zeros([])
    if lam > 0:
        value = value + lam * F.log_softmax(sim, dim=1).diagonal().mean()
    if lam < 1:
        value = value + (1 - lam) * F.log_softmax(sim, dim=0).diagonal().mean()
    return value


def global_contra(
    a: torch.Tensor, b: torch.Tensor, temperature: float, lam: float, form: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(value, value scaled for backward): contra over the batch gathered from every rank."""
    value = contra(gather_with_grad(a), gather_with_grad(b), temperature, lam, form)
    return value, value * rank_and_world()[1]


def random_crop_resize(x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample square crop of side scale * side at relative offset (both in [0, 1]), resized to
    size x size by bilinear sampling (differentiable w.r.t. x)."""
    batch = x.shape[0]
    if scale.shape != (batch,) or offset.shape != (batch, 2):
        raise ValueError(
            f"random_crop_resize: scale (B,) and offset (B, 2) expected, got {list(scale.shape)}, {list(offset.shape)}"
        )
    theta = torch.zeros(batch, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = scale
    theta[:, 1, 1] = scale
    theta[:, :, 2] = (1 - scale).unsqueeze(1) * (2 * offset - 1)
    grid = F.affine_grid(theta, [batch, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def batch_crop_resize(x: torch.Tensor, size: int, crop_min: float, rnd: StepRandom) -> torch.Tensor:
    """Lafite's crop before CLIP: ONE square crop for the whole batch, of an integer side drawn
    from [int(crop_min * side), side) at integer offsets, resized bicubic to size x size; images
    smaller than size are padded with white (1) at random offsets instead, not resized."""
    side = x.shape[-1]
    if side < size:
        left, top = rnd.shared_integer(0, size - side), rnd.shared_integer(0, size - side)
        return F.pad(x, (left, size - side - left, top, size - side - top), value=1.0)
    cut = rnd.shared_integer(int(crop_min * side), side)
    left, top = rnd.shared_integer(0, side - cut), rnd.shared_integer(0, side - cut)
    crop = x[:, :, top : top + cut, left : left + cut]
    return F.interpolate(crop, (size, size), mode="bicubic", align_corners=False)


# How fakes are cropped for CLIP: per sample (ours, random_crop_resize) or per batch (Lafite's).
CROP_MODES = ("per_sample", "per_batch")


@dataclass
class LossConfig:
    """Weights and schedules of the objective (config/README.md, section generator)."""

    signal_weight: float  # perturbation: condition = normalize(a * c + (1 - a) * e)
    itc: float = 10.0  # weight of contra(CLIP(G(z, c)), c), split evenly over the K conditions
    itd: float = 10.0  # weight of contra(D_fts(x), c), split evenly over the K conditions
    temperature: float = 0.5  # temperature of the contrastive terms
    contrastive_lam: float = 0.0  # contra's weight of the row softmax (0: Lafite's softmax over images)
    contrastive_form: str = "cos"  # CONTRASTIVE_FORMS: sim = cos / T, or exp(cos / T) (Lafite's code)
    crop_min: float = 0.5  # smallest crop side (fraction) before the CLIP encoder
    crop_max: float = 1.0  # largest crop side
    crop_mode: str = "per_sample"  # CROP_MODES: per_sample, or per_batch (Lafite's; ignores crop_max)
    train_z: str = "random"  # latent z in training: random (standard normal) or zero
    style_mixing: float = 0.9  # probability of mixing two latents in a batch
    pl_style_mixing: bool = True  # style mixing in the path-length step too (StyleGAN2-ADA, Lafite)
    r1_gamma: float = 0.0064  # R1 weight (gamma / 2 * |grad|^2)
    r1_interval: int = 16  # lazy R1: every this many steps
    pl_weight: float = 2.0  # path-length regularisation weight (0: off)
    pl_interval: int = 4  # lazy path-length: every this many steps
    pl_decay: float = 0.01  # decay of the running path-length mean
    pl_batch_shrink: int = 2  # path-length batch = batch / this (every shrink-th sample)
    mapper_mse: float = 0.2  # end-to-end mapper loss: weight of MSE(pred, target)
    mapper_cos: float = 0.3  # ... of 1 - cos(pred, target)
    mapper_contra: float = 0.5  # ... of -contra(pred, target)
    mapper_adv: float = 0.1  # ... of softplus(-D(G(z, pred)))
    mapper_loss_input: str = "perturbed"  # the mapper loss reads the perturbed, normalised predictions
    # that G sees (the original) or the raw ones
    mapper_perturb: str = "normalized"  # PERTURB_INPUTS: the noise mixed into normalised or raw predictions
    mapper_phase: str = "joint"  # MAPPER_PHASES: the mappers step in G's main phase or in their own

    def __post_init__(self):
        if self.train_z not in Z_POLICIES:
            raise ValueError(f"unknown z policy '{self.train_z}'; choose one of {Z_POLICIES}")
        if self.mapper_loss_input not in MAPPER_LOSS_INPUTS:
            raise ValueError(
                f"unknown mapper loss input '{self.mapper_loss_input}'; choose one of {MAPPER_LOSS_INPUTS}"
            )
        if self.mapper_perturb not in PERTURB_INPUTS:
            raise ValueError(f"unknown mapper perturbation input '{self.mapper_perturb}'; choose one of {PERTURB_INPUTS}")
        if self.mapper_phase not in MAPPER_PHASES:
            raise ValueError(f"unknown mapper phase '{self.mapper_phase}'; choose one of {MAPPER_PHASES}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"unknown itc crop mode '{self.crop_mode}'; choose one of {CROP_MODES}")
        if self.contrastive_form not in CONTRASTIVE_FORMS:
            raise ValueError(f"unknown contrastive form '{self.contrastive_form}'; choose one of {CONTRASTIVE_FORMS}")
        if not 0.0 <= self.contrastive_lam <= 1.0:
            raise ValueError(f"contrastive_lam must be in [0, 1], got {self.contrastive_lam}")


class LafiteLoss(nn.Module):
    """The four phases of Lafite training; holds the running path-length mean as a buffer."""

    def __init__(
        self,
        G: nn.Module,  # Generator
        D: nn.Module,  # Discriminator
        cfg: LossConfig,  # weights and schedules
        encoder: (
            Callable[[torch.Tensor], torch.Tensor] | None
        ) = None,  # CLIP image encoder, x in [0, 1] -> (B, D); None: no itc
        mappers: nn.ModuleList | None = None,  # end-to-end: one brain -> CLIP mapper per target; with
        # several mappers and a one-condition G, their mean is the condition (the `avg` variant)
    ):
        super().__init__()
        self.G = G
        self.D = D
        self.cfg = cfg
        self.encoder = encoder
        self.mappers = mappers
        self.register_buffer("pl_mean", torch.zeros([]))
        if mappers is not None and G.n_conditions not in (1, len(mappers)):
            raise ValueError(f"{len(mappers)} mappers for a generator with {G.n_conditions} conditions")

    # --- shared draws ---------------------------------------------------------------------
    def conditions(
        self, batch: dict, rnd: StepRandom, detach_mappers: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Perturbed conditions (B, K, D, float32) for this phase and, end to end, the mappers'
        predictions (B, M, D, in the mappers' dtype) as the mapper loss reads them (perturbed and
        normalised as G sees them, or raw)."""
        signal = self.cfg.signal_weight
        if self.mappers is None:
            bank = batch["cond"]  # (B, A, K, D): A alternative embeddings (augmentations) per sample
            pick = rnd.integers(bank.shape[1], bank.shape[0])
            source = bank[torch.arange(bank.shape[0], device=bank.device), pick]
            return perturb(source, signal, rnd.normal(tuple(source.shape)).to(source.dtype)), None
        pred = mapper_predictions(self.mappers, batch["betas"])
        if detach_mappers:
            pred = pred.detach()
        noise = rnd.normal(tuple(pred.shape)).to(pred.dtype)
        n = self.G.n_conditions
        normalize_input = self.cfg.mapper_perturb == "normalized"
        c = perturb(combine_targets(pred, n), signal, noise[:, :n], normalize_input)
        if self.cfg.mapper_loss_input == "raw":
            seen = pred
        else:
            seen = c if n == pred.shape[1] else perturb(pred, signal, noise, normalize_input)
        return c.float(), seen

    def latents(self, batch_size: int, rnd: StepRandom) -> torch.Tensor:
        """The main latent: standard normal, or (train_z zero, the fork's training) zero."""
        z = rnd.normal((batch_size, self.G.z_dim))
        return torch.zeros_like(z) if self.cfg.train_z == "zero" else z

    def noise(self, batch_size: int, rnd: StepRandom) -> dict[str, torch.Tensor]:
        return {name: rnd.normal((batch_size, 1, res, res)) for name, res in self.G.synthesis.noise_shapes().items()}

    def generate(self, c: torch.Tensor, rnd: StepRandom, mixing: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """G(z, c) with style mixing; returns (images, ws). The mixing latent is standard normal
        whatever train_z (the fork mixes randn_like(z) into its zero z)."""
        batch = c.shape[0]
        ws = self.G.mapping(self.latents(batch, rnd))
        z2 = rnd.normal((batch, self.G.z_dim))
        if mixing and rnd.shared_uniform() < self.cfg.style_mixing:
            cutoff = rnd.shared_integer(1, ws.shape[1])
            ws = torch.cat([ws[:, :cutoff], self.G.mapping(z2)[:, cutoff:]], dim=1)
        return self.G.synthesis(ws, c, noise=self.noise(batch, rnd)), ws

    def contrastive_terms(
        self, feats: torch.Tensor, c: torch.Tensor, weight: float, name: str, terms: dict
    ) -> torch.Tensor:
        """-weight/K * sum_k contra(feats_k, c_k); feats (B, K, D) or (B, D) shared by all k."""
        K = c.shape[1]
        total = 0.0
        for k in range(K):
            f = feats[:, k] if feats.ndim == 3 else feats
            value, for_backward = global_contra(
                f, c[:, k], self.cfg.temperature, self.cfg.contrastive_lam, self.cfg.contrastive_form
            )
            terms[f"{name}/{k}"] = value.detach()
            total = total - weight / K * for_backward
        return total

    # --- phases ---------------------------------------------------------------------------
    def g_main(self, batch: dict, rnd: StepRandom) -> tuple[dict, dict]:
        c, pred = self.conditions(batch, rnd, detach_mappers=self.cfg.mapper_phase != "joint")
        img, _ = self.generate(c, rnd)
        logits, fts = self.D(img, c)
        adv = F.softplus(-logits).mean()
        terms = {"Loss/G/adv": adv.detach()}
        loss_g = adv
        if self.encoder is not None and self.cfg.itc > 0:
            size = getattr(self.encoder, "image_size", img.shape[-1])
            if self.cfg.crop_mode == "per_batch":
                crops = batch_crop_resize((img + 1) / 2, size, self.cfg.crop_min, rnd)
            else:
                scale = self.cfg.crop_min + (self.cfg.crop_max - self.cfg.crop_min) * rnd.uniform((img.shape[0],))
                crops = random_crop_resize(
                    (img + 1) / 2, scale.to(img.dtype), rnd.uniform((img.shape[0], 2)).to(img.dtype), size
                )
            loss_g = loss_g + self.contrastive_terms(self.encoder(crops), c, self.cfg.itc, "Loss/G/itc", terms)
        if self.cfg.itd > 0:
            loss_g = loss_g + self.contrastive_terms(fts, c, self.cfg.itd, "Loss/G/itd", terms)
        terms["Loss/G/total"] = loss_g.detach()
        losses = {"G": loss_g}
        if pred is not None and self.cfg.mapper_phase == "joint":
            losses["M"] = self.mapper_loss(pred, batch["target"], adv, terms)
        return losses, terms

    def m_main(self, batch: dict, rnd: StepRandom) -> tuple[dict, dict]:
        """The mappers' own phase (mapper_phase separate, the fork's): after D's step, a forward of
        their own through G and D, and the mapper objective; only the mappers step."""
        c, pred = self.conditions(batch, rnd, detach_mappers=False)
        img, _ = self.generate(c, rnd)
        logits, _ = self.D(img, c)
        terms = {}
        return {"M": self.mapper_loss(pred, batch["target"], F.softplus(-logits).mean(), terms)}, terms

    def mapper_loss(self, pred: torch.Tensor, target: torch.Tensor, adv: torch.Tensor, terms: dict) -> torch.Tensor:
        """Mind Reader's end-to-end mapper objective, summed over the mappers; ``pred`` (B, M, D),
        computed in its dtype."""
        cfg = self.cfg
        target = target.to(pred.dtype)
        total = cfg.mapper_adv * adv
        for k in range(pred.shape[1]):
            mse = F.mse_loss(pred[:, k], target[:, k])
            cos = F.cosine_similarity(pred[:, k], target[:, k], dim=1).mean()
            value, for_backward = global_contra(
                pred[:, k], target[:, k], cfg.temperature, cfg.contrastive_lam, cfg.contrastive_form
            )
            terms.update(
                {f"Loss/M/mse/{k}": mse.detach(), f"Loss/M/cos/{k}": cos.detach(), f"Loss/M/contra/{k}": value.detach()}
            )
            total = total + cfg.mapper_mse * mse + cfg.mapper_cos * (1 - cos) - cfg.mapper_contra * for_backward
        terms["Loss/M/total"] = total.detach()
        return total

    def g_pl(self, batch: dict, rnd: StepRandom) -> tuple[dict, dict]:
        cfg = self.cfg
        c, _ = self.conditions(batch, rnd, detach_mappers=True)
        c = c[:: cfg.pl_batch_shrink]
        img, ws = self.generate(c, rnd, mixing=cfg.pl_style_mixing)
        pl_noise = rnd.normal(tuple(img.shape)).to(img.dtype) / math.sqrt(img.shape[2] * img.shape[3])
        (grads,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
        lengths = grads.float().square().sum(dim=2).mean(dim=1).sqrt()
        with torch.no_grad():
            self.pl_mean.copy_(self.pl_mean.lerp(all_reduce_mean(lengths.mean()), cfg.pl_decay))
        penalty = (lengths - self.pl_mean).square().mean()
        terms = {"Loss/G/pl_penalty": penalty.detach(), "Loss/G/pl_mean": self.pl_mean.clone()}
        return {"G": penalty * cfg.pl_weight * cfg.pl_interval}, terms

    def d_main(self, batch: dict, rnd: StepRandom) -> tuple[dict, dict]:
        c, _ = self.conditions(batch, rnd, detach_mappers=True)
        with torch.no_grad():
            fake, _ = self.generate(c, rnd)
        logits_fake, _ = self.D(fake, c)
        logits_real, fts_real = self.D(batch["real"], c)
        loss_fake = F.softplus(logits_fake).mean()
        loss_real = F.softplus(-logits_real).mean()
        terms = {
            "Loss/D/fake": loss_fake.detach(),
            "Loss/D/real": loss_real.detach(),
            "Scores/real": logits_real.detach().mean(),
            "Scores/fake": logits_fake.detach().mean(),
        }
        loss = loss_fake + loss_real
        if self.cfg.itd > 0:
            loss = loss + self.contrastive_terms(fts_real, c, self.cfg.itd, "Loss/D/itd", terms)
        terms["Loss/D/total"] = loss.detach()
        return {"D": loss}, terms

    def d_r1(self, batch: dict, rnd: StepRandom) -> tuple[dict, dict]:
        c, _ = self.conditions(batch, rnd, detach_mappers=True)
        real = batch["real"].detach().requires_grad_(True)
        logits, _ = self.D(real, c)
        (grads,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grads.float().square().sum(dim=[1, 2, 3]).mean()
        return {"D": penalty * (self.cfg.r1_gamma / 2) * self.cfg.r1_interval}, {"Loss/D/r1_penalty": penalty.detach()}
