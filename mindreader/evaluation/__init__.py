"""Evaluation of reconstructions: the metric battery with bootstrap CIs per run, the paper's
tables, the figures and the report's pieces.

Public surface: `evaluate_run` / `write_run` (one run's metrics JSON and per-image CSV),
`load_sources` (the feature networks whose weights are present, and why the others are
missing), `METRICS` (the battery as data), and the table and figure builders in
`mindreader.evaluation.tables` and `mindreader.evaluation.figures`.
"""

from mindreader.evaluation.battery import METRIC_BY_KEY, METRICS, BatteryConfig, Metric, evaluate_images
from mindreader.evaluation.run import battery_config, evaluate_run, load_sources, write_run

__all__ = [
    "METRICS",
    "METRIC_BY_KEY",
    "BatteryConfig",
    "Metric",
    "battery_config",
    "evaluate_images",
    "evaluate_run",
    "load_sources",
    "write_run",
]
