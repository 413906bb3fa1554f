"""Linear probes on embeddings built to carry or lack each planted factor, and their chance
levels against hand calculations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mindreader.evaluation.probes import PROBE_CS, probe_factors
from mindreader.evaluation.scenes import FACTORS, factor_table
from mindreader.synth.draws import Draws
from mindreader.synth.scenes import sample_scenes

N_TRAIN, N_TEST = 500, 250


@pytest.fixture(scope="module")
def factors() -> tuple[pd.DataFrame, pd.DataFrame]:
    scenes = sample_scenes(Draws(np.random.default_rng(7)), N_TRAIN + N_TEST)
    table = factor_table(scenes)
    return table.iloc[:N_TRAIN].reset_index(drop=True), table.iloc[N_TRAIN:].reset_index(drop=True)


def one_hot(labels: pd.Series, categories: list) -> np.ndarray:
    return (labels.to_numpy()[:, None] == np.array(categories, dtype=object)[None, :]).astype(np.float64)


def embeddings(
    table: pd.DataFrame, carried: list[str], categories: dict, rng: np.random.Generator, scale: float = 1.0
) -> np.ndarray:
    """One-hot codes of the ``carried`` factors (times ``scale``, with noise a tenth of it) beside
    16 dimensions of unit noise."""
    codes = [
        scale * (one_hot(table[f], categories[f]) + 0.1 * rng.standard_normal((len(table), len(categories[f]))))
        for f in carried
    ]
    return np.concatenate(codes + [rng.standard_normal((len(table), 16))], axis=1)


def majority(labels: pd.Series) -> float:
    return labels.astype(str).value_counts().iloc[0] / len(labels)


def run(factors, carried: list[str], scale: float = 1.0, seed: int = 0):
    train, test = factors
    categories = {f: sorted(set(train[f]) | set(test[f])) for f in FACTORS}
    rng = np.random.default_rng(seed)
    return probe_factors(
        embeddings(train, carried, categories, rng, scale),
        train,
        embeddings(test, carried, categories, rng, scale),
        test,
        n_boot=200,
        seed=seed,
    )


def test_every_factor_carried_is_recovered(factors):
    summary, per_image = run(factors, list(FACTORS))
    for factor in FACTORS:
        assert summary[factor]["value"] >= 0.95, (factor, summary[factor])
        assert summary[factor]["C"] in PROBE_CS
        lo, hi = summary[factor]["ci95"]
        assert lo <= summary[factor]["value"] <= hi
        assert per_image[factor].mean() == pytest.approx(summary[factor]["value"])
    assert len(per_image) == N_TEST


def test_factors_not_carried_stay_near_chance(factors):
    """Only the background colour is in the embedding: it alone is recovered."""
    summary, _ = run(factors, ["background_colour"])
    assert summary["background_colour"]["value"] >= 0.95
    for factor in FACTORS[1:]:
        assert summary[factor]["value"] <= summary[factor]["chance"] + 0.07, (factor, summary[factor])


def test_tiny_features_are_standardised(factors):
    """A factor coded at a thousandth of the noise's scale is still read: features are standardised
    before the (regularised) regression."""
    summary, _ = run(factors, ["largest_shape_colour"], scale=1e-3)
    assert summary["largest_shape_colour"]["value"] >= 0.95


def test_chance_is_the_test_sets_majority_share(factors):
    summary, _ = run(factors, [])
    train, test = factors
    for factor in FACTORS:
        assert summary[factor]["chance"] == pytest.approx(majority(test[factor]))


def test_chance_by_hand_and_a_single_training_class():
    """Training labels hold one class: the probe answers it everywhere. Chance counts the test
    labels (x twice in four), not the training ones (y everywhere)."""
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"f": ["y"] * 6})
    test = pd.DataFrame({"f": ["x", "y", "x", "z"]})
    summary, per_image = probe_factors(
        rng.standard_normal((6, 3)), train, rng.standard_normal((4, 3)), test, n_boot=50, seed=0, factors=["f"]
    )
    assert summary["f"]["chance"] == pytest.approx(2 / 4)
    assert summary["f"]["value"] == pytest.approx(1 / 4)
    assert summary["f"]["C"] is None
    assert per_image["f"].tolist() == [0, 1, 0, 0]


def probe_one_factor(labels: list[str]) -> dict:
    """The probe summary of a factor read from a coordinate that separates its classes by far."""
    rng = np.random.default_rng(1)
    codes = {label: i for i, label in enumerate(sorted(set(labels)))}
    x = np.column_stack([[5.0 * codes[label] for label in labels], rng.standard_normal(len(labels))])
    table = pd.DataFrame({"f": labels})
    summary, _ = probe_factors(x, table, x, table, n_boot=10, seed=0, factors=["f"])
    return summary["f"]


@pytest.mark.parametrize("per_class", [2, 30])  # 2: two folds (no class occurs more often); 30: three
def test_cross_validation_keeps_the_strongest_regularisation_among_equals(per_class):
    """Every C of the grid classifies the held-out folds perfectly: the tie goes to the first,
    most regularised C of the grid, 0.01."""
    summary = probe_one_factor(["a", "b"] * per_class)
    assert summary["C"] == 0.01 and summary["value"] == 1.0


def test_without_a_class_that_occurs_twice_there_is_no_cross_validation():
    assert probe_one_factor(["a", "b", "c"])["C"] == 1.0  # LogisticRegression's default


def test_same_seed_same_probe(factors):
    first, _ = run(factors, ["largest_shape_kind"], seed=3)
    second, _ = run(factors, ["largest_shape_kind"], seed=3)
    assert first == second


def test_mismatched_inputs_are_errors(factors):
    train, test = factors
    with pytest.raises(ValueError, match="one row per factor row"):
        probe_factors(np.zeros((3, 4)), train, np.zeros((N_TEST, 4)), test, n_boot=10, seed=0)
    with pytest.raises(ValueError, match="lacks columns"):
        probe_factors(
            np.zeros((N_TRAIN, 4)), train.drop(columns="shape_count"), np.zeros((N_TEST, 4)), test, n_boot=10, seed=0
        )
