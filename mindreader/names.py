"""Names the workflow's rules and the library share, importable without torch (every Snakemake
invocation, and every cluster job, parses the rules: importing torch there cost seconds each).

- ``VARIANTS`` / ``get_variant``: the generator's conditioning variants (ablation wildcard).
- ``MAPPER_OUTPUT_FILES``: the files of one trained mapper's folder.
- ``VIEW_DRAWS`` / ``check_view_draw``: how a mapper's training sample picks an augmented view.
- ``ABLATION_TABLES`` / ``TABLE_NAMES``: the paper's tables.
- ``RECONSTRUCTION_SOURCES`` / ``ORACLE_SUFFIX``: what a run's reconstructions are drawn from.
- ``RUN_KEYS`` / ``run_key`` / ``EXTERNAL_PREFIX``: how a run, and another method's row, is named.
- ``SCENE_STAGES`` / ``NO_MAPPER``: the sources (stages) of the information table.
- ``PRETRAIN_OVERRIDES`` / ``stage_generator_config``: the generator settings a training stage
  uses (pre-training may set its own batch, GPUs, R1 weight, EMA, x-flips, contrastive form, z).
- ``GENERATOR_WEIGHT_ARGUMENTS``: the generator config keys that a pre-trained network must share.
- ``GENERATOR_RUN_FILES``: the files of a trained generator's folder (a run's, pre-training's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class Variant:
    """A conditioning variant: which predicted embeddings condition G, and how they are combined.

    ``combine`` "separate": one condition (one G branch and one D head) per target, their branch
    outputs fused by ``fusion``; "mean": the targets' embeddings averaged into ONE condition (the
    original's ``use_mapped='add'``).
    """

    name: str
    targets: tuple[str, ...]  # mapper targets: "img" (image), "cap" (caption)
    fusion: str = "max"  # how the branches of separate conditions combine: max, avg, cat
    combine: str = "separate"  # "separate": one condition per target; "mean": their mean as one
    in_paper: bool = True  # False: an extra ablation of ours that the paper does not compare

    @property
    def n_conditions(self) -> int:
        return 1 if self.combine == "mean" else len(self.targets)


VARIANTS = {
    "img": Variant("img", ("img",)),
    "cap": Variant("cap", ("cap",)),
    "img+cap": Variant("img+cap", ("img", "cap"), "max"),  # the paper's two-head model
    "avg": Variant("avg", ("img", "cap"), combine="mean"),  # the original's use_mapped='add'
    "img+cap-avg": Variant("img+cap-avg", ("img", "cap"), "avg", in_paper=False),
    "img+cap-cat": Variant("img+cap-cat", ("img", "cap"), "cat", in_paper=False),
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown conditioning variant '{name}'; choose one of {sorted(VARIANTS)}") from None


MAPPER_OUTPUT_FILES = ("model.safetensors", "model.json", "curve.csv", "pred_test.h5", "pred_train.h5", "metrics.json")

# mappers.train.view_draw: which of its image's K stored augmented views (clip.n_aug) a sample
# reads in an epoch. random: one drawn with replacement; fresh: one it has not read in an earlier
# epoch, as the original's fresh view at every read.
VIEW_DRAWS = ("random", "fresh")


def check_view_draw(train: Mapping, n_views: int) -> None:
    """Fail unless the ``mappers.train`` section's view_draw can be met with ``n_views`` stored
    views per image (clip.n_aug; 0: plain targets): fresh needs one per epoch, so that no view
    is read twice by a sample. The workflow checks this when it parses the config, training again."""
    if train["view_draw"] not in VIEW_DRAWS:
        raise ValueError(f"mappers.train.view_draw must be one of {', '.join(VIEW_DRAWS)}, got {train['view_draw']!r}")
    drawn = train["augmented_targets"] or train["augmented_validation"]
    if train["view_draw"] == "fresh" and drawn and 0 < n_views < train["epochs"]:
        raise ValueError(
            f"mappers.train.view_draw 'fresh' gives each sample, in every epoch, an augmented view it has not read "
            f"before: it needs clip.n_aug >= mappers.train.epochs, got clip.n_aug {n_views} < mappers.train.epochs "
            f"{train['epochs']} (raise clip.n_aug, or use view_draw 'random', which draws with replacement)"
        )

# (table name, axis varied, what the table shows)
ABLATION_TABLES = (
    ("conditioning", "variant", "Conditioning: image only, caption only, two-head (and others configured)"),
    ("initialisation", "strategy", "Generator initialisation: pre-trained (finetune) vs from scratch"),
    ("training_strategy", "strategy", "Training strategy: frozen mappers (finetune) vs end-to-end (e2e)"),
    ("mapper_losses", "loss", "Mapper losses"),
)
TABLE_NAMES = tuple(name for name, _, _ in ABLATION_TABLES) + ("comparison",)

# A run's reconstructions come from the brain (the mappers' predicted test embeddings) or, as the
# generator's ceiling, from the oracle (the test images' true CLIP embeddings through the same
# G_ema, z and seed); the oracle's files carry this suffix after the strategy.
RECONSTRUCTION_SOURCES = ("brain", "oracle")
ORACLE_SUFFIX = "_oracle"
RUN_KEYS = ("subject", "mapper", "loss", "variant", "strategy")
# Other methods' reconstructions (evaluation.external) are rows named with this prefix.
EXTERNAL_PREFIX = "external:"


def run_key(run: Mapping[str, str], source: str) -> str:
    """'subj01/cnn/mse_cos_contrastive/img+cap/finetune' (+ ORACLE_SUFFIX for the oracle): a row of
    results/metrics/comparison.json, as the run's metrics file is named."""
    return "/".join(run[k] for k in RUN_KEYS) + (ORACLE_SUFFIX if source == "oracle" else "")

