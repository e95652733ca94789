"""The study harness on the tiny backbone: the grid, resuming after a kill, the results file's repair, the report.

The acceptance grid is 2 methods x 2 data fractions x 2 seeds on MRPC (8 cells), with 16 train and 8 dev examples
so each cell takes milliseconds. One run of it is shared by the tests below (module fixture): it is started in a
subprocess, killed with SIGKILL after its first line, left with a torn last line, and resumed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from experiments import report, study
from experiments.grid import (
    BUDGET_AXIS,
    FRACTION_AXIS,
    FULL,
    QUICK,
    Cell,
    build_grid,
    estimate_total_s,
    length_factor,
    resolve_spec,
)
from experiments.study import ResultsError, ResultsFile

REPO_ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def grid_args(glue_dir: Path, results: Path) -> list[str]:
    return [
        "--profile", "quick", "--backbone", "tiny", "--device", "cpu", "--threads", "1",
        "--tasks", "mrpc", "--methods", "bitfit", "full", "--fractions", "0.5", "1.0", "--budgets", "40",
        "--fraction-budget", "40", "--seeds", "2", "--train-limit", "16", "--dev-limit", "8",
        "--data-dir", str(glue_dir), "--results", str(results),
    ]  # fmt: skip


def expected_ids() -> set[str]:
    spec = resolve_spec(
        QUICK, "cpu", backbone="tiny", tasks=["mrpc"], methods=["bitfit", "full"], fractions=[0.5, 1.0],
        fraction_budget_s=40, budgets_s=[40], seeds=2, dev_limit=8, train_limit=16,
    )  # fmt: skip
    return {cell.cell_id for cell in build_grid(spec)}


def read_lines(path: Path) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "every line must be complete"
    return [json.loads(line) for line in raw.decode().splitlines()]


@pytest.fixture(scope="module")
def resumed_run(glue_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the 8-cell grid in a subprocess, SIGKILL it after the first line, tear the last line, resume it."""
    results = tmp_path_factory.mktemp("study") / "results.jsonl"
    args = [sys.executable, "-m", "experiments.study", *grid_args(glue_data_dir, results), "--pause-after-cell", "2"]
    process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (results.exists() and results.read_bytes().count(b"\n") >= 1):
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else "exited early"
            assert time.monotonic() < deadline, "no cell finished in time"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL  # killed mid-grid, not finished
    killed_lines = results.read_bytes().count(b"\n")
    assert 1 <= killed_lines < 8

    # A kill during a write leaves half a line: the resumed run must drop it and redo that cell.
    first = results.read_bytes().splitlines(keepends=True)[0]
    with results.open("ab") as handle:
        handle.write(first[: len(first) // 2])

    code = study.main(grid_args(glue_data_dir, results))
    return {"code": code, "results": results, "killed_lines": killed_lines}


def test_grid_resumes_after_kill_without_duplicates_or_losses(resumed_run: dict[str, Any]) -> None:
    assert resumed_run["code"] == 0
    records = read_lines(resumed_run["results"])
    ids = [r["cell_id"] for r in records]
    assert len(ids) == len(set(ids)) == 8
    assert set(ids) == expected_ids()
    for record in records:
        assert record["cell"]["task"] == "mrpc" and record["device"]["type"] == "cpu"
        assert record["examples_seen"] > 0 and record["trainable_parameters"] > 0 and record["patch_bytes"] > 0
        assert record["metrics"]["f1"] == record["metrics"][record["primary_metric"]]
        assert {"torch", "transformers", "python"} <= set(record["versions"])
        assert set(record["baseline_metrics"]) == {"f1", "accuracy"}
    bitfit = next(r for r in records if r["cell"]["method"] == "bitfit")
    full = next(r for r in records if r["cell"]["method"] == "full")
    assert bitfit["patch_bytes"] < full["patch_bytes"]  # the full "patch" is the whole (tiny) model


def test_rerun_of_a_finished_grid_runs_nothing(resumed_run: dict[str, Any], glue_data_dir: Path) -> None:
    before = resumed_run["results"].read_bytes()
    assert study.main(grid_args(glue_data_dir, resumed_run["results"])) == 0
    assert resumed_run["results"].read_bytes() == before


def test_report_from_results_file(resumed_run: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert report.main([str(resumed_run["results"]), "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "## MRPC (F1, dev ×100)" in text
    assert "| method | 50% | 100% |" in text  # method x fraction
    assert "| method | 40s |" in text  # method x budget
    for number, words in ((1, "BitFit matches full fine-tuning"), (2, "30% of the data"), (3, "adapters vary")):
        assert f"Claim {number}" in text and words in text
    assert "not our measurements" in text and "arXiv:2106.09685" in text  # references, kept apart
    for name in ("fraction.png", "budget.png", "spread.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in text

    # The study CLI's report step gives the same files.
    again = tmp_path / "again"
    args = ["--report-only", "--results", str(resumed_run["results"]), "--out", str(again)]
    assert study.main(args) == 0
    assert (again / "report.md").is_file() and (again / "spread.png").read_bytes()[:8] == PNG_MAGIC


# ---- the results file ------------------------------------------------------------------------------------------


def record(cell_id: str, **extra: Any) -> dict[str, Any]:
    return {"cell_id": cell_id, **extra}


def test_truncated_last_line_is_dropped_and_the_file_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    results = ResultsFile(path)
    results.append(record("a", value=1))
    results.append(record("b", value=2))
    with path.open("ab") as handle:
        handle.write(b'{"cell_id": "c", "val')
    records, note = results.load()
    assert [r["cell_id"] for r in records] == ["a", "b"]
    assert note and "truncated" in note
    assert path.read_bytes().count(b"\n") == 2 and path.read_bytes().endswith(b"\n")
    results.append(record("c", value=3))
    assert [r["cell_id"] for r in read_lines(path)] == ["a", "b", "c"]


def test_complete_last_record_without_newline_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record("a")) + "\n" + json.dumps(record("b")))
    records, note = ResultsFile(path).load()
    assert [r["cell_id"] for r in records] == ["a", "b"] and note is None
    assert path.read_text().endswith("\n")


def test_a_bad_line_in_the_middle_is_an_error_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(record("a")) + "\nnot json\n" + json.dumps(record("b")) + "\n")
    with pytest.raises(ResultsError, match=r"r.jsonl:2"):
        ResultsFile(path).load()


def test_two_runners_cannot_share_a_results_file(tmp_path: Path) -> None:
    first, second = ResultsFile(tmp_path / "r.jsonl"), ResultsFile(tmp_path / "r.jsonl")
    first.lock()
    try:
        with pytest.raises(ResultsError, match="in use"):
            second.lock()
    finally:
        first.unlock()
    second.lock()
    second.unlock()


# ---- the grid --------------------------------------------------------------------------------------------------


def test_quick_grid_shape_and_shared_cells() -> None:
    cells = build_grid(resolve_spec(QUICK, "cpu", backbone="default"))
    # 3 tasks x 3 methods x 2 seeds x (3 fractions + 3 budgets - the unlimited 100% cell on both axes)
    assert len(cells) == 3 * 3 * 2 * 5
    assert len({c.cell_id for c in cells}) == len(cells)
    shared = [c for c in cells if set(c.axes) == {FRACTION_AXIS, BUDGET_AXIS}]
    assert len(shared) == 3 * 3 * 2 and all(c.data_fraction == 1.0 and c.time_budget_s == 0 for c in shared)
    assert [c.seed for c in cells] == sorted(c.seed for c in cells)  # seed-major


def test_equal_compute_scales_epochs_by_the_fraction() -> None:
    cells = build_grid(resolve_spec(QUICK, "cpu", backbone="default", tasks=["mrpc"], methods=["bitfit"], seeds=1))
    epochs = {(c.data_fraction, c.time_budget_s): c.train_epochs for c in cells}
    assert epochs == {(0.1, 0.0): 10, (0.3, 0.0): 3, (1.0, 0.0): 1, (1.0, 10.0): 1, (1.0, 30.0): 1}
    plain = build_grid(resolve_spec(QUICK, "cpu", backbone="default", equal_compute=False, epochs=2))
    assert {c.train_epochs for c in plain} == {2}
    with pytest.raises(ValueError, match="equal compute"):
        resolve_spec(FULL, "cpu", backbone="default", equal_compute=True)  # method-default epochs cannot scale


def test_cell_id_depends_on_the_config_only() -> None:
    base = Cell("mrpc", "bitfit", 0.3, 40, 0, epochs=1, dev_limit=400, train_limit=0, backbone="default")
    same = Cell("mrpc", "bitfit", 0.30, 40.0, 0, epochs=1, dev_limit=400, train_limit=0, backbone="default",
                axes=(FRACTION_AXIS,))  # fmt: skip
    assert base.cell_id == same.cell_id
    for change in ({"seed": 1}, {"method": "full"}, {"data_fraction": 0.5}, {"dev_limit": 0}, {"backbone": "tiny"}):
        assert Cell(**{**base.identity(), **change}).cell_id != base.cell_id, change


def test_quick_profile_fits_an_hour_on_two_cpu_cores() -> None:
    """The estimate for the quick grid at the measured CPU rates leaves margin under 60 minutes."""
    cells = build_grid(resolve_spec(QUICK, "cpu", backbone="default"))
    assert QUICK.train_limit == 2500 and QUICK.dev_limit == 300
    sizes = {task: (QUICK.train_limit, QUICK.dev_limit) for task in QUICK.tasks}  # GLUE splits are all larger
    lengths = {"mrpc": length_factor(231.2), "stsb": length_factor(115.2), "cola": length_factor(40.7)}  # chars
    minutes = estimate_total_s(cells, sizes, {"full": 10, "bitfit": 10, "adapter": 10}, "cpu", lengths) / 60
    assert minutes <= 50, minutes


def test_full_profile_budgets_scale_with_the_device() -> None:
    cpu, cuda = resolve_spec(FULL, "cpu", backbone="default"), resolve_spec(FULL, "cuda", backbone="default")
    assert 0.0 in cpu.budgets_s and 0.0 in cuda.budgets_s  # unlimited is on the budget axis
    assert max(cpu.budgets_s) > max(cuda.budgets_s)
    assert cpu.fractions == (0.1, 0.3, 0.5, 1.0) and len(cpu.seeds) == 3


def test_results_from_another_device_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="cuda"):
        study._check_same_device([{"cell_id": "a", "device": {"type": "cuda"}}], "cpu", tmp_path / "r.jsonl")


# ---- verdicts on hand-made results -----------------------------------------------------------------------------


def synthetic(
    values: dict[tuple[str, float, float], list[float]], baseline: float | None = None
) -> list[dict[str, Any]]:
    """Records for (method, fraction, budget) -> one primary value per seed, on one task (MRPC, F1)."""
    records = []
    for (method, fraction, budget), seeds in values.items():
        axes = ([FRACTION_AXIS] if budget == 40 else []) + ([BUDGET_AXIS] if fraction == 1.0 else [])
        for seed, value in enumerate(seeds):
            cell = Cell("mrpc", method, fraction, budget, seed, epochs=1, dev_limit=0, train_limit=0, backbone="x")
            row = {
                "cell_id": cell.cell_id, "cell": cell.identity(), "axes": axes, "primary_metric": "f1",
                "metrics": {"f1": value / 100}, "examples_seen": 100, "stop_reason": "completed",
                "wall_time_s": 1.0, "trainable_parameters": 10, "patch_bytes": 100, "dev_examples": 408,
                "profile": "test", "backbone": {"id": "x"}, "device": {"type": "cpu", "name": "cpu"},
                "versions": {"torch": "t", "transformers": "t", "python": "p"}, "git_commit": None,
            }  # fmt: skip
            if baseline is not None:
                row["baseline_metrics"] = {"f1": baseline / 100}
            records.append(row)
    return records


def statuses(records: list[dict[str, Any]]) -> list[str]:
    return [v.status for v in report.verdicts(report.summarize(records))]


def test_verdicts_follow_the_numbers() -> None:
    agreeing: dict[tuple[str, float, float], list[float]] = {
        ("full", 0.1, 40): [80.0, 81.0], ("bitfit", 0.1, 40): [82.0, 82.5], ("adapter", 0.1, 40): [70.0, 90.0],
        ("full", 0.3, 40): [82.0, 83.0], ("bitfit", 0.3, 40): [85.0, 85.5], ("adapter", 0.3, 40): [75.0, 76.0],
        ("full", 1.0, 40): [86.0, 86.5], ("bitfit", 1.0, 40): [86.0, 86.4], ("adapter", 1.0, 40): [80.0, 95.0],
        ("full", 1.0, 15): [84.0, 84.5], ("bitfit", 1.0, 15): [84.0, 84.2], ("adapter", 1.0, 15): [84.0, 84.0],
    }  # fmt: skip
    assert statuses(synthetic(agreeing)) == [report.SUPPORTED] * 3

    disagreeing = dict(agreeing)
    disagreeing.update({("bitfit", f, b): [v - 10 for v in agreeing[("bitfit", f, b)]] for f, b in
                        ((0.1, 40), (0.3, 40), (1.0, 40), (1.0, 15))})  # fmt: skip
    disagreeing.update({("adapter", f, b): [agreeing[("full", f, b)][0] + 3] * 2 for f, b in
                        ((0.1, 40), (0.3, 40), (1.0, 40), (1.0, 15))})  # fmt: skip
    first, second, third = statuses(synthetic(disagreeing))
    assert first == report.NOT_SUPPORTED
    assert second == report.PARTLY  # stable at 30% (a drop of 0.9), but below full there
    assert third == report.NOT_SUPPORTED  # adapters now steady, and always 2.5-3 points above full


def test_report_with_one_seed_says_what_cannot_be_judged(tmp_path: Path) -> None:
    records = synthetic({("full", 1.0, 40): [80.0], ("bitfit", 1.0, 40): [81.0], ("adapter", 1.0, 40): [79.0]})
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    written = report.write_report(path, tmp_path / "out")
    assert [v.status for v in written.verdicts][1] == report.NOT_EVALUABLE
    text = written.markdown.read_text()
    assert "81.0 (n=1)" in text and "needs BitFit at fractions 0.3 and 1.0" in text


def test_settings_at_the_constant_baseline_are_left_out_of_the_verdicts(tmp_path: Path) -> None:
    """Two models that both predict the majority class "match", but that says nothing about the methods."""
    idle: dict[tuple[str, float, float], list[float]] = {
        (m, f, 40): [81.2, 81.3] for m in ("full", "bitfit", "adapter") for f in (0.1, 0.3, 1.0)
    }
    found = report.verdicts(report.summarize(synthetic(idle, baseline=81.2)))
    assert [v.status for v in found] == [report.NOT_EVALUABLE] * 3
    assert "left out" in " ".join(found[0].details)

    learned = dict(idle)
    learned[("full", 1.0, 40)] = [86.0, 86.5]
    learned[("bitfit", 1.0, 40)] = [85.5, 86.0]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic(learned, baseline=81.2)))
    written = report.write_report(path, tmp_path / "out")
    assert written.verdicts[0].status == report.SUPPORTED  # judged on the one setting where they learned
    text = written.markdown.read_text()
    assert "Constant-prediction baseline (always the majority class): 81.2" in text
    assert "81.2 ± 0.1 °" in text and "86.2 ± 0.4 |" in text


