"""Brain -> CLIP mappers: the paper's FmriClipRes, a MindEye-style MLP and ridge regression, their
losses, training with resumable checkpoints, and embedding retrieval metrics."""

from mindreader.mappers.cnn import FmriClipRes
from mindreader.mappers.losses import LOSSES, mapper_loss
from mindreader.mappers.mlp import ResidualMLP
from mindreader.mappers.models import MAPPERS, build_mapper, load_mapper, save_mapper
from mindreader.mappers.retrieval import embedding_metrics
from mindreader.mappers.ridge import LinearMapper, fit_ridge

__all__ = [
    "LOSSES",
    "MAPPERS",
    "FmriClipRes",
    "LinearMapper",
    "ResidualMLP",
    "build_mapper",
    "embedding_metrics",
    "fit_ridge",
    "load_mapper",
    "mapper_loss",
    "save_mapper",
]
