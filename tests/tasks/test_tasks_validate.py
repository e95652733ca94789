"""In-memory validation, the path the server uses for examples that arrive over the network."""

from __future__ import annotations

import pytest

from tasks import DataError, Example, check_label_set, check_problem_type, examples_from_records, validate_examples


def test_records_become_examples() -> None:
    examples = examples_from_records([("a", None, "pos"), ("b", "c", "neg")], "classification", ["neg", "pos"], "req")
    assert examples == [Example("a", None, "pos"), Example("b", "c", "neg")]
    scores = examples_from_records([("a", "b", "3.5"), ("c", "d", "0")], "regression", [], "req")
    assert [e.label for e in scores] == [3.5, 0.0]


@pytest.mark.parametrize(
    ("records", "problem_type", "message"),
    [
        ([("a", None, "pos"), ("", None, "pos")], "classification", r"req\.train: example at index 1: text is empty"),
        ([("a", "", "pos")], "classification", r"example at index 0: text_pair is empty"),
        ([("a", None, "maybe")], "classification", r"index 0: label 'maybe' is not one of the task's labels"),
        ([("a", None, "")], "classification", r"index 0: label is empty"),
        ([("a", None, "x")], "regression", r"index 0: regression label 'x' is not a number"),
        ([("a", None, "nan")], "regression", r"index 0: regression label 'nan' is not a finite number"),
        ([("a", None)], "classification", r"index 0: expected \(text, text_pair, label\)"),
    ],
)
def test_bad_records_name_the_index(records: list, problem_type: str, message: str) -> None:
    labels = ["neg", "pos"] if problem_type == "classification" else []
    with pytest.raises(DataError, match=message):
        examples_from_records(records, problem_type, labels, "req.train")  # type: ignore[arg-type]


def test_validate_examples() -> None:
    validate_examples([Example("a", None, "x"), Example("b", "c", "y")], "classification", ["x", "y"], "dev")
    validate_examples([Example("a", None, 1.0)], "regression", [], "dev")
    cases: list[tuple[object, str, str]] = [
        (Example("a", None, "z"), "classification", "label 'z' is not one of"),
        (Example("a", None, 1.0), "classification", "classification label must be a class name"),
        (Example("a", None, "1"), "regression", "regression label must be a number"),
        (Example("a", None, float("inf")), "regression", "regression label inf is not a finite number"),
        (Example(" ", None, "x"), "classification", "text is empty"),
        (("a", None, "x"), "classification", "expected an Example, got tuple"),
    ]
    for bad, problem_type, reason in cases:
        labels = ["x", "y"] if problem_type == "classification" else []
        with pytest.raises(DataError, match=rf"^dev: example at index 1: {reason}"):
            validate_examples([Example("ok", None, "x" if labels else 0.5), bad], problem_type, labels, "dev")  # type: ignore[list-item, arg-type]


def test_label_set_and_problem_type_checks() -> None:
    assert check_label_set(["b", "a"], "classification") == ("b", "a")
    assert check_label_set([], "regression") == ()
    for labels, message in [(["a"], "at least 2 labels"), (["a", "a", "b"], "repeats 'a'"), (["a", ""], "non-empty")]:
        with pytest.raises(DataError, match=message):
            check_label_set(labels, "classification")
    with pytest.raises(DataError, match="not the string"):
        check_label_set("ab", "classification")
    assert check_problem_type("regression") == "regression"
    with pytest.raises(DataError, match="unknown problem type 'ranking'"):
        check_problem_type("ranking")
