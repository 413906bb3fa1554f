"""Lafite-style CLIP-conditioned StyleGAN2 (Mind Reader's image generator), in plain PyTorch.

Public surface:
- networks: ``Generator``, ``Discriminator`` (networks.py); ``load_generator``, ``load_networks``
  (store.py) read a trained run folder.
- conditioning: ``VARIANTS`` / ``get_variant`` (img, cap, img+cap, avg, cat), ``perturb``,
  ``expand_conditions`` (one -> two conditions).
- training: ``LossConfig``, ``LafiteLoss`` (loss.py), ``TrainConfig``, ``Trainer`` (training.py),
  ``run`` (stages.py: pretrain / finetune / e2e from a job dict), ``launch`` (launch.py: torchrun).
- reconstruction: ``reconstruct``, ``generate_images`` (reconstruct.py).
"""

from mindreader.generator.conditioning import VARIANTS, expand_conditions, get_variant, perturb
from mindreader.generator.loss import LafiteLoss, LossConfig
from mindreader.generator.networks import Discriminator, Generator
from mindreader.generator.reconstruct import generate_images, reconstruct
from mindreader.generator.stages import run
from mindreader.generator.store import load_generator, load_networks
from mindreader.generator.training import TrainConfig, Trainer

__all__ = [
    "VARIANTS",
    "Discriminator",
    "Generator",
    "LafiteLoss",
    "LossConfig",
    "TrainConfig",
    "Trainer",
    "expand_conditions",
    "generate_images",
    "get_variant",
    "load_generator",
    "load_networks",
    "perturb",
    "reconstruct",
    "run",
]
