"""Task data for taskpatch: GLUE and custom loaders, validation, metrics and subsampling.

Imported by the client as well as the server, so nothing here imports torch or the server package; every
user-caused problem raises :class:`DataError`.
"""

from __future__ import annotations

from tasks.custom import SUPPORTED_EXTENSIONS, load_custom
from tasks.errors import DataError
from tasks.glue import GLUE_TASKS, GlueTask, get_glue_task, list_glue_tasks, load_glue, read_glue_split
from tasks.metrics import METRICS, compute_metrics, default_metrics, validate_metric_names
from tasks.sampling import subsample
from tasks.types import PROBLEM_TYPES, Example, ProblemType, TaskData
from tasks.validate import check_label_set, check_problem_type, examples_from_records, validate_examples

__all__ = [
    "GLUE_TASKS",
    "METRICS",
    "PROBLEM_TYPES",
    "SUPPORTED_EXTENSIONS",
    "DataError",
    "Example",
    "GlueTask",
    "ProblemType",
    "TaskData",
    "check_label_set",
    "check_problem_type",
    "compute_metrics",
    "default_metrics",
    "examples_from_records",
    "get_glue_task",
    "list_glue_tasks",
    "load_custom",
    "load_glue",
    "read_glue_split",
    "subsample",
    "validate_examples",
    "validate_metric_names",
]
