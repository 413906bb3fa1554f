"""Names the workflow's rules and the library share, importable without torch (every Snakemake
invocation, and every cluster job, parses the rules: importing torch there cost seconds each).

- ``VARIANTS`` / ``get_variant``: the generator's conditioning variants (ablation wildcard).
- ``MAPPER_OUTPUT_FILES``: the files of one trained mapper's folder.
- ``ABLATION_TABLES`` / ``TABLE_NAMES``: the paper's tables.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """A conditioning variant: which predicted embeddings condition G, and how branches fuse."""

    name: str
    targets: tuple[str, ...]  # mapper targets, one condition each: "img" (image), "cap" (caption)
    fusion: str  # how the condition branches combine when there are two: max, avg, cat


VARIANTS = {
    "img": Variant("img", ("img",), "max"),
    "cap": Variant("cap", ("cap",), "max"),
    "img+cap": Variant("img+cap", ("img", "cap"), "max"),  # the paper's two-head model
    "avg": Variant("avg", ("img", "cap"), "avg"),
    "cat": Variant("cat", ("img", "cap"), "cat"),
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown conditioning variant '{name}'; choose one of {sorted(VARIANTS)}") from None


MAPPER_OUTPUT_FILES = ("model.safetensors", "model.json", "curve.csv", "pred_test.h5", "pred_train.h5", "metrics.json")

# (table name, axis varied, what the table shows)
ABLATION_TABLES = (
    ("conditioning", "variant", "Conditioning: image only, caption only, two-head (and others configured)"),
    ("initialisation", "strategy", "Generator initialisation: pre-trained (finetune) vs from scratch"),
    ("training_strategy", "strategy", "Training strategy: frozen mappers (finetune) vs end-to-end (e2e)"),
    ("mapper_losses", "loss", "Mapper losses"),
)
TABLE_NAMES = tuple(name for name, _, _ in ABLATION_TABLES) + ("comparison",)
