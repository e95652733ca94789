"""The example rules, in one place, for file loaders and for examples the server receives over the network.

A cell-level check raises :class:`DataError` with a short reason; the caller adds *where* (file and row, or request
field and index). That keeps one wording per rule whether the data came from a CSV file or a gRPC message.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from tasks.errors import DataError
from tasks.types import PROBLEM_TYPES, Example, ProblemType

Record = tuple[str, str | None, object]
"""``(text, text_pair, label)`` as received: the label as a string (network, CSV) or a JSON scalar."""


def check_problem_type(problem_type: str) -> ProblemType:
    """Return ``problem_type`` typed, or raise; strings from the network or CLI go through here."""
    if problem_type not in PROBLEM_TYPES:
        raise DataError(f"unknown problem type {problem_type!r}; expected one of {', '.join(PROBLEM_TYPES)}")
    return problem_type  # type: ignore[return-value]


def check_label_set(labels: Sequence[str], problem_type: ProblemType) -> tuple[str, ...]:
    """Validate a caller-given label list (its order is the index order the head will use)."""
    if problem_type == "regression":
        if labels:
            raise DataError("a regression task takes no label list")
        return ()
    if isinstance(labels, str):
        raise DataError(f"labels must be a list of class names, not the string {labels!r}")
    out = tuple(labels)
    for label in out:
        if not isinstance(label, str) or not label.strip():
            raise DataError(f"label names must be non-empty strings, got {label!r}")
    duplicates = sorted({label for label in out if out.count(label) > 1})
    if duplicates:
        raise DataError(f"label list repeats {', '.join(map(repr, duplicates))}")
    if len(out) < 2:
        raise DataError(f"a classification task needs at least 2 labels, got {list(out)}")
    return out


def label_to_str(value: object) -> str:
    """A classification label cell as a class name.

    JSON numbers become their decimal text so ``0``/``1`` in JSONL match ``"0"``/``"1"`` in CSV; whole floats drop
    the ``.0`` for the same reason. Empty, NaN and non-scalar values are errors.
    """
    if value is None:
        raise DataError("label is empty")
    if isinstance(value, bool):
        return "true" if value else "false"  # JSON spelling, so JSONL and CSV files agree
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(f"label is {value}")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise DataError("label is empty")
        if text.lower() == "nan":
            raise DataError(f"label is {text!r}, which reads as a missing value")
        return text
    raise DataError(f"label must be a string or number, got {type(value).__name__}")


def label_to_float(value: object) -> float:
    """A regression label cell as a finite float; NaN and inf would poison the loss, so they are rejected here."""
    if value is None:
        raise DataError("label is empty")
    if isinstance(value, bool):
        raise DataError(f"regression label must be a number, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        if not value.strip():
            raise DataError("label is empty")
        try:
            number = float(value)
        except ValueError:
            raise DataError(f"regression label {value!r} is not a number") from None
    else:
        raise DataError(f"regression label must be a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise DataError(f"regression label {value!r} is not a finite number")
    return number


def check_text(value: object, field: str) -> str:
    """A text cell: a string with something other than whitespace (an empty input trains the head on padding)."""
    if value is None:
        raise DataError(f"{field} is empty")
    if not isinstance(value, str):
        raise DataError(f"{field} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{field} is empty")
    return value


def infer_labels(raw_labels: Iterable[str]) -> tuple[str, ...]:
    """The sorted distinct class names; numerically when every name is an integer, so "10" sorts after "9"."""
    distinct = set(raw_labels)
    try:
        return tuple(sorted(distinct, key=int))
    except ValueError:
        return tuple(sorted(distinct))


def make_example(text: object, text_pair: object, label: object, problem_type: ProblemType) -> Example:
    """One example from raw cells, with the label converted to its kind (class name or float).

    Membership in a label set is checked separately (:func:`check_in_label_set`) because the set may not be known
    until the whole train file has been read.
    """
    pair = None if text_pair is None else check_text(text_pair, "text_pair")
    converted: str | float = label_to_str(label) if problem_type == "classification" else label_to_float(label)
    return Example(check_text(text, "text"), pair, converted)


def check_in_label_set(label: str | float, labels: Sequence[str]) -> None:
    """Raise unless a class name is one of ``labels``."""
    if label not in labels:
        raise DataError(f"label {label!r} is not one of the task's labels ({', '.join(map(repr, labels))})")


def check_has_two_classes(examples: Sequence[Example], where: str) -> None:
    """A classifier trained on one class learns nothing; reject it before spending a training job on it."""
    classes = {example.label for example in examples}
    if len(classes) < 2:
        only = ", ".join(map(repr, sorted(map(str, classes)))) or "none"
        raise DataError(f"{where}: training data has a single class ({only}); a classifier needs at least two")


def validate_examples(
    examples: Sequence[Example], problem_type: ProblemType, labels: Sequence[str], where: str
) -> None:
    """Check in-memory examples against the same rules as the file loaders.

    ``where`` names the source in messages (e.g. ``"request.train"``); the failing example is named by its 0-based
    index, the position a caller would use to find it in the list it sent.
    """
    problem_type = check_problem_type(problem_type)
    label_set = check_label_set(labels, problem_type)
    for index, example in enumerate(examples):
        try:
            if not isinstance(example, Example):
                raise DataError(f"expected an Example, got {type(example).__name__}")
            check_text(example.text, "text")
            if example.text_pair is not None:
                check_text(example.text_pair, "text_pair")
            if problem_type == "classification":
                if not isinstance(example.label, str):
                    raise DataError(f"classification label must be a class name, got {example.label!r}")
                check_in_label_set(example.label, label_set)
            else:
                if isinstance(example.label, bool) or not isinstance(example.label, int | float):
                    raise DataError(f"regression label must be a number, got {example.label!r}")
                if not math.isfinite(example.label):
                    raise DataError(f"regression label {example.label!r} is not a finite number")
        except DataError as err:
            raise DataError(f"{where}: example at index {index}: {err}") from None


def examples_from_records(
    records: Iterable[Record], problem_type: ProblemType, labels: Sequence[str], where: str
) -> list[Example]:
    """Build validated examples from ``(text, text_pair, label)`` tuples, e.g. those in a gRPC request.

    Labels arrive as strings on the wire: for regression they are parsed as floats here; for classification they
    must be in ``labels``. Errors name ``where`` and the 0-based index.
    """
    problem_type = check_problem_type(problem_type)
    label_set = check_label_set(labels, problem_type)
    examples: list[Example] = []
    for index, record in enumerate(records):
        try:
            text, text_pair, label = record
            example = make_example(text, text_pair, label, problem_type)
            if problem_type == "classification":
                check_in_label_set(example.label, label_set)
        except DataError as err:
            raise DataError(f"{where}: example at index {index}: {err}") from None
        except (TypeError, ValueError):
            raise DataError(f"{where}: example at index {index}: expected (text, text_pair, label)") from None
        examples.append(example)
    return examples