def test_report_warns_when_a_file_mixes_settings(tmp_path: Path) -> None:
    records = synthetic({("full", 1.0, 40): [80.0, 81.0], ("bitfit", 1.0, 40): [81.0, 82.0]})
    records[0]["cell"]["epochs"] = 3
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    written = report.write_report(path, tmp_path / "out")
    assert any("mixes 2 settings" in w for w in written.warnings)
    assert "mixes 2 settings" in written.markdown.read_text()


def test_keep_best_optimism_is_measured_per_number_of_evaluations() -> None:
    def record(task: str, best: float, history: list[float]) -> dict[str, Any]:
        return {
            "cell": {"task": task}, "primary_metric": "f1", "metrics": {"f1": best},
            "history": [{"f1": value} for value in history], "train_config": {"keep_best": True},
        }  # fmt: skip

    records = [
        record("mrpc", 0.84, [0.80, 0.84, 0.81]),  # kept 3 points above the last evaluation
        record("mrpc", 0.83, [0.82, 0.83, 0.82]),  # 1 point
        record("mrpc", 0.80, [0.80]),  # one evaluation: no gap
        record("stsb", 0.851, [0.850, 0.851]),  # 0.1 points: under the threshold, not mentioned
    ]
    notes = report.keep_best_optimism(records)
    assert len(notes) == 1 and notes[0].startswith("MRPC")
    assert "2.0 with 3 evaluations (2 cells); 0.0 with 1 evaluation (1 cells)" in notes[0]
