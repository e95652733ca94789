"""The GLUE tasks the study uses, read from ``glue_data``-style TSV folders or, failing that, the Hugging Face hub.

Resolution order: an explicit ``data_dir``, then ``glue_dir_env`` (the caller passes ``os.environ.get("GLUE_DIR")``;
this module never reads the environment, see DESIGN.md), then the ``nyu-mll/glue`` hub dataset. A source that lacks
the files falls through to the next one; a file that exists but cannot be parsed is an error at once, because
silently training on a different copy than the one the user pointed at would make results unreproducible. When no
source works, one :class:`DataError` lists every place tried and why each failed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.errors import DataError
from tasks.files import read_delimited
from tasks.types import Example, ProblemType, TaskData
from tasks.validate import check_has_two_classes, validate_examples

log = logging.getLogger(__name__)

Split = Literal["train", "dev"]
HUB_DATASET = "nyu-mll/glue"
_HUB_SPLITS: dict[Split, str] = {"train": "train", "dev": "validation"}


@dataclass(frozen=True)
class GlueTask:
    """How to read one GLUE task.

    Columns are header names, or 0-based positions for the headerless CoLA files. ``raw_labels[i]`` is the value
    in the TSV for ``labels[i]``; the hub stores the index itself, in the same order for every task here.
    """

    name: str
    folder: str
    hub_config: str
    has_header: bool
    text_column: str | int
    text_pair_column: str | int | None
    label_column: str | int
    hub_text_column: str
    hub_text_pair_column: str | None
    problem_type: ProblemType
    labels: tuple[str, ...]  # human names in index order; () for regression
    raw_labels: tuple[str, ...]  # TSV values in the same order
    metrics: tuple[str, ...]  # first = primary
    local_splits: tuple[Split, ...] = ("train", "dev")  # what the shared glue_data copy ships


_BINARY = ("0", "1")
_NLI = ("entailment", "not_entailment")
_CATALOGUE = (
    GlueTask(
        name="cola", folder="CoLA", hub_config="cola", has_header=False,
        text_column=3, text_pair_column=None, label_column=1,  # source, label, original_mark, sentence
        hub_text_column="sentence", hub_text_pair_column=None, problem_type="classification",
        labels=("unacceptable", "acceptable"), raw_labels=_BINARY, metrics=("matthews",),
    ),
    GlueTask(
        name="mrpc", folder="MRPC", hub_config="mrpc", has_header=True,
        text_column="#1 String", text_pair_column="#2 String", label_column="Quality",
        hub_text_column="sentence1", hub_text_pair_column="sentence2", problem_type="classification",
        labels=("not_paraphrase", "paraphrase"), raw_labels=_BINARY, metrics=("f1", "accuracy"),
    ),
    GlueTask(
        name="stsb", folder="STS-B", hub_config="stsb", has_header=True,
        text_column="sentence1", text_pair_column="sentence2", label_column="score",
        hub_text_column="sentence1", hub_text_pair_column="sentence2", problem_type="regression",
        labels=(), raw_labels=(), metrics=("spearman", "pearson"),
    ),
    GlueTask(
        name="rte", folder="RTE", hub_config="rte", has_header=True,
        text_column="sentence1", text_pair_column="sentence2", label_column="label",
        hub_text_column="sentence1", hub_text_pair_column="sentence2", problem_type="classification",
        labels=_NLI, raw_labels=_NLI, metrics=("accuracy",),
    ),
    GlueTask(
        name="wnli", folder="WNLI", hub_config="wnli", has_header=True,
        text_column="sentence1", text_pair_column="sentence2", label_column="label",
        hub_text_column="sentence1", hub_text_pair_column="sentence2", problem_type="classification",
        labels=("not_entailment", "entailment"), raw_labels=_BINARY, metrics=("accuracy",),
    ),
    GlueTask(
        name="sst2", folder="SST-2", hub_config="sst2", has_header=True,
        text_column="sentence", text_pair_column=None, label_column="label",
        hub_text_column="sentence", hub_text_pair_column=None, problem_type="classification",
        labels=("negative", "positive"), raw_labels=_BINARY, metrics=("accuracy",),
    ),
    GlueTask(
        name="qnli", folder="QNLI", hub_config="qnli", has_header=True,
        text_column="question", text_pair_column="sentence", label_column="label",
        hub_text_column="question", hub_text_pair_column="sentence", problem_type="classification",
        labels=_NLI, raw_labels=_NLI, metrics=("accuracy",), local_splits=("dev",),
    ),
)  # fmt: skip
GLUE_TASKS: dict[str, GlueTask] = {task.name: task for task in _CATALOGUE}


def list_glue_tasks() -> list[str]:
    """Names accepted by :func:`load_glue`, sorted."""
    return sorted(GLUE_TASKS)


def get_glue_task(name: str) -> GlueTask:
    """The catalogue entry for ``name`` (case-insensitive, ``sst-2``/``sts-b`` spellings accepted)."""
    key = name.strip().lower().replace("-", "")
    task = GLUE_TASKS.get(key)
    if task is None:
        raise DataError(f"unknown GLUE task {name!r}; known tasks: {', '.join(list_glue_tasks())}")
    return task


def read_glue_split(task: GlueTask | str, split: Split, data_dir: Path | str) -> list[Example]:
    """Read ``<data_dir>/<FOLDER>/<split>.tsv``; useful alone for QNLI, whose local copy is dev-only."""
    spec = task if isinstance(task, GlueTask) else get_glue_task(task)
    path = Path(data_dir) / spec.folder / f"{split}.tsv"
    header, rows = read_delimited(path, delimiter="\t", quoted=False, has_header=spec.has_header)
    columns = [_position(spec.text_column, header, path), _position(spec.label_column, header, path)]
    pair_at = None if spec.text_pair_column is None else _position(spec.text_pair_column, header, path)
    text_at, label_at = columns
    label_names = dict(zip(spec.raw_labels, spec.labels, strict=True))
    examples: list[Example] = []
    for row in rows:
        raw = row.cells[label_at]
        label: str | float
        if spec.problem_type == "regression":
            try:
                label = float(raw)
            except ValueError:
                raise DataError(f"{row.where(path)}: score {raw!r} is not a number") from None
        elif raw in label_names:
            label = label_names[raw]
        else:
            known = ", ".join(map(repr, spec.raw_labels))
            raise DataError(f"{row.where(path)}: label {raw!r} is not one of {known}")
        pair = None if pair_at is None else row.cells[pair_at]
        examples.append(Example(row.cells[text_at], pair, label))
    if not examples:
        raise DataError(f"{path}: no data rows")
    validate_examples(examples, spec.problem_type, spec.labels, where=str(path))
    return examples


def load_glue(
    name: str, data_dir: Path | str | None = None, *, glue_dir_env: str | None = None, allow_hub: bool = True
) -> TaskData:
    """Load a GLUE task's train and dev splits, trying ``data_dir``, then ``glue_dir_env``, then the hub."""
    spec = get_glue_task(name)
    failures: list[str] = []
    for label, directory in (("data_dir", data_dir), ("GLUE_DIR", glue_dir_env)):
        if directory is None or str(directory) == "":
            failures.append(f"{label}: not set")
            continue
        reason = _missing_local_files(spec, Path(directory))
        if reason is not None:
            failures.append(f"{label}: {reason}")
            continue
        data = _task_data(spec, *(read_glue_split(spec, split, directory) for split in ("train", "dev")))
        log.info("loaded GLUE %s from %s", spec.name, directory)
        return data
    if allow_hub:
        try:
            data = _task_data(spec, *_load_from_hub(spec))
        except DataError as err:
            failures.append(f"hub {HUB_DATASET}/{spec.hub_config}: {err}")
        else:
            log.info("loaded GLUE %s from the hub (%s)", spec.name, HUB_DATASET)
            return data
    else:
        failures.append(f"hub {HUB_DATASET}/{spec.hub_config}: disabled (allow_hub=False)")
    tried = "\n".join(f"  - {failure}" for failure in failures)
    raise DataError(f"cannot load GLUE task {spec.name!r}; tried, in order:\n{tried}")


