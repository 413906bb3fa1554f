"""The paper's numbers are pinned: every default that ../shared/docs/method.md states, in both
config/nsd.yaml (the paper on real NSD) and the schema's defaults (what a config that leaves a
key out gets). A wrong number in either file fails here."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO

NSD = yaml.safe_load((REPO / "config" / "nsd.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())

# (dotted key, the paper's value, where method.md states it)
PAPER = [
    ("clip.clamp", 1.5, "CLIP targets: clamped to [-1.5, 1.5]"),
    ("clip.normalize", True, "and L2-normalised"),
    ("mappers.cnn.hidden", 64, "fmri_clip_res: Conv1d(1 -> 64)"),
    ("mappers.cnn.blocks", 4, "4 residual blocks"),
    ("mappers.cnn.head_hidden", 128, "Conv1d(L/2 -> 128)"),
    ("mappers.cnn.voxel_order", "zyx", "the original's voxel order: x varies fastest"),
    ("mappers.loss.cos_weight", 0.6, "w = cos weight 0.6"),
    ("mappers.loss.temperature", 0.5, "tau = 0.5"),
    ("mappers.loss.row_weight", 0.5, "lambda = 0.5"),
    ("mappers.loss.contrastive_weight", 0.5, "p = 0.5"),
    ("mappers.train.lr", 2e-4, "Adam lr 2e-4"),
    ("mappers.train.weight_decay", 1e-5, "weight decay 1e-5"),
    ("mappers.train.epochs", 40, "40 epochs"),
    ("mappers.train.batch_size", 128, "batch 128"),
    ("mappers.train.batch_size_plain", 32, "32 without the contrastive term"),
    ("mappers.train.lr_step_epochs", 10, "lr x 0.8 every 10 epochs"),
    ("mappers.train.lr_gamma", 0.8, "lr x 0.8"),
    ("mappers.train.reset_optimizer_on_decay", True, "re-creates Adam at each decay"),
    ("generator.resolution", 256, "Resolution 256 in the paper"),
    ("generator.z_dim", 512, "z = w = 512"),
    ("generator.w_dim", 512, "z = w = 512"),
    ("generator.mapping_layers", 8, "mapping network 8 FC layers"),
    ("generator.channel_base", 32768, "channel_base 32768"),
    ("generator.channel_max", 512, "channel_max 512"),
    ("generator.branch_width", 512, "condition branches (Lafite f_dim 512)"),
    ("generator.branch_lr_multiplier", 0.01, "two FC layers (lrelu, lr multiplier 0.01)"),
    ("generator.noise_inputs", True, "noise inputs"),
    ("generator.batch", 16, "batch 16 per GPU"),
    ("generator.lr", 0.0025, "Adam lr 0.0025"),
    ("generator.betas", [0.0, 0.99], "betas (0, 0.99)"),
    ("generator.r1_gamma", None, "R1 gamma 0.0002 * 256^2 / 16 (null: that heuristic)"),
    ("generator.r1_interval", 16, "lazy regularisation (StyleGAN2: R1 every 16 steps)"),
    ("generator.pl_weight", 2.0, "path-length regularisation (StyleGAN2: weight 2)"),
    ("generator.pl_interval", 4, "lazy regularisation (StyleGAN2: path length every 4 steps)"),
    ("generator.style_mixing", 0.9, "style mixing 0.9"),
    ("generator.pl_style_mixing", True, "(also in the path-length step)"),
    ("generator.ema_kimg", 5.0, "EMA 5 kimg"),
    ("generator.ema_rampup", 0.05, "with ramp-up 0.05 when not resuming"),
    ("generator.itc", 10.0, "itd = itc = 10"),
    ("generator.itd", 10.0, "itd = itc = 10"),
    ("generator.temperature", 0.5, "Contrastive terms (temperature 0.5)"),
    ("generator.contrastive_lam", 0.0, "Lafite and Mind Reader train with lam = 0"),
    ("generator.itc_crop", [0.5, 1.0], "a random crop of 0.5-1.0 of the side"),
    ("generator.pretrain.signal_weight", 0.25, "h' = normalize(0.25 * h_img + 0.75 * e)"),
    ("generator.pretrain.use_augmented", False, "conditions on the clean image embedding"),
    ("generator.finetune.signal_weight", 0.9, "normalize(0.9 * c + 0.1 * e)"),
    ("generator.e2e.mse", 0.2, "0.2 * MSE"),
    ("generator.e2e.cos", 0.3, "0.3 * (1 - cos)"),
    ("generator.e2e.contra", 0.5, "0.5 * contra"),
    ("generator.e2e.adv", 0.1, "0.1 * softplus(-D(G))"),
    ("generator.e2e.mapper_lr", None, "G's optimiser settings (null: G's lr)"),
    ("generator.e2e.mapper_betas", None, "G's optimiser settings (null: G's betas)"),
    ("generator.e2e.mapper_lazy_interval", 10, "lr = 0.0025 * 10/11, betas 0.99^(10/11)"),
    ("generator.e2e.loss_input", "perturbed", "on the perturbed, normalised predictions"),
]


def config_value(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def schema_default(dotted: str):
    node = SCHEMA
    for part in dotted.split("."):
        node = node["properties"][part]
    return node["default"]


@pytest.mark.parametrize("key, value, source", PAPER, ids=[k for k, _, _ in PAPER])
def test_paper_config_has_the_papers_value(key, value, source):
    assert config_value(NSD, key) == value, f"config/nsd.yaml {key}: method.md says {source}"


@pytest.mark.parametrize("key, value, source", PAPER, ids=[k for k, _, _ in PAPER])
def test_schema_default_is_the_papers_value(key, value, source):
    assert schema_default(key) == value, f"config/schema.yaml {key}: method.md says {source}"


def test_clip_is_vit_b32_and_r1_gamma_resolves_to_the_papers():
    from mindreader.generator.stages import r1_gamma

    assert NSD["clip"]["model"].startswith("ViT-B-32")
    assert r1_gamma(NSD["generator"]) == pytest.approx(0.0002 * 256**2 / 16)
    assert r1_gamma(NSD["generator"]) == pytest.approx(0.8192)
