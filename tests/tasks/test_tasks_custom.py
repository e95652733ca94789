"""Custom task files: the happy paths per format, and one test per bad-data rule, each checking the message says
which file, row (or line) and column to fix."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tasks import DataError, Example, TaskData, load_custom

CSV_TRAIN = 'text,label\n"good, really",pos\nbad,neg\nfine,pos\n'
CSV_DEV = "text,label\nawful,neg\nlovely,pos\n"


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def jsonl(path: Path, rows: Sequence[object]) -> Path:
    return write(path, "".join(json.dumps(row) + "\n" for row in rows))


def load_cls(train: Path, dev: Path, **kwargs: Any) -> TaskData:
    return load_custom("t", train, dev, text_column="text", label_column="label", **kwargs)


@pytest.fixture
def csv_dev(tmp_path: Path) -> Path:
    return write(tmp_path / "dev.csv", CSV_DEV)


# ---------------------------------------------------------------- happy paths


def test_csv_classification_infers_sorted_labels(tmp_path: Path, csv_dev: Path) -> None:
    data = load_custom(
        "sent", write(tmp_path / "train.csv", CSV_TRAIN), csv_dev, text_column="text", label_column="label"
    )
    assert data.name == "sent" and data.problem_type == "classification"
    assert data.labels == ("neg", "pos")
    assert data.metrics == ("accuracy",)
    assert data.train[0] == Example("good, really", None, "pos")  # CSV quoting honoured
    assert [e.label for e in data.dev] == ["neg", "pos"]


def test_given_labels_fix_the_index_order(tmp_path: Path, csv_dev: Path) -> None:
    data = load_cls(
        write(tmp_path / "train.csv", CSV_TRAIN), csv_dev, labels=["pos", "neg"], metrics=["f1", "accuracy"]
    )
    assert data.labels == ("pos", "neg")
    assert data.metrics == ("f1", "accuracy")


def test_tsv_pair_task_keeps_quotes_verbatim(tmp_path: Path) -> None:
    header = "id\tpremise\thypothesis\tgold\n"
    train = write(tmp_path / "train.tsv", header + '1\t"Quoted start\tplain\tyes\n2\tA "mid" quote\tb\tno\n')
    dev = write(tmp_path / "dev.tsv", header + "3\tc\td\tyes\n")
    data = load_custom("nli", train, dev, text_column="premise", text_pair_column="hypothesis", label_column="gold")
    assert data.train[0] == Example('"Quoted start', "plain", "yes")
    assert data.train[1].text == 'A "mid" quote'
    assert data.labels == ("no", "yes")


def test_jsonl_regression(tmp_path: Path) -> None:
    train = jsonl(tmp_path / "train.jsonl", [{"s": "a", "y": 1}, {"s": "b", "y": "2.5"}, {"s": "c", "y": 4.75}])
    dev = write(tmp_path / "dev.json", json.dumps({"s": "d", "y": 0}) + "\n\n")  # .json = JSON Lines; blank lines ok
    data = load_custom("sts", train, dev, text_column="s", label_column="y", regression=True)
    assert data.problem_type == "regression" and data.labels == ()
    assert [e.label for e in data.train] == [1.0, 2.5, 4.75]
    assert data.metrics == ("spearman", "pearson")
    assert data.dev == [Example("d", None, 0.0)]


def test_json_numbers_become_class_names_sorted_numerically(tmp_path: Path) -> None:
    rows = [{"text": f"t{i}", "label": label} for i, label in enumerate([0, 1, 10, 2, 1.0])]
    train = jsonl(tmp_path / "train.jsonl", rows)
    dev = write(tmp_path / "dev.csv", "text,label\nx,10\n")  # "10" in CSV matches 10 in JSON
    data = load_cls(train, dev)
    assert data.labels == ("0", "1", "2", "10")
    assert data.train[4].label == "1"


def test_bom_and_crlf_are_accepted(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", b"\xef\xbb\xbftext,label\r\na,x\r\nb,y\r\n")
    assert load_cls(train, csv_dev, labels=["x", "y", "neg", "pos"]).train[1] == Example("b", None, "y")


# ---------------------------------------------------------------- file-level problems


def test_missing_file(tmp_path: Path, csv_dev: Path) -> None:
    with pytest.raises(DataError, match=r"train\.csv: file not found"):
        load_cls(tmp_path / "train.csv", csv_dev)
    with pytest.raises(DataError, match=r"dev\.csv: file not found"):
        load_cls(write(tmp_path / "train.csv", CSV_TRAIN), tmp_path / "sub" / "dev.csv")


def test_unknown_extension(tmp_path: Path, csv_dev: Path) -> None:
    with pytest.raises(DataError, match=r"train\.xlsx: unknown file extension '\.xlsx'; supported: \.csv, \.tsv"):
        load_cls(write(tmp_path / "train.xlsx", "x"), csv_dev)


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("train.csv", "", r"train\.csv: file is empty \(a header row is required\)"),
        ("train.csv", "text,label\n", r"train\.csv: no data rows"),
        ("train.tsv", "text\tlabel\n\n", r"train\.tsv: no data rows"),
        ("train.jsonl", "\n", r"train\.jsonl: no data rows"),
    ],
)
def test_empty_files(tmp_path: Path, csv_dev: Path, filename: str, content: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_cls(write(tmp_path / filename, content), csv_dev)


def test_missing_column_lists_available(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", "sentence,label\na,x\n")
    with pytest.raises(DataError, match=r"train\.csv: column 'text' not found in the header; available columns: sen"):
        load_cls(train, csv_dev)


def test_missing_pair_column(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", CSV_TRAIN)
    with pytest.raises(DataError, match=r"column 'hyp' not found in the header; available columns: text, label"):
        load_custom("t", train, csv_dev, text_column="text", text_pair_column="hyp", label_column="label")


def test_duplicate_column_is_ambiguous(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", "text,text,label\na,b,x\n")
    with pytest.raises(DataError, match=r"train\.csv: column 'text' appears 2 times in the header"):
        load_cls(train, csv_dev)


def test_row_with_wrong_field_count(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", "text,label\na,pos\nb,neg,extra\n")
    with pytest.raises(DataError, match=r"train\.csv: row 2 \(line 3\): has 3 fields but the header has 2"):
        load_cls(train, csv_dev)


def test_malformed_csv_quoting_names_the_line(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", 'text,label\na,pos\n"b"c,neg\n')
    with pytest.raises(DataError, match=r"train\.csv: line 3: cannot parse: ',' expected after '\"'"):
        load_cls(train, csv_dev)


def test_quoted_newline_rows_report_their_first_line(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", 'text,label\n"two\nlines",pos\nb,\n')
    with pytest.raises(DataError, match=r"train\.csv: row 2 \(line 4\), column 'label': label is empty"):
        load_cls(train, csv_dev)


def test_too_many_rows(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", CSV_TRAIN)
    with pytest.raises(DataError, match=r"train\.csv: more than 2 data rows"):
        load_cls(train, csv_dev, max_rows=2)
    assert len(load_cls(train, csv_dev, max_rows=3).train) == 3
    big = jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}] * 5)
    with pytest.raises(DataError, match=r"train\.jsonl: more than 4 data rows"):
        load_cls(big, csv_dev, max_rows=4)


def test_non_utf8_bytes_name_the_line(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", b"text,label\na,pos\ncaf\xe9,neg\n")
    with pytest.raises(DataError, match=r"train\.csv: line 3: not valid UTF-8 \(byte 0xe9 at column 4\)"):
        load_cls(train, csv_dev)


def test_invalid_json_line(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": }\n')
    with pytest.raises(DataError, match=r"train\.jsonl: line 2: invalid JSON \(Expecting value at column 24\)"):
        load_cls(train, csv_dev)


def test_non_object_json_line(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.jsonl", '{"text": "a", "label": "x"}\n\n["b", "y"]\n')
    with pytest.raises(DataError, match=r"train\.jsonl: line 3: expected a JSON object .* got list"):
        load_cls(train, csv_dev)


def test_json_line_missing_key(tmp_path: Path, csv_dev: Path) -> None:
    train = jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "lbl": "y"}])
    with pytest.raises(DataError, match=r"train\.jsonl: line 2: missing key 'label'; keys present: 'text', 'lbl'"):
        load_cls(train, csv_dev)


# ---------------------------------------------------------------- cell-level problems


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text(tmp_path: Path, csv_dev: Path, text: str) -> None:
    train = write(tmp_path / "train.csv", f"text,label\na,pos\n{text},neg\n")
    with pytest.raises(DataError, match=r"train\.csv: row 2 \(line 3\), column 'text': text is empty"):
        load_cls(train, csv_dev)


def test_empty_text_pair(tmp_path: Path) -> None:
    train = jsonl(tmp_path / "train.jsonl", [{"a": "x", "b": "y", "l": "p"}, {"a": "x", "b": None, "l": "q"}])
    with pytest.raises(DataError, match=r"train\.jsonl: line 2, column 'b': text_pair is empty"):
        load_custom("t", train, train, text_column="a", text_pair_column="b", label_column="l")


def test_non_string_text_in_json(tmp_path: Path, csv_dev: Path) -> None:
    train = jsonl(tmp_path / "train.jsonl", [{"text": 5, "label": "x"}])
    with pytest.raises(DataError, match=r"train\.jsonl: line 1, column 'text': text must be a string, got int"):
        load_cls(train, csv_dev)


def test_single_class_train(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", "text,label\na,pos\nb,pos\n")
    with pytest.raises(DataError, match=r"train\.csv: training data has a single class \('pos'\)"):
        load_cls(train, csv_dev)
    with pytest.raises(DataError, match=r"single class"):  # also when the label list is given
        load_cls(train, csv_dev, labels=["neg", "pos"])


@pytest.mark.parametrize(("cell", "reason"), [("", "label is empty"), ("NaN", "label is 'NaN'")])
def test_empty_or_nan_label(tmp_path: Path, csv_dev: Path, cell: str, reason: str) -> None:
    train = write(tmp_path / "train.csv", f"text,label\na,pos\nb,{cell}\n")
    with pytest.raises(DataError, match=rf"train\.csv: row 2 \(line 3\), column 'label': {reason}"):
        load_cls(train, csv_dev)


def test_null_label_in_json(tmp_path: Path, csv_dev: Path) -> None:
    train = jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": None}])
    with pytest.raises(DataError, match=r"train\.jsonl: line 1, column 'label': label is empty"):
        load_cls(train, csv_dev)


def test_label_outside_given_set(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", CSV_TRAIN)
    with pytest.raises(DataError, match=r"train\.csv: row 2 \(line 3\), column 'label': label 'neg' is not one of"):
        load_cls(train, csv_dev, labels=["pos", "meh"])
    dev = write(tmp_path / "dev.csv", "text,label\nx,pos\ny,meh\n")
    with pytest.raises(
        DataError, match=r"dev\.csv: row 2 \(line 3\), column 'label': label 'meh' is not one of the given"
    ):
        load_cls(train, dev, labels=["neg", "pos"])


def test_dev_label_not_seen_in_train(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", CSV_TRAIN)
    dev = write(tmp_path / "dev.csv", "text,label\nx,pos\ny,neutral\n")
    with pytest.raises(
        DataError,
        match=r"dev\.csv: row 2 \(line 3\), column 'label': label 'neutral' does not occur in the train file "
        r"\(train labels: 'neg', 'pos'\)",
    ):
        load_cls(train, dev)


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ("abc", "regression label 'abc' is not a number"),
        ("nan", "regression label 'nan' is not a finite number"),
        ("inf", "regression label 'inf' is not a finite number"),
        ("-Infinity", "regression label '-Infinity' is not a finite number"),
        ("", "label is empty"),
    ],
)
def test_bad_regression_label(tmp_path: Path, cell: str, reason: str) -> None:
    train = write(tmp_path / "train.tsv", f"s\tscore\na\t1.5\nb\t{cell}\n")
    with pytest.raises(DataError, match=rf"train\.tsv: row 2 \(line 3\), column 'score': {reason}"):
        load_custom("r", train, train, text_column="s", label_column="score", regression=True)


def test_bad_regression_label_in_json(tmp_path: Path) -> None:
    train = write(tmp_path / "train.jsonl", '{"s": "a", "y": 1}\n{"s": "b", "y": NaN}\n{"s": "c", "y": true}\n')
    with pytest.raises(
        DataError, match=r"train\.jsonl: line 2, column 'y': regression label nan is not a finite number"
    ):
        load_custom("r", train, train, text_column="s", label_column="y", regression=True)


# ---------------------------------------------------------------- option problems


def test_bad_options(tmp_path: Path, csv_dev: Path) -> None:
    train = write(tmp_path / "train.csv", CSV_TRAIN)
    with pytest.raises(DataError, match="a regression task takes no label list"):
        load_cls(train, csv_dev, regression=True, labels=["a", "b"])
    with pytest.raises(DataError, match="label list repeats 'pos'"):
        load_cls(train, csv_dev, labels=["pos", "neg", "pos"])
    with pytest.raises(DataError, match="needs at least 2 labels"):
        load_cls(train, csv_dev, labels=["pos"])
    with pytest.raises(DataError, match="metric 'pearson' is for regression tasks"):
        load_cls(train, csv_dev, metrics=["pearson"])
    with pytest.raises(DataError, match="max_rows must be at least 1"):
        load_cls(train, csv_dev, max_rows=0)
    with pytest.raises(DataError, match="non-empty name"):
        load_custom(" ", train, csv_dev, text_column="text", label_column="label")
