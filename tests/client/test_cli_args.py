"""CLI argument parsing and option resolution, and every usage/data error path that exits 2 without a server."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from client.cli import CliOptions, UsageError, build_parser, resolve_options
from tests.client.conftest import CliRunner

UNUSED_SERVER = ["--server", "127.0.0.1:9", "--timeout", "1"]  # never contacted: the tests fail before any call


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_add_task_glue_with_every_training_option() -> None:
    args = parse(
        "add-task", "sst2", "--method", "adapter", "--method-config", '{"variant": "pfeiffer"}', "--epochs", "3",
        "--lr", "1e-3", "--head-lr", "2e-3", "--batch-size", "16", "--data-fraction", "0.5", "--time-budget", "60",
        "--seed", "7", "--max-seq-length", "128", "--patience", "2", "--warmup-ratio", "0.1", "--weight-decay", "0",
        "--evals-per-epoch", "4", "--replace", "--detach", "--data-dir", "/glue", "--task-name", "sst2-a",
        "--train-limit", "100", "--dev-limit", "20",
    )  # fmt: skip
    assert (args.command, args.name, args.method, args.method_config) == (
        "add-task",
        "sst2",
        "adapter",
        {"variant": "pfeiffer"},
    )
    assert (args.epochs, args.lr, args.head_lr, args.batch_size, args.data_fraction) == (3, 1e-3, 2e-3, 16, 0.5)
    assert (args.time_budget, args.seed, args.max_seq_length, args.patience) == (60.0, 7, 128, 2)
    assert (args.warmup_ratio, args.weight_decay, args.evals_per_epoch) == (0.1, 0.0, 4)
    assert args.replace and args.detach
    assert (args.data_dir, args.task_name, args.train_limit, args.dev_limit) == (Path("/glue"), "sst2-a", 100, 20)
    assert args.train is None


def test_add_task_defaults_leave_options_to_the_server() -> None:
    args = parse("add-task", "rte")
    assert args.method == "bitfit"
    assert all(getattr(args, name) is None for name in ("epochs", "lr", "batch_size", "seed", "method_config"))
    assert not args.replace and not args.detach


def test_add_task_custom() -> None:
    args = parse(
        "add-task", "mine", "--train", "t.csv", "--dev", "d.csv", "--text", "q", "--text-pair", "a",
        "--label", "y", "--labels", "no, yes", "--metrics", "f1,accuracy",
    )  # fmt: skip
    assert (args.train, args.dev, args.text, args.text_pair, args.label) == (
        Path("t.csv"),
        Path("d.csv"),
        "q",
        "a",
        "y",
    )
    assert args.labels == ("no", "yes") and args.metrics == ("f1", "accuracy") and not args.regression
    assert parse(
        "add-task", "s", "--train", "t", "--dev", "d", "--text", "x", "--label", "y", "--regression"
    ).regression


def test_predict_forms() -> None:
    single = parse("predict", "sst2", "great movie")
    assert (single.name, single.text, single.text_pair, single.file, single.json) == (
        "sst2",
        "great movie",
        None,
        None,
        False,
    )
    pair = parse("predict", "rte", "a", "b")
    assert (pair.text, pair.text_pair) == ("a", "b")
    batch = parse("predict", "rte", "--file", "in.jsonl", "--json")
    assert batch.file == Path("in.jsonl") and batch.json and batch.text is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["tasks"], {}),
        (["show", "t"], {"name": "t"}),
        (["rm", "t"], {"name": "t"}),
        (["rollback", "t"], {"name": "t", "version": 0}),
        (["rollback", "t", "--version", "2"], {"name": "t", "version": 2}),
        (["pin", "t"], {"name": "t"}),
        (["unpin", "t"], {"name": "t"}),
        (["jobs"], {}),
        (["job", "j1"], {"job_id": "j1"}),
        (["watch", "j1"], {"job_id": "j1"}),
        (["cancel", "j1"], {"job_id": "j1"}),
        (["export", "t", "-o", "p.safetensors"], {"name": "t", "output": Path("p.safetensors"), "version": 0}),
        (["export", "t", "--output", "p", "--version", "3"], {"name": "t", "output": Path("p"), "version": 3}),
        (["import", "p.safetensors"], {"file": Path("p.safetensors"), "name": None}),
        (["import", "p.safetensors", "--name", "u"], {"file": Path("p.safetensors"), "name": "u"}),
    ],
)
def test_other_subcommands(argv: list[str], expected: dict[str, object]) -> None:
    args = parse(*argv)
    assert args.command == argv[0]
    for key, value in expected.items():
        assert getattr(args, key) == value


def test_global_options_before_or_after_the_subcommand() -> None:
    before = parse("--server", "h:1", "--timeout", "2.5", "--token-file", "tok", "--tls-ca", "ca.pem", "tasks")
    after = parse("tasks", "--server", "h:1", "--timeout", "2.5", "--token-file", "tok", "--tls-ca", "ca.pem")
    for args in (before, after):
        assert (args.server, args.timeout, args.token_file, args.tls_ca) == ("h:1", 2.5, Path("tok"), Path("ca.pem"))
    plain = parse("tasks")
    assert (plain.server, plain.timeout, plain.token_file, plain.tls_ca) == (None, None, None, None)


def test_resolve_options_flags_then_env_then_default(tmp_path: Path) -> None:
    assert resolve_options(parse("tasks"), {}) == CliOptions("127.0.0.1:50051", None, None, None, None)
    env = {"TASKPATCH_SERVER": "env:1", "TASKPATCH_TOKEN": "envtok", "GLUE_DIR": "/glue"}
    assert resolve_options(parse("tasks"), env) == CliOptions("env:1", "envtok", None, None, "/glue")
    token_file = tmp_path / "token"
    token_file.write_text("filetok\n")
    options = resolve_options(parse("--server", "flag:1", "--token-file", str(token_file), "tasks"), env)
    assert (options.server, options.token) == ("flag:1", "filetok")


def test_resolve_options_bad_token_and_ca_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read --token-file"):
        resolve_options(parse("--token-file", str(tmp_path / "missing"), "tasks"), {})
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(UsageError, match="is empty"):
        resolve_options(parse("--token-file", str(tmp_path / "empty"), "tasks"), {})
    with pytest.raises(UsageError, match="no such file"):
        resolve_options(parse("--tls-ca", str(tmp_path / "ca.pem"), "tasks"), {})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "required"),
        (["frobnicate"], "invalid choice"),
        (["add-task", "sst2", "--epochs", "0"], "at least 1"),
        (["add-task", "sst2", "--data-fraction", "1.5"], "(0, 1]"),
        (["add-task", "sst2", "--method-config", "[1]"], "JSON object"),
        (["add-task", "sst2", "--method-config", "{"], "not valid JSON"),
        (["export", "t"], "-o/--output"),
        (["rollback", "t", "--version", "x"], "integer"),
        (["--timeout", "0", "tasks"], "positive"),
    ],
)
def test_invalid_usage_exits_2(cli: CliRunner, argv: list[str], message: str) -> None:
    result = cli(*argv)
    assert result.code == 2
    assert message in result.err


def test_help_exits_0(cli: CliRunner) -> None:
    result = cli("--help")
    assert result.code == 0 and "add-task" in result.out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "t"], "nothing to predict"),
        (["predict", "t", "x", "--file", "in.jsonl"], "not both"),
        (["add-task", "nope"], "'nope' is not a GLUE task (known: cola"),
        (["add-task", "sst2", "--text", "c"], "--text describe a custom task: add --train FILE"),
        (["add-task", "mine", "--train", "t.csv", "--text", "c"], "also needs --dev, --label"),
        (
            ["add-task", "mine", "--train", "t", "--dev", "d", "--text", "c", "--label", "l", "--data-dir", "g"],
            "GLUE tasks only",
        ),
        (["--token-file", "/nonexistent/token", "tasks"], "cannot read --token-file"),
    ],
)
def test_usage_errors_exit_2_before_any_call(cli: CliRunner, argv: list[str], message: str) -> None:
    result = cli(*UNUSED_SERVER, *argv)
    assert result.code == 2, result.err
    assert result.err.startswith("error: ")
    assert message in result.err
    assert "Traceback" not in result.err


def test_custom_task_data_error_exits_2_with_the_loader_message(cli: CliRunner, tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,pos\nbad,neg\n")
    dev = tmp_path / "dev.csv"
    dev.write_text("text,label\nmeh,maybe\n")
    base = ["add-task", "mine", "--train", train, "--text", "text", "--label", "label"]
    missing = cli(*UNUSED_SERVER, *base, "--dev", tmp_path / "missing.csv")
    assert missing.code == 2 and missing.err == f"error: {tmp_path / 'missing.csv'}: file not found\n"
    unseen = cli(*UNUSED_SERVER, *base, "--dev", dev)
    assert unseen.code == 2
    assert "row 1" in unseen.err and "'maybe' does not occur in the train file" in unseen.err
    wrong_column = cli(*UNUSED_SERVER, *base, "--dev", dev, "--text-pair", "other")
    assert wrong_column.code == 2 and "column 'other' not found" in wrong_column.err
