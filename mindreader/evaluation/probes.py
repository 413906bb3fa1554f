"""Linear probes: how much of each planted scene factor an embedding space holds.

For each factor (`mindreader.evaluation.scenes.FACTORS`) a multinomial logistic regression on
standardised embeddings is fitted to the training images and scored on the test images. The
inverse regularisation C is chosen from PROBE_CS by stratified cross-validation on the training
images only (seeded), so the test images never shape the probe. Accuracy carries a bootstrap CI
over test images (the fitted probe held fixed) and a chance level: the share of the test set's
most frequent label, the accuracy of answering that label for every image, the best any probe
that ignores the embedding can do on this test set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mindreader.evaluation.bootstrap import mean_ci
from mindreader.evaluation.scenes import FACTORS

# Inverse regularisation strengths the cross-validation on the training images chooses from.
PROBE_CS = (0.01, 0.1, 1.0, 10.0)
CV_FOLDS = 3
MAX_ITER = 2000


def majority_share(labels: Sequence) -> float:
    """The share of the most frequent label: the accuracy of always answering it."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


def fit_probe(embeddings: np.ndarray, labels: np.ndarray, seed: int):
    """A fitted standardise + multinomial logistic regression pipeline, C chosen by CV on these
    (training) embeddings (C = 1 when no class occurs twice); None when the labels hold one class,
    which the probe then answers for every image."""
    classes = np.unique(labels)
    if len(classes) == 1:
        return None
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
    # stratification needs the most frequent class in every fold
    folds = min(CV_FOLDS, int(np.unique(labels, return_counts=True)[1].max()))
    if folds < 2:
        return probe.fit(embeddings, labels)
    search = GridSearchCV(
        probe,
        {"logisticregression__C": list(PROBE_CS)},
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
        scoring="accuracy",
    )
    with warnings.catch_warnings():
        # a probe that has not fully converged at the weakest regularisation still scores
        # honestly, and a class rarer than the folds is simply missing from some of them
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", message="The least populated class")
        search.fit(embeddings, labels)
    return search.best_estimator_


def _checked(name: str, embeddings: np.ndarray, table: pd.DataFrame, factors: Sequence[str]) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) != len(table):
        raise ValueError(
            f"{name} embeddings must be (N, D) with one row per factor row; got {embeddings.shape} for {len(table)} rows"
        )
    missing = [f for f in factors if f not in table.columns]
    if missing:
        raise ValueError(f"{name} factor table lacks columns {missing}; expected {list(factors)}")
    return embeddings


@dataclass(frozen=True)
class FactorProbe:
    """One factor's fitted probe, or (``probe`` None) the one training label it answers always."""

    probe: Any  # fitted pipeline (fit_probe) or None
    constant: str  # the answer when probe is None
    dim: int  # embedding width it reads


def fit_probes(
    train_embeddings: np.ndarray,  # float (N_train, D) embeddings of the training images
    train_factors: pd.DataFrame,  # their factor labels, a column per factor (scenes.factor_table)
    seed: int,  # seed of the folds
    factors: Sequence[str] = FACTORS,  # which columns to probe
) -> dict[str, FactorProbe]:
    """Factor -> its probe fitted on the training images (fit_probe), to score any test set."""
    train_embeddings = _checked("train", train_embeddings, train_factors, factors)
    probes = {}
    for factor in factors:
        labels = train_factors[factor].astype(str).to_numpy()
        probes[factor] = FactorProbe(fit_probe(train_embeddings, labels, seed), labels[0], train_embeddings.shape[1])
    return probes


def score_probes(
    probes: Mapping[str, FactorProbe],  # fit_probes
    test_embeddings: np.ndarray,  # float (N_test, D) embeddings of the test images
    test_factors: pd.DataFrame,  # their factor labels
    n_boot: int,  # bootstrap resamples of the test images
    seed: int,  # seed of the resamples
) -> tuple[dict, pd.DataFrame]:
    """Factor -> {value (test accuracy), ci95, chance (test majority share), C (chosen, None for a
    constant answer)}, and a per-test-image table of 0/1 correctness, a column per factor."""
    test_embeddings = _checked("test", test_embeddings, test_factors, list(probes))
    summary, per_image = {}, {}
    for factor, fitted in probes.items():
        if test_embeddings.shape[1] != fitted.dim:
            raise ValueError(f"train embeddings have {fitted.dim} dimensions, test ones {test_embeddings.shape[1]}")
        test_labels = test_factors[factor].astype(str).to_numpy()
        if fitted.probe is None:
            predicted = np.full(len(test_labels), fitted.constant)
        else:
            predicted = fitted.probe.predict(test_embeddings)
        correct = (predicted == test_labels).astype(np.float64)
        per_image[factor] = correct.astype(int)
        summary[factor] = {
            **mean_ci(correct, n_boot, seed),
            "chance": majority_share(test_labels),
            "C": None if fitted.probe is None else float(fitted.probe.get_params()["logisticregression__C"]),
        }
    return summary, pd.DataFrame(per_image)


def probe_factors(
    train_embeddings: np.ndarray,  # float (N_train, D) embeddings of the training images
    train_factors: pd.DataFrame,  # their factor labels, a column per factor (scenes.factor_table)
    test_embeddings: np.ndarray,  # float (N_test, D) embeddings of the test images
    test_factors: pd.DataFrame,  # their factor labels
    n_boot: int,  # bootstrap resamples of the test images
    seed: int,  # seed of the folds and the resamples
    factors: Sequence[str] = FACTORS,  # which columns to probe
) -> tuple[dict, pd.DataFrame]:
    """Probes fitted on the training embeddings (fit_probes), scored on the test ones (score_probes)."""
    _checked("test", test_embeddings, test_factors, factors)
    probes = fit_probes(train_embeddings, train_factors, seed, factors)
    return score_probes(probes, test_embeddings, test_factors, n_boot, seed)
