"""Metrics against hand-checked values, and the no-NaN guarantee for constant predictions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from tasks import METRICS, DataError, compute_metrics, default_metrics, validate_metric_names


@pytest.fixture(autouse=True)
def _warnings_are_errors() -> object:
    # The metrics module promises silence: a warning per evaluation would flood training logs.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_supported_names() -> None:
    assert set(METRICS) == {"accuracy", "f1", "matthews", "pearson", "spearman"}


def test_perfect_predictions_score_one() -> None:
    labels = [0, 1, 1, 0, 1]
    assert compute_metrics(["accuracy", "f1", "matthews"], labels, labels) == {
        "accuracy": 1.0,
        "f1": 1.0,
        "matthews": 1.0,
    }
    scores = [0.1, 2.0, 3.5, 4.9]
    result = compute_metrics(["pearson", "spearman"], scores, scores)
    assert result == pytest.approx({"pearson": 1.0, "spearman": 1.0})


def test_hand_checked_classification_case() -> None:
    # TP=2 (0, 4), FN=1 (1), FP=1 (3), TN=2 (2, 5)
    refs = [1, 1, 0, 0, 1, 0]
    preds = [1, 0, 0, 1, 1, 0]
    result = compute_metrics(["f1", "matthews", "accuracy"], preds, refs)
    assert list(result) == ["f1", "matthews", "accuracy"]  # order of the names kept
    assert result["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 2/3
    assert result["matthews"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))  # 1/3
    assert result["accuracy"] == pytest.approx(4 / 6)


def test_multiclass_matthews_and_accuracy() -> None:
    result = compute_metrics(["accuracy", "matthews"], np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
    assert result["accuracy"] == 0.75
    assert 0.0 < result["matthews"] < 1.0


def test_hand_checked_correlations() -> None:
    result = compute_metrics(["pearson", "spearman"], [1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert result["pearson"] == pytest.approx(9 / math.sqrt(84))  # cov 3 / (sqrt(2) * sqrt(42) / 3)
    assert result["spearman"] == pytest.approx(1.0)  # same ranking
    assert compute_metrics(["spearman"], [3.0, 2.0, 1.0], [1.0, 2.0, 4.0])["spearman"] == pytest.approx(-1.0)


def test_constant_predictions_give_zero_not_nan() -> None:
    result = compute_metrics(["accuracy", "f1", "matthews"], [0, 0, 0, 0], [0, 1, 1, 0])
    assert result == {"accuracy": 0.5, "f1": 0.0, "matthews": 0.0}
    result = compute_metrics(["pearson", "spearman"], [2.5, 2.5, 2.5], [1.0, 2.0, 4.0])
    assert result == {"pearson": 0.0, "spearman": 0.0}
    assert compute_metrics(["pearson"], [1.0], [2.0]) == {"pearson": 0.0}  # one point: undefined, reported as 0


def test_compute_errors() -> None:
    with pytest.raises(DataError, match="unknown metric 'bleu'"):
        compute_metrics(["bleu"], [0], [0])
    with pytest.raises(DataError, match="3 predictions but 2 references"):
        compute_metrics(["accuracy"], [0, 1, 1], [0, 1])
    with pytest.raises(DataError, match="zero examples"):
        compute_metrics(["accuracy"], [], [])
    with pytest.raises(DataError, match="integer label indices"):
        compute_metrics(["accuracy"], [0.4, 1.0], [0, 1])


def test_validate_metric_names() -> None:
    assert validate_metric_names(["f1", "accuracy"], "classification", 2) == ("f1", "accuracy")
    assert validate_metric_names(("pearson",), "regression") == ("pearson",)
    bad = [
        (["f1"], "classification", 3, "needs exactly 2 classes, but this task has 3"),
        (["pearson"], "classification", 2, "'pearson' is for regression tasks"),
        (["accuracy"], "regression", 0, "'accuracy' is for classification tasks"),
        (["accuracy", "accuracy"], "classification", 2, "listed twice"),
        ([], "classification", 2, "at least one metric"),
        (["rouge"], "classification", 2, "unknown metric 'rouge'"),
        ("accuracy", "classification", 2, "not the string"),
    ]
    for names, problem_type, n_labels, message in bad:
        with pytest.raises(DataError, match=message):
            validate_metric_names(names, problem_type, n_labels)  # type: ignore[arg-type]


def test_default_metrics() -> None:
    assert default_metrics("classification", 2) == ("accuracy",)
    assert default_metrics("classification", 5) == ("accuracy",)
    assert default_metrics("regression") == ("spearman", "pearson")
