"""Dev-set metrics by name, computed with scikit-learn and scipy rather than hand-written formulas.

Every metric here is "higher is better", so early stopping can compare any of them the same way. Metrics must always
return a finite float: early stopping and the store's metadata cannot carry NaN, and a model that predicts a constant
(common in the first epochs) is a normal state, not an error. So an undefined correlation is reported as 0.0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from tasks.errors import DataError
from tasks.types import ProblemType


@dataclass(frozen=True)
class _Metric:
    problem_type: ProblemType
    fn: Callable[[NDArray, NDArray], float]
    binary_only: bool = False


def _accuracy(pred: NDArray, ref: NDArray) -> float:
    return float(accuracy_score(ref, pred))


def _f1(pred: NDArray, ref: NDArray) -> float:
    # GLUE convention (MRPC): binary F1 of the class at index 1; no true or predicted positives -> 0.0, not a warning.
    return float(f1_score(ref, pred, pos_label=1, average="binary", labels=[0, 1], zero_division=0.0))


def _matthews(pred: NDArray, ref: NDArray) -> float:
    return float(matthews_corrcoef(ref, pred))


def _correlation(stat: Callable[..., object], pred: NDArray, ref: NDArray) -> float:
    if len(pred) < 2:
        return 0.0  # a correlation needs two points; scipy would raise
    with warnings.catch_warnings():
        # Constant input makes the correlation undefined: scipy warns and returns NaN, which we report as 0.0.
        warnings.simplefilter("ignore")
        value = float(stat(pred, ref)[0])  # type: ignore[index]
    return value if math.isfinite(value) else 0.0


def _pearson(pred: NDArray, ref: NDArray) -> float:
    return _correlation(pearsonr, pred, ref)


def _spearman(pred: NDArray, ref: NDArray) -> float:
    return _correlation(spearmanr, pred, ref)


_METRICS: dict[str, _Metric] = {
    "accuracy": _Metric("classification", _accuracy),
    "f1": _Metric("classification", _f1, binary_only=True),
    "matthews": _Metric("classification", _matthews),
    "pearson": _Metric("regression", _pearson),
    "spearman": _Metric("regression", _spearman),
}

METRICS: tuple[str, ...] = tuple(_METRICS)
"""Supported metric names."""


def default_metrics(problem_type: ProblemType, n_labels: int = 0) -> tuple[str, ...]:
    """Metrics used when the caller names none: accuracy for any classification task, Spearman then Pearson for
    regression (Spearman first because it is the usual STS-B headline number and ignores the output scale)."""
    del n_labels  # accuracy is meaningful for any number of classes; kept so callers need not special-case
    if problem_type == "classification":
        return ("accuracy",)
    if problem_type == "regression":
        return ("spearman", "pearson")
    raise DataError(f"unknown problem type {problem_type!r}; expected 'classification' or 'regression'")


def validate_metric_names(names: Sequence[str], problem_type: ProblemType, n_labels: int = 0) -> tuple[str, ...]:
    """Return ``names`` as a tuple after checking they can be computed for this task.

    Checked up front (when a task is created) so a typo fails at once instead of after an hour of training.
    """
    if isinstance(names, str):
        raise DataError(f"metric names must be a list of names, not the string {names!r}")
    out = tuple(names)
    if not out:
        raise DataError("at least one metric is needed (the first one drives early stopping)")
    seen: set[str] = set()
    for name in out:
        spec = _METRICS.get(name)
        if spec is None:
            raise DataError(f"unknown metric {name!r}; supported: {', '.join(METRICS)}")
        if name in seen:
            raise DataError(f"metric {name!r} is listed twice")
        seen.add(name)
        if spec.problem_type != problem_type:
            raise DataError(f"metric {name!r} is for {spec.problem_type} tasks, but this task is {problem_type}")
        if spec.binary_only and n_labels != 2:
            raise DataError(f"metric {name!r} needs exactly 2 classes, but this task has {n_labels}")
    return out


def compute_metrics(names: Sequence[str], predictions: ArrayLike, references: ArrayLike) -> dict[str, float]:
    """Compute each named metric; keys keep the order of ``names``.

    Classification metrics take integer label indices, regression metrics take floats.
    """
    pred = np.asarray(predictions)
    ref = np.asarray(references)
    if pred.ndim != 1 or ref.ndim != 1:
        raise DataError(f"predictions and references must be 1-D, got shapes {pred.shape} and {ref.shape}")
    if len(pred) != len(ref):
        raise DataError(f"{len(pred)} predictions but {len(ref)} references")
    if len(pred) == 0:
        raise DataError("cannot compute metrics on zero examples")
    result: dict[str, float] = {}
    for name in names:
        spec = _METRICS.get(name)
        if spec is None:
            raise DataError(f"unknown metric {name!r}; supported: {', '.join(METRICS)}")
        if spec.problem_type == "classification":
            result[name] = spec.fn(_as_indices(pred, "predictions"), _as_indices(ref, "references"))
        else:
            result[name] = spec.fn(pred.astype(np.float64), ref.astype(np.float64))
    return result


def _as_indices(values: NDArray, what: str) -> NDArray:
    """Integer label indices; floats are accepted only when whole, so regression outputs can't sneak in truncated."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    raise DataError(f"classification {what} must be integer label indices, got dtype {values.dtype}")
