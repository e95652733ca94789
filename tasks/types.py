"""Plain data types shared by loaders, sampling, the trainer and the client (no torch, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ProblemType = Literal["classification", "regression"]
PROBLEM_TYPES: tuple[ProblemType, ...] = ("classification", "regression")


@dataclass(frozen=True)
class Example:
    """One labelled input: a sentence or a sentence pair.

    ``label`` is the class *name* for classification (indices are derived from ``TaskData.labels``, so a reordered
    label list can never silently flip classes) and a float for regression.
    """

    text: str
    text_pair: str | None
    label: str | float


@dataclass(frozen=True)
class TaskData:
    """A validated task: its label space, its metrics and both splits.

    ``metrics[0]`` is the primary metric, the one early stopping and keep-best use.
    """

    name: str
    problem_type: ProblemType
    labels: tuple[str, ...]  # class names in index order; () for regression
    metrics: tuple[str, ...]
    train: list[Example]
    dev: list[Example]
