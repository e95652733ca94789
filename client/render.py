"""Terminal rendering for the CLI: tables, human-readable sizes and durations, and the live job view.

Kept apart from argument handling so the CLI module reads as "parse, call, render", and so the formatting helpers
can be tested on their own. Every string that comes from the server or the user is escaped before it reaches
rich, because a task name or an error message containing ``[...]`` would otherwise be read as markup.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from types import TracebackType

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as ProgressBar
from rich.table import Table

from client.types import Job, JobEvent, Prediction, TaskInfo


def human_bytes(size: int | None) -> str:
    """``1536`` -> ``"1.5 KiB"``; binary units, because patch sizes are compared with tensor sizes."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def human_duration(seconds: float | None) -> str:
    """``83.2`` -> ``"1m 23s"``; sub-minute values keep one decimal, since short demo jobs take seconds."""
    if seconds is None or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole % 3600 // 60:02d}m"


def human_time(unix: float | None) -> str:
    """Local wall-clock time of a Unix timestamp, or ``-``."""
    return "-" if not unix else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix))


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``accuracy=0.9123 f1=0.8800`` in name order (the proto map carries no order, so sort for stable output)."""
    return " ".join(f"{name}={value:.4f}" for name, value in sorted(metrics.items())) or "-"


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


# --- job view -----------------------------------------------------------------------------------------------------


class JobView:
    """Renders a job's event stream: status lines, a live progress bar over steps, evaluation lines, and a final
    summary table. Used by ``add-task`` and ``watch`` so both look the same."""

    def __init__(self, console: Console, err_console: Console) -> None:
        self._console = console
        self._err = err_console
        self._bar: ProgressBar | None = None
        self._bar_task: TaskID | None = None

    def __enter__(self) -> JobView:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop_bar()

    def show(self, event: JobEvent) -> None:
        task, job = escape(event.task), escape(event.job_id)
        if event.kind == "queued":
            self._print(f"job [bold]{job}[/] for task [bold]{task}[/] queued (position {event.queued_position})")
        elif event.kind == "started":
            self._print(f"job [bold]{job}[/] started")
        elif event.kind == "progress" and event.progress is not None:
            self._update_bar(event)
        elif event.kind == "evaluation":
            self._print(f"eval epoch {event.epoch} step {event.step}: {escape(format_metrics(event.metrics))}")
        elif event.kind == "done":
            self._finish_bar()
            self._stop_bar()
            self._console.print(done_table(event))
        elif event.kind in ("failed", "cancelled"):
            self._stop_bar()
            self._err.print(f"[red]job {job} {event.kind}[/]: {escape(event.reason or 'no reason given')}")

    def _print(self, text: str) -> None:
        # While the bar is live, printing through its console keeps the line above the bar instead of tearing it.
        (self._bar.console if self._bar is not None else self._console).print(text)

    def _update_bar(self, event: JobEvent) -> None:
        progress = event.progress
        assert progress is not None
        if self._bar is None:
            self._bar = ProgressBar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]} ex/s"),
                TextColumn("ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self._console,
            )
            self._bar.start()
            self._bar_task = self._bar.add_task("training", total=None, loss="-", speed="-", eta="-")
        assert self._bar_task is not None
        self._bar.update(
            self._bar_task,
            description=f"epoch {progress.epoch}",
            total=progress.total_steps or None,
            completed=progress.step,
            loss=f"{progress.loss:.4f}",
            speed=f"{progress.examples_per_s:.0f}",
            eta=human_duration(progress.eta_s),
        )

    def _finish_bar(self) -> None:
        if self._bar is not None and self._bar_task is not None:
            task = self._bar.tasks[0]
            if task.total:
                self._bar.update(self._bar_task, completed=task.total, eta=human_duration(0))

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._bar_task = None


def done_table(event: JobEvent) -> Table:
    """Summary of a finished job: dev metrics first (what the user came for), then the patch and the run."""
    table = Table(title=f"{escape(event.task)} v{event.version}", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")  # fold, not ellipsis: hashes and ids must stay complete
    for name, value in sorted(event.metrics.items()):
        table.add_row(f"dev {escape(name)}", f"{value:.4f}")
    table.add_row("version", str(event.version))
    table.add_row("patch size", human_bytes(event.patch_bytes))
    table.add_row("wall time", human_duration(event.wall_time_s))
    table.add_row("stop reason", escape(event.stop_reason or "-"))
    table.add_row("trainable parameters", f"{event.trainable_parameters:,}" if event.trainable_parameters else "-")
    table.add_row("train examples", f"{event.train_examples:,}" if event.train_examples else "-")
    table.add_row("job", escape(event.job_id))
    return table


# --- tables -------------------------------------------------------------------------------------------------------


def tasks_table(tasks: list[TaskInfo]) -> Table:
    table = Table(title="tasks", box=box.SIMPLE_HEAD, pad_edge=False)  # light borders: eight columns fit in 80
    table.add_column("name", no_wrap=True)
    table.add_column("method")
    table.add_column("ver", justify="right")
    table.add_column("metrics", min_width=15, overflow="fold")  # "accuracy=0.9123" stays readable at 80 columns
    for column in ("size", "health", "pinned", "resident"):
        table.add_column(column)
    for task in tasks:
        health = "[green]healthy[/]" if task.healthy else f"[red]{escape(task.problem or 'unhealthy')}[/]"
        table.add_row(
            escape(task.name),
            escape(task.method),
            str(task.version),
            escape(format_metrics(task.metrics).replace(" ", "\n")),  # one per line: narrow terminals keep them whole
            human_bytes(task.patch_bytes),
            health,
            _yes_no(task.pinned),
            _yes_no(task.resident),
        )
    return table


def task_table(task: TaskInfo) -> Table:
    """Every TaskInfo field; JSON configs pretty-printed when they parse, shown raw when they do not."""
    table = Table(title=f"task {escape(task.name)}", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")  # fold, not ellipsis: hashes and ids must stay complete
    rows = [
        ("name", task.name),
        ("method", task.method),
        ("version", str(task.version)),
        ("versions", ", ".join(map(str, task.versions)) or "-"),
        ("problem type", task.problem_type),
        ("labels", ", ".join(task.labels) or "-"),
        ("healthy", _yes_no(task.healthy)),
        ("problem", task.problem or "-"),
        ("pinned", _yes_no(task.pinned)),
        ("resident", _yes_no(task.resident)),
        ("patch size", human_bytes(task.patch_bytes)),
        ("created", task.created or "-"),
        ("backbone", task.backbone_id or "-"),
        ("backbone fingerprint", task.backbone_fingerprint or "-"),
        ("content sha256", task.content_sha256 or "-"),
        ("method config", _pretty_json(task.method_config_json)),
        ("training", _pretty_json(task.training_json)),
    ]
    rows += [(f"dev {metric}", f"{score:.4f}") for metric, score in sorted(task.metrics.items())]
    for name, value in rows:
        table.add_row(escape(name), escape(value))
    return table


def jobs_table(jobs: list[Job]) -> Table:
    table = Table(title="jobs", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("id", no_wrap=True)
    for column in ("task", "method", "state", "progress", "version"):
        table.add_column(column)
    table.add_column("created", no_wrap=True)
    table.add_column("error")
    for job in jobs:
        table.add_row(
            escape(job.id),
            escape(job.task),
            escape(job.method),
            _state(job),
            _job_progress(job),
            str(job.version) if job.version else "-",
            human_time(job.created_unix),
            escape(job.error or ""),
        )
    return table


def job_table(job: Job) -> Table:
    table = Table(title=f"job {escape(job.id)}", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")  # fold, not ellipsis: hashes and ids must stay complete
    table.add_row("task", escape(job.task))
    table.add_row("method", escape(job.method))
    table.add_row("state", _state(job))
    if job.queue_position is not None:
        table.add_row("queue position", str(job.queue_position))
    table.add_row("progress", _job_progress(job))
    if job.progress is not None:
        table.add_row("loss", f"{job.progress.loss:.4f}")
        table.add_row("speed", f"{job.progress.examples_per_s:.0f} ex/s")
        if not job.finished:
            table.add_row("eta", human_duration(job.progress.eta_s))
    for name, value in sorted(job.metrics.items()):
        table.add_row(f"dev {escape(name)}", f"{value:.4f}")
    table.add_row("version", str(job.version) if job.version else "-")
    table.add_row("created", human_time(job.created_unix))
    table.add_row("started", human_time(job.started_unix))
    table.add_row("finished", human_time(job.finished_unix))
    if job.started_unix and job.finished_unix:
        table.add_row("wall time", human_duration(job.finished_unix - job.started_unix))
    if job.error:
        table.add_row("error", f"[red]{escape(job.error)}[/]")
    return table


def _state(job: Job) -> str:
    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "interrupted": "red"}.get(job.state)
    return f"[{colour}]{job.state}[/]" if colour else escape(job.state)


def _job_progress(job: Job) -> str:
    if job.state == "queued" and job.queue_position is not None:
        return f"queued, {job.queue_position} ahead"
    if job.progress is None:
        return "-"
    progress = job.progress
    total = f"/{progress.total_steps}" if progress.total_steps else ""
    return f"epoch {progress.epoch}, step {progress.step}{total}"


def _pretty_json(text: str) -> str:
    if not text:
        return "-"
    try:
        return json.dumps(json.loads(text), indent=2, sort_keys=True)
    except ValueError:
        return text


# --- predictions --------------------------------------------------------------------------------------------------


def prediction_text(prediction: Prediction) -> str:
    """``positive  (positive 0.9312, negative 0.0688)`` or ``value 3.1416``: one line, best class first."""
    if prediction.value is not None:
        return f"value {prediction.value:.4f}"
    probabilities = sorted((prediction.probabilities or {}).items(), key=lambda item: -item[1])
    detail = ", ".join(f"{label} {p:.4f}" for label, p in probabilities)
    return f"{prediction.label}  ({detail})" if detail else str(prediction.label)


def prediction_json(prediction: Prediction, version: int) -> str:
    """One JSON object per input, for ``predict --json``: label, probabilities, value and patch version."""
    return json.dumps(
        {
            "label": prediction.label,
            "probabilities": prediction.probabilities,
            "value": prediction.value,
            "version": version,
        }
    )


def predictions_table(task: str, version: int, rows: list[tuple[str, Prediction]]) -> Table:
    """Numbered inputs (truncated) and their predictions."""
    table = Table(title=f"{escape(task)} v{version}")
    table.add_column("#", justify="right")
    table.add_column("input", overflow="ellipsis", max_width=60, no_wrap=True)
    table.add_column("prediction")
    for index, (text, prediction) in enumerate(rows, start=1):
        table.add_row(str(index), escape(text), escape(prediction_text(prediction)))
    return table
