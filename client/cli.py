"""The ``client`` / ``taskpatch`` command line: argparse in, :class:`TaskPatchClient` call, rich output out.

Configuration is read once, in :func:`run`, into a :class:`CliOptions` (flags first, then ``TASKPATCH_SERVER``,
``TASKPATCH_TOKEN`` and ``GLUE_DIR``) and passed down explicitly; nothing reads the environment elsewhere.

Exit codes: 0 success; 1 the server said no (a :class:`TaskPatchError`), a job failed or was cancelled, or a local
file could not be written; 2 bad usage or bad input data (argparse errors, ``DataError``, unreadable input files);
130 interrupted. Errors are one ``error: ...`` line on stderr (plus a hint where one helps), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from client import render
from client.api import DEFAULT_TARGET, TaskPatchClient, head
from client.errors import TaskPatchError
from client.types import JobEvent

if TYPE_CHECKING:
    from tasks.types import TaskData

ENV_SERVER = "TASKPATCH_SERVER"
ENV_TOKEN = "TASKPATCH_TOKEN"
ENV_GLUE_DIR = "GLUE_DIR"
PREDICT_BATCH = 256  # inputs per Predict request from --file: bounded messages, and output starts early

# add-task flag dest -> TaskPatchClient.add_task keyword
TRAINING_FLAGS: dict[str, str] = {
    "lr": "learning_rate",
    "head_lr": "head_learning_rate",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "data_fraction": "data_fraction",
    "time_budget": "time_budget_s",
    "seed": "seed",
    "max_seq_length": "max_seq_length",
    "patience": "early_stopping_patience",
    "warmup_ratio": "warmup_ratio",
    "weight_decay": "weight_decay",
    "evals_per_epoch": "evals_per_epoch",
}
# flags that only make sense for a custom task (dest, flag)
CUSTOM_FLAGS: tuple[tuple[str, str], ...] = (
    ("dev", "--dev"),
    ("text", "--text"),
    ("text_pair", "--text-pair"),
    ("label", "--label"),
    ("regression", "--regression"),
    ("labels", "--labels"),
    ("metrics", "--metrics"),
)


class UsageError(Exception):
    """Bad input the user can fix (flags, files, data): printed as ``error: ...``, exit code 2."""


@dataclass(frozen=True)
class CliOptions:
    """Everything the CLI takes from flags and the environment, resolved once."""

    server: str
    token: str | None
    tls_ca: Path | None
    timeout_s: float | None
    glue_dir: str | None


@dataclass(frozen=True)
class Context:
    """What every command gets: options and where to write."""

    options: CliOptions
    console: Console  # stdout: results
    err: Console  # stderr: status lines, errors, hints

    def connect(self) -> TaskPatchClient:
        options = self.options
        return TaskPatchClient(options.server, token=options.token, tls_ca=options.tls_ca, timeout_s=options.timeout_s)


# --- argument parsing ---------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object like \'{{"variant": "pfeiffer"}}\', got {text}')
    return value


def _name_list(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def _add_global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Global options, accepted before the subcommand and (``suppress``: without defaults) after it as well."""
    default: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--server", metavar="HOST:PORT", help=f"server address (env {ENV_SERVER}, else {DEFAULT_TARGET})", **default
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="PATH",
        help=f"file holding the bearer token (else env {ENV_TOKEN})",
        **default,
    )
    group.add_argument("--tls-ca", type=Path, metavar="PATH", help="PEM CA certificate: connect with TLS", **default)
    group.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="deadline in seconds for each call (not for training streams)",
        **default,
    )


