"""User-supplied tasks from CSV, TSV or JSON Lines files, validated row by row.

A user's file is the most likely source of a confusing training failure (a stray delimiter, a NaN score, a dev
label the head has never seen), so every rule is checked here, before a job is queued, and the message names the
file, the row and the column. The rules themselves live in :mod:`tasks.validate`, shared with the server.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tasks.errors import DataError
from tasks.files import check_file, read_delimited, read_json_lines
from tasks.metrics import default_metrics, validate_metric_names
from tasks.types import Example, ProblemType, TaskData
from tasks.validate import (
    check_has_two_classes,
    check_label_set,
    check_text,
    infer_labels,
    label_to_float,
    label_to_str,
)

# extension -> (delimiter, quoted); None = JSON Lines
_FORMATS: dict[str, tuple[str, bool] | None] = {
    ".csv": (",", True),  # spreadsheet exports: normal CSV quoting
    ".tsv": ("\t", False),  # GLUE-style: quotes are text, as in the GLUE files
    ".jsonl": None,
    ".json": None,  # treated as JSON Lines: one object per line
}
SUPPORTED_EXTENSIONS: tuple[str, ...] = tuple(_FORMATS)

_Cells = tuple[str, object, object, object]  # (where, text, text_pair, label) before conversion


def load_custom(
    name: str,
    train_path: Path | str,
    dev_path: Path | str,
    *,
    text_column: str,
    text_pair_column: str | None = None,
    label_column: str,
    regression: bool = False,
    labels: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    max_rows: int | None = None,
) -> TaskData:
    """Load and validate a custom task.

    ``labels`` fixes the class order (index ``i`` = ``labels[i]``); without it the classes are the sorted distinct
    train labels, and a dev label outside them is an error because the head could never predict it. ``max_rows``
    caps each file, so an accidental huge upload fails fast instead of exhausting memory.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError("a custom task needs a non-empty name")
    if max_rows is not None and max_rows < 1:
        raise DataError(f"max_rows must be at least 1, got {max_rows}")
    problem_type: ProblemType = "regression" if regression else "classification"
    given = None if labels is None else check_label_set(labels, problem_type)
    columns = (text_column, text_pair_column, label_column)
    if problem_type == "regression":
        label_set: tuple[str, ...] = ()
        train = _read_examples(Path(train_path), columns, problem_type, None, max_rows)
        dev = _read_examples(Path(dev_path), columns, problem_type, None, max_rows)
    else:
        train = _read_examples(Path(train_path), columns, problem_type, given, max_rows)
        check_has_two_classes(train, where=str(train_path))
        label_set = given if given is not None else infer_labels(str(example.label) for example in train)
        dev = _read_examples(Path(dev_path), columns, problem_type, label_set, max_rows, inferred=given is None)
    chosen = default_metrics(problem_type) if metrics is None else metrics
    return TaskData(
        name=name,
        problem_type=problem_type,
        labels=label_set,
        metrics=validate_metric_names(chosen, problem_type, len(label_set)),
        train=train,
        dev=dev,
    )


def _read_examples(
    path: Path,
    columns: tuple[str, str | None, str],
    problem_type: ProblemType,
    label_set: tuple[str, ...] | None,
    max_rows: int | None,
    *,
    inferred: bool = False,
) -> list[Example]:
    """Examples of one file; class names are checked against ``label_set`` when it is known (None: not yet)."""
    text_column, pair_column, label_column = columns
    examples: list[Example] = []
    for where, raw_text, raw_pair, raw_label in _cells(path, columns, max_rows):
        with _at(where, text_column):
            text = check_text(raw_text, "text")
        pair = None
        if pair_column is not None:
            with _at(where, pair_column):
                pair = check_text(raw_pair, "text_pair")
        with _at(where, label_column):
            label = label_to_float(raw_label) if problem_type == "regression" else label_to_str(raw_label)
            if label_set is not None and label not in label_set:
                known = ", ".join(map(repr, label_set))
                if inferred:
                    raise DataError(f"label {label!r} does not occur in the train file (train labels: {known})")
                raise DataError(f"label {label!r} is not one of the given labels ({known})")
        examples.append(Example(text, pair, label))
    if not examples:
        raise DataError(f"{path}: no data rows")
    return examples


@contextmanager
def _at(where: str, column: str) -> Iterator[None]:
    """Prefix a cell-level DataError with its file, row and column, so users can find it in a spreadsheet."""
    try:
        yield
    except DataError as err:
        raise DataError(f"{where}, column {column!r}: {err}") from None


def _cells(path: Path, columns: tuple[str, str | None, str], max_rows: int | None) -> Iterator[_Cells]:
    """Raw ``(where, text, text_pair, label)`` per data row, whatever the file format."""
    suffix = path.suffix.lower()
    if suffix not in _FORMATS:
        raise DataError(f"{path}: unknown file extension {path.suffix!r}; supported: {', '.join(_FORMATS)}")
    check_file(path)
    dialect = _FORMATS[suffix]
    if dialect is None:
        yield from _json_cells(path, columns, max_rows)
        return
    delimiter, quoted = dialect
    header, rows = read_delimited(path, delimiter=delimiter, quoted=quoted, max_rows=max_rows)
    assert header is not None  # has_header=True
    positions = [None if column is None else _header_position(path, header, column) for column in columns]
    for row in rows:
        text, pair, label = (None if at is None else row.cells[at] for at in positions)
        yield row.where(path), text, pair, label


def _header_position(path: Path, header: list[str], column: str) -> int:
    if header.count(column) > 1:
        raise DataError(f"{path}: column {column!r} appears {header.count(column)} times in the header")
    if column not in header:
        raise DataError(f"{path}: column {column!r} not found in the header; available columns: {', '.join(header)}")
    return header.index(column)


def _json_cells(path: Path, columns: tuple[str, str | None, str], max_rows: int | None) -> Iterator[_Cells]:
    for line_no, record in read_json_lines(path, max_rows=max_rows):
        where = f"{path}: line {line_no}"
        cells: list[object] = []
        for column in columns:
            if column is None:
                cells.append(None)
            elif column not in record:
                keys = ", ".join(map(repr, record)) or "none"
                raise DataError(f"{where}: missing key {column!r}; keys present: {keys}")
            else:
                cells.append(record[column])
        yield where, cells[0], cells[1], cells[2]
