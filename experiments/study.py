"""Run the study grid on taskpatch's own trainer, one JSON line per finished cell, resumable.

    python -m experiments.study --profile quick            # <= 60 min on 2 CPU cores, then the report
    python -m experiments.study --profile full             # the real grid, for a GPU (picked when present)
    python -m experiments.study --profile quick --report-only

Every cell trains with ``server.training.trainer.train`` (the same code path as the service) and appends one line
to the results file (default ``results/study-<profile>.jsonl``): the cell's config, dev metrics, wall time,
examples seen, trainable parameters, patch bytes, device and library versions. Re-running the same command skips
every cell already in the file, so a crash, a kill or Ctrl-C loses at most the cell in flight. After the grid the
report (``experiments.report``) is written next to the results file (``--out`` to choose where).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from experiments.grid import (
    PROFILES,
    RATES,
    Cell,
    GridSpec,
    bound_cell_s,
    build_grid,
    estimate_cell_s,
    length_factor,
    resolve_spec,
)

if TYPE_CHECKING:  # the heavy imports (torch, transformers) wait until a run needs them, so --help stays fast
    import torch
    from rich.console import Console

    from server.model import PatchedModel
    from server.training.trainer import TrainEvent, TrainResult
    from tasks.types import TaskData

RESULTS_SCHEMA = 1
LIBRARIES = ("torch", "transformers", "tokenizers", "safetensors", "scikit-learn", "scipy", "numpy", "taskpatch")
EXIT_FAILED_CELLS = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ResultsError(Exception):
    """The results file cannot be used as it is (corrupt in the middle, locked, or from another device)."""


# ---- the results file ------------------------------------------------------------------------------------------


class ResultsFile:
    """Append-only JSON lines, one per finished cell.

    Crash safety rests on three rules: a line is written with one ``write`` of the whole line and then fsynced, so
    a crash leaves at most one truncated line, always the last; :meth:`load` drops such a line and rewrites the
    file without it (atomically) before anything is appended after it; and a lock file keeps two runners from
    appending to the same file (which would duplicate cells).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: TextIO | None = None

    def lock(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path.with_name(self.path.name + ".lock"), "w")  # noqa: SIM115 - held until unlock()
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ResultsError(f"{self.path} is in use by another study run (lock file {handle.name})") from None
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def load(self, repair: bool = True) -> tuple[list[dict[str, Any]], str | None]:
        """Records in the file, and a note when a truncated last line was dropped (and, with ``repair``, removed).

        Only the bytes after the last newline can be a crash's leftover; a bad line anywhere else cannot come from
        this writer, so it is an error rather than something to drop silently. A last line that is complete JSON
        and only lacks its newline is kept (the newline is added by the rewrite).
        """
        if not self.path.exists():
            return [], None
        lines = self.path.read_bytes().split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail is b"" when the file ends with a newline
        records: list[dict[str, Any]] = []
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            record = _parse_record(line)
            if record is None:
                raise ResultsError(
                    f"{self.path}:{number}: not a study record; the file was edited or written by something else."
                    " Fix or remove that line, then re-run."
                )
            records.append(record)
        note = None
        if tail.strip():
            record = _parse_record(tail)
            if record is not None:
                records.append(record)
            else:
                note = f"dropped a truncated last line ({len(tail)} bytes) left by an interrupted run"
        if repair and tail:
            from server.store.atomic import atomic_write_bytes

            atomic_write_bytes(self.path, b"".join(_encode(r) for r in records))
        return records, note

    def append(self, record: dict[str, Any]) -> None:
        """Append one line: a single write, then fsync; Ctrl-C is held back until the line is on disk."""
        data = _encode(record)
        with _sigint_deferred():
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)


def _parse_record(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("cell_id"), str) else None