def build_parser(prog: str = "client") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description="Train and serve tiny per-task patches on a taskpatch server."
    )
    _add_global_options(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, suppress=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        name: str, handler: Callable[[argparse.Namespace, Context], int], help_text: str
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    add = command("add-task", cmd_add_task, "upload a GLUE or custom task and train a patch for it")
    add.add_argument(
        "name", help="a GLUE task (cola, mrpc, rte, sst2, stsb, ...) or, with --train, a custom task name"
    )
    train = add.add_argument_group("training")
    train.add_argument(
        "--method", default="bitfit", help="bitfit (default), adapter, or any method the server registers"
    )
    train.add_argument(
        "--method-config", type=_json_object, metavar="JSON", help='method options, e.g. \'{"variant": "pfeiffer"}\''
    )
    train.add_argument("--epochs", type=_positive_int, metavar="N")
    train.add_argument("--lr", type=_positive_float, metavar="X", help="learning rate of the patch")
    train.add_argument("--head-lr", type=_positive_float, metavar="X", help="learning rate of the head")
    train.add_argument("--batch-size", type=_positive_int, metavar="N")
    train.add_argument("--data-fraction", type=_fraction, metavar="F", help="train on this share of the train split")
    train.add_argument("--time-budget", type=_positive_float, metavar="S", help="stop training after S seconds")
    train.add_argument("--seed", type=int, metavar="N")
    train.add_argument("--max-seq-length", type=_positive_int, metavar="N")
    train.add_argument("--patience", type=_positive_int, metavar="N", help="early stopping: evaluations without gain")
    train.add_argument("--warmup-ratio", type=_non_negative_float, metavar="F")
    train.add_argument("--weight-decay", type=_non_negative_float, metavar="X")
    train.add_argument("--evals-per-epoch", type=_positive_int, metavar="N")
    train.add_argument("--replace", action="store_true", help="train a new version of an existing task")
    train.add_argument("--detach", action="store_true", help="print the job id once queued and exit")
    data = add.add_argument_group("data")
    data.add_argument(
        "--data-dir", type=Path, metavar="DIR", help=f"GLUE data folder (else env {ENV_GLUE_DIR}, else the hub)"
    )
    data.add_argument("--task-name", metavar="NAME", help="register a GLUE task under another name")
    data.add_argument(
        "--train-limit", type=_non_negative_int, metavar="N", help="upload only the first N train examples"
    )
    data.add_argument("--dev-limit", type=_non_negative_int, metavar="N", help="upload only the first N dev examples")
    custom = add.add_argument_group("custom task (CSV, TSV or JSON Lines files)")
    custom.add_argument("--train", type=Path, metavar="FILE", help="train file: makes NAME a custom task")
    custom.add_argument("--dev", type=Path, metavar="FILE")
    custom.add_argument("--text", metavar="COL", help="text column")
    custom.add_argument("--text-pair", metavar="COL", help="second text column, for sentence pairs")
    custom.add_argument("--label", metavar="COL", help="label column")
    custom.add_argument("--regression", action="store_true", help="the label is a number")
    custom.add_argument("--labels", type=_name_list, metavar="A,B,C", help="class names in index order")
    custom.add_argument("--metrics", type=_name_list, metavar="M1,M2", help="dev metrics, primary first")

    predict = command("predict", cmd_predict, "predict with a task's current patch")
    predict.add_argument("name")
    predict.add_argument("text", nargs="?", help="the input text")
    predict.add_argument("text_pair", nargs="?", help="second text, for sentence-pair tasks")
    predict.add_argument(
        "--file", type=Path, metavar="FILE", help='JSON Lines inputs: {"text": ..., "text_pair": ...}'
    )
    predict.add_argument("--json", action="store_true", help="print one JSON object per input")

    command("tasks", cmd_tasks, "list tasks")
    command("show", cmd_show, "show one task in full").add_argument("name")
    command("rm", cmd_rm, "delete a task and its patches").add_argument("name")
    rollback = command("rollback", cmd_rollback, "serve an earlier patch version")
    rollback.add_argument("name")
    rollback.add_argument(
        "--version", type=_non_negative_int, default=0, metavar="N", help="default: the previous one"
    )
    command("pin", cmd_pin, "keep a task's patch resident").add_argument("name")
    command("unpin", cmd_unpin, "let a task's patch be evicted again").add_argument("name")
    command("jobs", cmd_jobs, "list training jobs")
    command("job", cmd_job, "show one training job").add_argument("job_id", metavar="ID")
    command("watch", cmd_watch, "follow a training job").add_argument("job_id", metavar="ID")
    command("cancel", cmd_cancel, "cancel a queued or running job").add_argument("job_id", metavar="ID")
    export = command("export", cmd_export, "download a task's patch file")
    export.add_argument("name")
    export.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    export.add_argument("--version", type=_non_negative_int, default=0, metavar="N", help="default: the current one")
    imported = command("import", cmd_import, "upload a patch file as a task")
    imported.add_argument("file", type=Path)
    imported.add_argument("--name", help="import under this name (default: the name stored in the file)")
    return parser


def resolve_options(args: argparse.Namespace, environ: Mapping[str, str]) -> CliOptions:
    """Flags win over the environment; the token file and CA file are checked here so a typo fails before any call."""
    token: str | None = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except OSError as err:
            raise UsageError(f"cannot read --token-file {args.token_file}: {err.strerror or err}") from None
        if not token:
            raise UsageError(f"--token-file {args.token_file} is empty")
    else:
        token = environ.get(ENV_TOKEN) or None
    if args.tls_ca is not None and not args.tls_ca.is_file():
        raise UsageError(f"--tls-ca {args.tls_ca}: no such file")
    return CliOptions(
        server=args.server or environ.get(ENV_SERVER) or DEFAULT_TARGET,
        token=token,
        tls_ca=args.tls_ca,
        timeout_s=args.timeout,
        glue_dir=environ.get(ENV_GLUE_DIR) or None,
    )


# --- entry points -------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point (``client``, ``taskpatch``, ``python -m client``); returns the exit code."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "client"
    return run(argv, os.environ, prog="client" if prog in ("__main__.py", "-c") else prog)


def run(argv: Sequence[str] | None, environ: Mapping[str, str], *, prog: str = "client") -> int:
    """Parse, resolve options from ``environ``, run one command; all user-facing error handling is here."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or bad usage (2); return it so main() always returns
        return exit_.code if isinstance(exit_.code, int) else 2
    console = Console(file=sys.stdout, highlight=False)
    err = Console(file=sys.stderr, highlight=False)
    server = getattr(args, "server", None) or environ.get(ENV_SERVER) or DEFAULT_TARGET
    try:
        context = Context(resolve_options(args, environ), console, err)
        return int(args.handler(args, context))
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TaskPatchError as error:
        print(format_error(error, server, args.command), file=sys.stderr)
        return 1
    except OSError as error:  # local files: export target, import source
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def format_error(error: TaskPatchError, server: str, command: str | None = None) -> str:
    """``error: CODE: message``, plus a hint for the codes whose fix is on the user's side."""
    lines = [f"error: {error.code}: {error.message}"]
    if error.code == "UNAVAILABLE":
        lines.append(
            f"hint: no taskpatch server is reachable at {server}; start one (taskpatch-server) "
            f"or point --server / {ENV_SERVER} at it"
        )
    elif error.code == "UNAUTHENTICATED":
        lines.append(f"hint: the server wants a bearer token: pass --token-file PATH or set {ENV_TOKEN}")
    elif error.code == "DEADLINE_EXCEEDED":
        lines.append("hint: the call took longer than --timeout allows; raise it or leave it unset")
    elif error.code == "ALREADY_EXISTS" and command == "add-task":
        lines.append("hint: pass --replace to train a new version of the existing task")
    return "\n".join(lines)


# --- commands -----------------------------------------------------------------------------------------------------


def cmd_add_task(args: argparse.Namespace, ctx: Context) -> int:
    data = load_task_data(args, ctx.options.glue_dir)
    train, dev = head(data.train, args.train_limit), head(data.dev, args.dev_limit)
    if not train or not dev:
        raise UsageError("--train-limit/--dev-limit left no examples to upload")
    name = args.task_name or data.name
    detail = f"labels {', '.join(data.labels)}" if data.labels else "regression"
    ctx.err.print(f"uploading {escape(name)}: {len(train)} train / {len(dev)} dev examples ({escape(detail)})")
    training = {keyword: getattr(args, dest) for dest, keyword in TRAINING_FLAGS.items()}
    with ctx.connect() as client:
        events = client.add_task(
            name,
            train,
            dev,
            problem_type=data.problem_type,
            labels=data.labels,
            metrics=data.metrics,
            method=args.method,
            method_config=args.method_config,
            replace=args.replace,
            detach=args.detach,
            **training,
        )
        return follow(events, ctx, detach=args.detach)


def load_task_data(args: argparse.Namespace, glue_dir: str | None) -> TaskData:
    """A GLUE task by name, or a custom task when ``--train`` is given; bad data becomes a UsageError (exit 2)."""
    # lazy: the tasks package pulls in numpy, scipy and scikit-learn, which only add-task and predict --file need
    from tasks.custom import load_custom
    from tasks.errors import DataError
    from tasks.glue import get_glue_task, list_glue_tasks, load_glue

    try:
        if args.train is None:
            stray = [flag for dest, flag in CUSTOM_FLAGS if getattr(args, dest) not in (None, False)]
            if stray:
                raise UsageError(f"{', '.join(stray)} describe a custom task: add --train FILE")
            try:
                get_glue_task(args.name)
            except DataError:
                raise UsageError(
                    f"{args.name!r} is not a GLUE task (known: {', '.join(list_glue_tasks())}); "
                    "a custom task needs --train FILE --dev FILE --text COL --label COL"
                ) from None
            return load_glue(args.name, args.data_dir, glue_dir_env=glue_dir)
        if args.data_dir is not None or args.task_name is not None:
            raise UsageError("--data-dir and --task-name apply to GLUE tasks only")
        missing = [
            flag
            for dest, flag in (("dev", "--dev"), ("text", "--text"), ("label", "--label"))
            if not getattr(args, dest)
        ]
        if missing:
            raise UsageError(f"a custom task also needs {', '.join(missing)}")
        return load_custom(
            args.name,
            args.train,
            args.dev,
            text_column=args.text,
            text_pair_column=args.text_pair,
            label_column=args.label,
            regression=args.regression,
            labels=args.labels,
            metrics=args.metrics,
        )
    except DataError as err:
        raise UsageError(str(err)) from None


def follow(events: Iterator[JobEvent], ctx: Context, *, detach: bool = False) -> int:
    """Render a job's events; exit code 0 when it succeeded (or, detached, was queued), 1 when it did not."""
    last: JobEvent | None = None
    try:
        with render.JobView(ctx.console, ctx.err) as view:
            for event in events:
                last = event
                if detach and event.kind == "queued":
                    break
                view.show(event)
                if event.terminal:
                    break
    except KeyboardInterrupt:
        if last is None:
            ctx.err.print("interrupted before the job was queued; nothing was started")
        else:
            job = escape(last.job_id)
            ctx.err.print(f"stopped following job {job}; it keeps running (client watch {job} / client cancel {job})")
        return 130
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()  # stop the stream (not the job) when we leave early
    if last is None:
        ctx.err.print("[red]the server ended the stream without any job event[/]")
        return 1
    if detach and not last.terminal:
        print(last.job_id)  # bare id on stdout, for JOB=$(client add-task ... --detach)
        job = escape(last.job_id)
        ctx.err.print(f"job {job} queued (position {last.queued_position}); follow it with: client watch {job}")
        return 0
    if not last.terminal:
        ctx.err.print(
            f"[red]the event stream ended before job {escape(last.job_id)} finished[/]; "
            f"check it with: client job {escape(last.job_id)}"
        )
        return 1
    return 0 if last.kind == "done" else 1


def cmd_predict(args: argparse.Namespace, ctx: Context) -> int:
    if args.file is not None and args.text is not None:
        raise UsageError("give either TEXT [TEXT_PAIR] or --file, not both")
    if args.file is None and args.text is None:
        raise UsageError("nothing to predict: give TEXT [TEXT_PAIR] or --file FILE")
    with ctx.connect() as client:
        if args.text is not None:
            result = client.predict(args.name, [(args.text, args.text_pair)])
            prediction = result.predictions[0]
            if args.json:
                print(render.prediction_json(prediction, result.version))
            else:
                ctx.console.print(
                    f"{escape(render.prediction_text(prediction))}  [dim]({escape(result.task)} v{result.version})[/]"
                )
            return 0
        rows: list[tuple[str, Any]] = []
        task, version = args.name, 0
        for batch in _batches(read_inputs(args.file), PREDICT_BATCH):
            result = client.predict(args.name, batch)
            task, version = result.task, result.version
            for (text, _), prediction in zip(batch, result.predictions, strict=True):
                if args.json:
                    print(render.prediction_json(prediction, result.version))
                else:
                    rows.append((text, prediction))
        if not args.json:
            ctx.console.print(render.predictions_table(task, version, rows))
    return 0


def read_inputs(path: Path) -> Iterator[tuple[str, str | None]]:
    """``(text, text_pair)`` per JSON Lines record; a malformed line is a UsageError naming the line."""
    from tasks.errors import DataError  # lazy, see load_task_data
    from tasks.files import read_json_lines

    try:
        for line_no, record in read_json_lines(path):
            text, pair = record.get("text"), record.get("text_pair")
            if not isinstance(text, str):
                raise UsageError(f'{path}: line {line_no}: expected a string "text", got {text!r}')
            if pair is not None and not isinstance(pair, str):
                raise UsageError(f'{path}: line {line_no}: "text_pair" must be a string or null, got {pair!r}')
            yield text, pair
    except DataError as err:
        raise UsageError(str(err)) from None


def _batches(items: Iterator[tuple[str, str | None]], size: int) -> Iterator[list[tuple[str, str | None]]]:
    batch: list[tuple[str, str | None]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def cmd_tasks(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        tasks = client.list_tasks()
    if not tasks:
        ctx.err.print("no tasks yet; add one with: client add-task NAME")
        return 0
    ctx.console.print(render.tasks_table(tasks))
    return 0


def cmd_show(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        ctx.console.print(render.task_table(client.get_task(args.name)))
    return 0


def cmd_rm(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        client.delete_task(args.name)
    ctx.console.print(f"deleted task {escape(args.name)}")
    return 0


def cmd_rollback(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        task = client.rollback_task(args.name, args.version)
    ctx.console.print(f"task {escape(task.name)} now serves version {task.version}")
    return 0


def cmd_pin(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        task = client.pin_task(args.name, True)
    ctx.console.print(f"pinned task {escape(task.name)} (resident: {'yes' if task.resident else 'no'})")
    return 0


def cmd_unpin(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        task = client.pin_task(args.name, False)
    ctx.console.print(f"unpinned task {escape(task.name)}")
    return 0


def cmd_jobs(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        jobs = client.list_jobs()
    if not jobs:
        ctx.err.print("no jobs")
        return 0
    ctx.console.print(render.jobs_table(jobs))
    return 0


def cmd_job(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        ctx.console.print(render.job_table(client.get_job(args.job_id)))
    return 0


def cmd_watch(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        return follow(client.watch_job(args.job_id), ctx)


def cmd_cancel(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        job = client.cancel_job(args.job_id)
    ctx.console.print(f"job {escape(job.id)} ({escape(job.task)}): {escape(job.state)}")
    return 0


def cmd_export(args: argparse.Namespace, ctx: Context) -> int:
    with ctx.connect() as client:
        size = client.export_task(args.name, args.output, args.version)
    ctx.console.print(f"wrote {escape(args.name)} ({render.human_bytes(size)}) to {escape(str(args.output))}")
    return 0


def cmd_import(args: argparse.Namespace, ctx: Context) -> int:
    if not args.file.is_file():
        raise UsageError(f"{args.file}: no such file")
    with ctx.connect() as client:
        task = client.import_task(args.file, args.name)
    ctx.console.print(
        f"imported task {escape(task.name)} version {task.version} ({escape(task.method)}, "
        f"{render.human_bytes(task.patch_bytes)})"
    )
    return 0