def _missing_local_files(spec: GlueTask, directory: Path) -> str | None:
    """Why this directory cannot serve the task, or None when both split files are there."""
    if not directory.is_dir():
        return f"{directory} is not a directory"
    for split in ("train", "dev"):
        path = directory / spec.folder / f"{split}.tsv"
        if not path.is_file():
            note = "" if split in spec.local_splits else f" (the shared GLUE copy has {spec.folder} dev only)"
            return f"{path} is missing{note}"
    return None


def _position(column: str | int, header: list[str] | None, path: Path) -> int:
    if isinstance(column, int):
        return column
    if header is None or column not in header:
        raise DataError(f"{path}: column {column!r} not found; available columns: {', '.join(header or [])}")
    return header.index(column)


def _task_data(spec: GlueTask, train: list[Example], dev: list[Example]) -> TaskData:
    if spec.problem_type == "classification":
        check_has_two_classes(train, where=f"GLUE {spec.name} train")
    return TaskData(spec.name, spec.problem_type, spec.labels, spec.metrics, train, dev)


def _load_from_hub(spec: GlueTask) -> tuple[list[Example], list[Example]]:
    """Both splits from the hub dataset, converted to the same label names as the TSV path."""
    try:
        import datasets  # lazy: heavy import, and the client never needs it
    except ImportError:
        raise DataError("the 'datasets' package is not installed") from None
    try:
        loaded = datasets.load_dataset(HUB_DATASET, spec.hub_config)
        splits = [_hub_split(spec, loaded[_HUB_SPLITS[split]]) for split in ("train", "dev")]
    except DataError:
        raise
    except Exception as err:  # network, auth, cache and format errors all mean "this source did not work"
        raise DataError(f"{type(err).__name__}: {err}") from None
    return splits[0], splits[1]


def _hub_split(spec: GlueTask, table: object) -> list[Example]:
    texts = list(table[spec.hub_text_column])  # type: ignore[index]
    pairs = list(table[spec.hub_text_pair_column]) if spec.hub_text_pair_column else [None] * len(texts)  # type: ignore[index]
    raw_labels = list(table["label"])  # type: ignore[index]
    examples: list[Example] = []
    for index, (text, pair, raw) in enumerate(zip(texts, pairs, raw_labels, strict=True)):
        label: str | float
        if spec.problem_type == "regression":
            label = float(raw)
        elif isinstance(raw, int) and 0 <= raw < len(spec.labels):
            label = spec.labels[raw]
        else:
            raise DataError(f"example at index {index}: label {raw!r} is not a class index of {spec.name}")
        examples.append(Example(text, pair, label))
    validate_examples(examples, spec.problem_type, spec.labels, where=f"hub {spec.hub_config}")
    return examples