def _encode(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True, allow_nan=False) + "\n").encode()


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold SIGINT for the duration of the block, then deliver it, so Ctrl-C never splits a line in two."""
    if sys.platform == "win32" or not _in_main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---- environment -----------------------------------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def git_commit(root: Path) -> str | None:
    """The checkout's commit, with ``-dirty`` when tracked files differ; None outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def device_info(device: torch.device) -> dict[str, Any]:
    import torch

    if device.type == "cuda":
        return {"type": "cuda", "name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda}
    return {"type": "cpu", "name": cpu_name(), "threads": torch.get_num_threads(), "cores": os.cpu_count()}


def cpu_name() -> str:
    """The CPU model (Linux: /proc/cpuinfo), so results from different machines can be told apart."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine() or "cpu"


# ---- data ------------------------------------------------------------------------------------------------------


def load_task(name: str, data_dir: str | None, glue_dir_env: str | None, train_limit: int, dev_limit: int) -> TaskData:
    """The GLUE task with the study's limits applied.

    Limits take a stratified sample with a fixed seed (0), not the first rows: the same dev examples for every
    cell (so cells are compared on the same questions) with the class balance of the whole split (CoLA's dev file
    is ordered by source, so its first rows are not representative).
    """
    from tasks.glue import load_glue
    from tasks.sampling import subsample
    from tasks.types import TaskData

    data = load_glue(name, data_dir, glue_dir_env=glue_dir_env)
    train, dev = data.train, data.dev
    if train_limit and train_limit < len(train):
        train = subsample(train, train_limit / len(train), seed=0)
    if dev_limit and dev_limit < len(dev):
        dev = subsample(dev, dev_limit / len(dev), seed=0)
    return TaskData(data.name, data.problem_type, data.labels, data.metrics, train, dev)


def mean_chars(data: TaskData) -> float:
    """Mean characters per training example (text + pair): the estimate scales per-example cost with it."""
    train = data.train or data.dev
    return sum(len(e.text) + len(e.text_pair or "") for e in train) / max(1, len(train))


def constant_baseline(data: TaskData) -> dict[str, float]:
    """Dev metrics of always predicting the train split's majority class (regression: its mean score).

    A cell at this level learned nothing usable within its budget. The report marks such cells and leaves
    comparisons between them out of the verdicts: "BitFit matches full fine-tuning" says nothing when both predict
    one class.
    """
    from tasks.metrics import compute_metrics

    if data.problem_type == "classification":
        index = {name: i for i, name in enumerate(data.labels)}
        counts = [0] * len(data.labels)
        for example in data.train:
            counts[index[str(example.label)]] += 1
        majority = counts.index(max(counts))
        return compute_metrics(data.metrics, [majority] * len(data.dev), [index[str(e.label)] for e in data.dev])
    mean = sum(float(e.label) for e in data.train) / max(1, len(data.train))
    return compute_metrics(data.metrics, [mean] * len(data.dev), [float(e.label) for e in data.dev])


# ---- one cell --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RunContext:
    """What every cell of one run shares."""

    model: PatchedModel
    profile: str
    device: dict[str, Any]
    versions: dict[str, str]
    commit: str | None


def patch_bytes(model: PatchedModel, result: TrainResult, task: str) -> int:
    """Size of the file the patch store would write for this patch (for ``full``: the whole model, ~90 MB)."""
    from server.store.format import write_patch_file

    meta = result.patch.meta(model.backbone, {**result.config.to_dict(), "task_name": task}, result.metrics)
    with tempfile.TemporaryDirectory(prefix="taskpatch-study-") as tmp:
        path = Path(tmp) / "patch.safetensors"
        write_patch_file(path, result.patch.tensors, meta)
        return path.stat().st_size


def run_cell(
    context: RunContext, data: TaskData, cell: Cell, on_event: Callable[[TrainEvent], None] | None = None
) -> dict[str, Any]:
    """Train one cell with the service's trainer and return its results line."""
    from server.training.config import TrainConfig
    from server.training.trainer import train

    config = TrainConfig(
        method=cell.method,
        epochs=cell.train_epochs,
        seed=cell.seed,
        data_fraction=cell.data_fraction,
        time_budget_s=cell.time_budget_s,
    )
    started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    started = time.monotonic()
    result = train(context.model, data, config, on_event=on_event)
    size = patch_bytes(context.model, result, cell.task)
    primary = data.metrics[0]
    return {
        "schema": RESULTS_SCHEMA,
        "cell_id": cell.cell_id,
        "cell": cell.identity(),
        "axes": list(cell.axes),
        "profile": context.profile,
        "primary_metric": primary,
        "metrics": result.metrics,
        "history": [{"step": h["step"], "epoch": h["epoch"], primary: h["metrics"][primary]} for h in result.history],
        "stop_reason": result.stop_reason,
        "steps": result.steps,
        "examples_seen": result.examples_seen,
        "train_examples": result.train_examples,
        "dev_examples": len(data.dev),
        "baseline_metrics": constant_baseline(data),
        "wall_time_s": round(result.wall_time_s, 3),
        "cell_time_s": round(time.monotonic() - started, 3),
        "trainable_parameters": result.trainable_parameters,
        "patch_bytes": size,
        "train_config": result.config.to_dict(),
        "backbone": {"id": context.model.backbone.backbone_id, "fingerprint": context.model.backbone.fingerprint},
        "device": context.device,
        "versions": context.versions,
        "git_commit": context.commit,
        "started_at": started_at,
    }


def warm_up(model: PatchedModel, data: TaskData, methods: Sequence[str]) -> None:
    """One tiny run per method before the clock matters.

    The time budget is wall-clock from the start of ``train``; without this the first cell would pay one-time
    costs (CUDA context and kernels, allocator growth, lazy imports) that no other cell pays.
    """
    from server.training.config import TrainConfig
    from server.training.trainer import train
    from tasks.types import TaskData

    small = TaskData(data.name, data.problem_type, data.labels, data.metrics, data.train[:8], data.dev[:8])
    for method in methods:
        with contextlib.suppress(Exception):  # a failing method will fail loudly in its own cells
            train(model, small, TrainConfig(method=method, epochs=1, batch_size=8, seed=0))


# ---- the run ---------------------------------------------------------------------------------------------------


def default_results_path(profile: str) -> Path:
    return Path("results") / f"study-{profile}.jsonl"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.study", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--tasks", nargs="+", default=None, help="override the profile's tasks")
    parser.add_argument("--methods", nargs="+", default=None, help="override the profile's methods")
    parser.add_argument("--fractions", nargs="+", type=float, default=None, help="data fractions (fraction axis)")
    parser.add_argument(
        "--fraction-budget", type=float, default=None, help="time budget (s) of the fraction axis; 0: unlimited"
    )
    parser.add_argument(
        "--budgets", nargs="*", type=float, default=None, help="time budgets in s at fraction 1.0; 0: unlimited"
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (seeds 0..N-1)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per cell, at 100%% of the data with equal compute"
    )
    parser.add_argument(
        "--equal-compute",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="scale fraction-axis epochs by 1/fraction so every fraction trains on as many examples",
    )
    parser.add_argument("--backbone", default="default", help="default (embedded MiniLM), tiny, or a model dir")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument("--data-dir", default=None, help="GLUE folder (default: $GLUE_DIR, then the hub)")
    parser.add_argument("--results", type=Path, default=None, help="results file (default results/study-<profile>)")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default: results file minus .jsonl)")
    parser.add_argument("--dev-limit", type=int, default=None, help="dev examples per task (0: all)")
    parser.add_argument(
        "--train-limit", type=int, default=None, help="train examples per task, a stratified sample (0: all)"
    )
    parser.add_argument("--report-only", action="store_true", help="only write the report from the results file")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    # Test hook, hidden: a pause after each cell so a test can kill the run mid-grid.
    parser.add_argument("--pause-after-cell", type=float, default=0.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The one place the environment is read (DESIGN.md: configuration is passed explicitly).
    return run(args, glue_dir_env=os.environ.get("GLUE_DIR"))


def run(args: argparse.Namespace, glue_dir_env: str | None) -> int:
    from rich.console import Console

    console = Console(stderr=False)
    results_path: Path = args.results or default_results_path(args.profile)
    out_dir: Path = args.out or results_path.with_suffix("")
    results = ResultsFile(results_path)

    if args.report_only:
        return _report(console, results_path, out_dir)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from server.backbone import resolve_device

    device = resolve_device(args.device)
    try:
        spec = resolve_spec(
            PROFILES[args.profile],
            device.type,
            backbone=args.backbone,
            tasks=args.tasks,
            methods=args.methods,
            fractions=args.fractions,
            fraction_budget_s=args.fraction_budget,
            budgets_s=args.budgets,
            seeds=args.seeds,
            epochs=args.epochs,
            dev_limit=args.dev_limit,
            train_limit=args.train_limit,
            equal_compute=args.equal_compute,
        )
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_USAGE
    cells = build_grid(spec)

    try:
        results.lock()
    except ResultsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_USAGE
    try:
        records, note = results.load()
        if note:
            console.print(f"[yellow]{results_path}: {note}[/yellow]")
        _check_same_device(records, device.type, results_path)
        done = {r["cell_id"] for r in records}
        pending = [c for c in cells if c.cell_id not in done]
        code = _run_pending(console, args, spec, cells, pending, results, glue_dir_env)
    except ResultsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        console.print(
            f"\n[yellow]interrupted: every finished cell is in {results_path}; run the same command again to"
            " resume[/yellow]"
        )
        return EXIT_INTERRUPTED
    finally:
        results.unlock()
    report_code = _report(console, results_path, out_dir)
    return code or report_code


def _check_same_device(records: list[dict[str, Any]], device_type: str, path: Path) -> None:
    """Refuse to mix devices in one file: a time budget means something else on another device."""
    others = sorted({r.get("device", {}).get("type") for r in records} - {device_type, None})
    if others:
        raise ResultsError(
            f"{path} holds cells measured on {', '.join(others)}, and this run is on {device_type}: time budgets are"
            " not comparable across devices. Use another --results file (or --device to match)."
        )


def _run_pending(
    console: Console,
    args: argparse.Namespace,
    spec: GridSpec,
    cells: list[Cell],
    pending: list[Cell],
    results: ResultsFile,
    glue_dir_env: str | None,
) -> int:
    from server.patches.registry import get_method

    console.print(f"[bold]study, profile {spec.profile}[/bold] ({PROFILES[spec.profile].summary})")
    console.print(f"grid: {spec.describe()}")
    console.print(
        f"cells: {len(cells)} in the grid, {len(cells) - len(pending)} already in {results.path},"
        f" {len(pending)} to run"
    )
    if not pending:
        return 0

    data = {
        task: load_task(task, args.data_dir, glue_dir_env, spec.train_limit, spec.dev_limit)
        for task in dict.fromkeys(c.task for c in pending)
    }
    defaults = {m: get_method(m).defaults for m in spec.methods}
    lengths = {task: length_factor(mean_chars(d)) for task, d in data.items()}
    estimates = {
        c.cell_id: estimate_cell_s(
            c,
            len(data[c.task].train),
            len(data[c.task].dev),
            defaults[c.method].epochs,
            spec.device_type,
            lengths[c.task],
        )
        for c in pending
    }
    bounds = [
        bound_cell_s(c, len(data[c.task].dev), defaults[c.method].batch_size, spec.device_type, lengths[c.task])
        for c in pending
    ]
    rates = RATES[spec.device_type]
    console.print(
        f"estimate: {sum(estimates.values()) / 60:.0f} min on {spec.device_type} for the pending cells (rates"
        f" {rates.source}: train {', '.join(f'{m} {r:g}' for m, r in rates.train.items())} ex/s, eval"
        f" {rates.eval:g} ex/s; other backbones run at other speeds)"
    )
    if all(b is not None for b in bounds):
        console.print(
            f"every pending cell has a time cap: at most {sum(b or 0.0 for b in bounds) / 60:.0f} min however slowly"
            " training runs (caps + one step + one evaluation per cell, evaluation at the rate above)"
        )

    from server.backbone import load_backbone
    from server.model import PatchedModel

    backbone = load_backbone(spec.backbone, device=args.device)
    model = PatchedModel(backbone)
    context = RunContext(
        model=model,
        profile=spec.profile,
        device=device_info(backbone.device),
        versions=library_versions(),
        commit=git_commit(Path(__file__).resolve().parents[1]),
    )
    console.print(f"backbone {backbone.backbone_id} on {context.device['name']} ({backbone.device})")
    warm_up(model, data[pending[0].task], spec.methods)
    return _run_cells(console, context, data, pending, estimates, results, args.pause_after_cell)


def _run_cells(
    console: Console,
    context: RunContext,
    data: dict[str, TaskData],
    pending: list[Cell],
    estimates: dict[str, float],
    results: ResultsFile,
    pause_s: float,
) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    failed: list[tuple[Cell, str]] = []
    # Progress counts estimated seconds, not cells: cells differ in length by 10x, and rich's ETA (finished
    # estimate-seconds per real second, over the whole run) then corrects the estimate by the pace actually seen.
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[cells]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        speed_estimate_period=24 * 3600.0,
    )
    with progress:
        bar = progress.add_task("study", total=sum(estimates.values()), cells=f"0/{len(pending)}", status="")
        for index, cell in enumerate(pending, start=1):
            progress.update(bar, status=cell.label())

            def on_event(event: TrainEvent, cell: Cell = cell) -> None:
                if event.kind == "progress":
                    status = f"{cell.label()} step {event.step}/{event.total_steps} loss {event.loss:.3f}"
                    progress.update(bar, status=status)

            try:
                record = run_cell(context, data[cell.task], cell, on_event)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one broken cell must not cost the rest of a long grid
                failed.append((cell, f"{type(exc).__name__}: {exc}"))
                progress.console.print(f"[red]failed[/red] {cell.label()}: {type(exc).__name__}: {exc}")
            else:
                results.append(record)
                value = record["metrics"][record["primary_metric"]] * 100
                progress.console.print(
                    f"{index}/{len(pending)} {cell.label()}: {record['primary_metric']} {value:.1f},"
                    f" {record['examples_seen']} examples, {record['wall_time_s']:.1f} s ({record['stop_reason']})"
                )
            progress.update(bar, advance=estimates[cell.cell_id], cells=f"{index}/{len(pending)}")
            if pause_s:
                time.sleep(pause_s)
    if failed:
        console.print(f"[red]{len(failed)} cell(s) failed[/red]; re-run the same command to retry them:")
        for cell, error in failed:
            console.print(f"  {cell.label()} ({cell.cell_id}): {error}")
        return EXIT_FAILED_CELLS
    return 0


def _report(console: Console, results_path: Path, out_dir: Path) -> int:
    from experiments.report import write_report

    if not results_path.exists():
        console.print(f"[red]error:[/red] no results file at {results_path}")
        return EXIT_USAGE
    try:
        written = write_report(results_path, out_dir)
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_USAGE
    console.print(f"report: {written.markdown} (+ {len(written.plots)} plots)")
    for verdict in written.verdicts:
        console.print(f"  {verdict.headline()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