# The workflow's rules whose jobs resume from a checkpoint, and so may run as several jobs.
TRAINING_RULES = ("train_mapper", "pretrain_generator", "finetune_generator", "finetune_e2e")

# The stages of the information table (results/tables/scene_recovery.*): probes on the true CLIP
# embeddings, the same probes on the mappers' predictions, scene recovery of the oracle and of the
# brain-driven reconstructions (mindreader.evaluation.information). NO_MAPPER: the mapper column
# of the rows no mapper is involved in (clip).
SCENE_STAGES = ("clip", "brain_embedding", "oracle", "brain")
NO_MAPPER = "-"


# Keys of generator.* that generator.pretrain may set for language-free pre-training alone (Lafite
# pre-trained with its own batch, GPUs, R1 weight, EMA half-life, x-flips, contrastive form and
# random z); null there: the shared key's value.
PRETRAIN_OVERRIDES = ("batch", "gpus", "r1_gamma", "ema_kimg", "mirror", "contrastive_form", "train_z")


def stage_generator_config(generator: Mapping, stage: str) -> dict:
    """The generator section as ``stage`` trains with it: for pretrain, generator.pretrain's
    non-null PRETRAIN_OVERRIDES replace the shared keys; fine-tuning and e2e use the shared keys."""
    out = dict(generator)
    if stage == "pretrain":
        overrides = generator["pretrain"]
        out.update({key: overrides[key] for key in PRETRAIN_OVERRIDES if overrides.get(key) is not None})
    return out


# Constructor arguments that fix the shapes and scales of the stored weights: a pre-trained folder
# (ours, an imported Lafite model, or generator.init's) must agree with the config on them; the
# conditions, fusion and precision settings may differ. Value: the config key, where it differs.
GENERATOR_WEIGHT_ARGUMENTS = {
    "generator": {
        "z_dim": "z_dim",
        "w_dim": "w_dim",
        "img_resolution": "resolution",
        "branch_width": "branch_width",
        "channel_base": "channel_base",
        "channel_max": "channel_max",
        "mapping_layers": "mapping_layers",
        "branch_lr_multiplier": "branch_lr_multiplier",
        "use_noise": "noise_inputs",
    },
    "discriminator": {
        "img_resolution": "resolution",
        "channel_base": "channel_base",
        "channel_max": "channel_max",
    },
}

# The files of a trained generator's folder: its networks, network.json, and its losses.
GENERATOR_RUN_FILES = ("network.json", "G.safetensors", "G_ema.safetensors", "D.safetensors", "losses.csv")
