"""Turn a study results file into Markdown tables, PNG plots and a verdict on each of the study's three claims.

    python -m experiments.report results/study-quick.jsonl --out docs/study

Writes ``<out>/report.md`` (per task: method x data fraction and method x time budget, mean ± std over seeds; what
training each cell actually did; the verdicts; the published numbers, kept apart) and three plots:
``fraction.png`` (metric vs data fraction, error bars = std over seeds), ``budget.png`` (metric vs time budget)
and ``spread.png`` (each seed's deviation from its cell's mean, per method: the run-to-run variability claim 3
is about). Only reads the results file; a truncated last line (a run still going, or killed) is skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from experiments import references
from experiments.grid import BUDGET_AXIS, FRACTION_AXIS, format_budget

# Decision rules of the verdicts, in metric points (x100). Stated in the report next to each verdict.
MATCH_TOLERANCE = 1.0  # "matches": BitFit at most 1 point below full fine-tuning (docs/quality.md's goal)
STABLE_DROP = 2.0  # "stable with 30% of the data": at most 2 points below its own 100%-data score ...
STABLE_STD = 2.0  # ... with a seed-to-seed std of at most 2 points
GAIN = 1.0  # an adapter "gains" over full fine-tuning when more than 1 point above, "loses" when 1 point below
BASELINE_MARGIN = 1.0  # a setting whose mean is within 1 point of the constant-prediction baseline learned nothing

METHOD_ORDER = ("full", "bitfit", "adapter")
METHOD_TITLES = {"full": "full fine-tuning", "bitfit": "BitFit", "adapter": "adapters"}
METHOD_COLORS = {"full": "C0", "bitfit": "C1", "adapter": "C2"}  # the same colour for a method in every plot
METRIC_TITLES = {"f1": "F1", "accuracy": "accuracy", "matthews": "Matthews corr.", "spearman": "Spearman",
                 "pearson": "Pearson"}  # fmt: skip
SUPPORTED, PARTLY, NOT_SUPPORTED, NOT_EVALUABLE = (
    "supported",
    "partly supported",
    "not supported",
    "cannot be evaluated",
)


# ---- reading ---------------------------------------------------------------------------------------------------


def load_records(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Records of ``path`` (first of each cell id wins) and warnings about what was skipped."""
    warnings: list[str] = []
    records: dict[str, dict[str, Any]] = {}
    text = path.read_text()
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            last = number == len(lines)  # no newline after it: a run in flight or killed mid-write
            warnings.append(f"line {number}: {'truncated last line' if last else 'not JSON'}, skipped")
            continue
        if not isinstance(record, dict) or "cell_id" not in record:
            warnings.append(f"line {number}: not a study record, skipped")
            continue
        if record["cell_id"] in records:
            warnings.append(f"line {number}: cell {record['cell_id']} appears again, the first one is used")
            continue
        records[record["cell_id"]] = record
    return list(records.values()), warnings


@dataclass
class Group:
    """The seeds of one (task, method, fraction, budget) setting."""

    task: str
    method: str
    fraction: float
    budget: float
    axes: set[str] = field(default_factory=set)
    values: list[float] = field(default_factory=list)  # primary metric x100, one per seed
    examples_seen: list[int] = field(default_factory=list)
    train_examples: list[int] = field(default_factory=list)  # the training pool: the split after the fraction
    capped: int = 0  # cells stopped by the time budget
    wall_time_s: list[float] = field(default_factory=list)
    trainable_parameters: int = 0
    patch_bytes: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample std over seeds; NaN with one seed (unknown, not zero)."""
        return statistics.stdev(self.values) if self.n >= 2 else math.nan

    def cell(self) -> str:
        if self.n == 1:
            return f"{self.mean:.1f} (n=1)"
        return f"{self.mean:.1f} ± {self.std:.1f}"


@dataclass
class TaskResults:
    task: str
    metric: str
    groups: dict[tuple[str, float, float], Group]  # (method, fraction, budget) -> group
    baseline: float | None = None  # dev metric x100 of predicting the majority class (regression: the mean)

    def learned(self, group: Group) -> bool:
        """False when the setting's mean is within BASELINE_MARGIN of the constant-prediction baseline."""
        return self.baseline is None or group.mean > self.baseline + BASELINE_MARGIN

    def methods(self) -> list[str]:
        return _ordered_methods({m for m, _, _ in self.groups})

    def axis(self, name: str) -> list[Group]:
        return [g for g in self.groups.values() if name in g.axes]

    def get(self, method: str, fraction: float, budget: float) -> Group | None:
        return self.groups.get((method, fraction, budget))

    def main_fraction_budget(self) -> float | None:
        """The budget of the fraction axis (the one most fraction-axis cells used)."""
        budgets = [g.budget for g in self.axis(FRACTION_AXIS) for _ in g.values]
        return max(set(budgets), key=budgets.count) if budgets else None

    def settings(self) -> list[tuple[float, float]]:
        """Every (fraction, budget) on either axis, fraction axis first."""
        seen: dict[tuple[float, float], None] = {}
        for name in (FRACTION_AXIS, BUDGET_AXIS):
            for g in sorted(self.axis(name), key=lambda g: (g.fraction, _budget_key(g.budget))):
                seen[(g.fraction, g.budget)] = None
        return list(seen)


def summarize(records: Iterable[dict[str, Any]]) -> dict[str, TaskResults]:
    tasks: dict[str, TaskResults] = {}
    for record in records:
        cell = record["cell"]
        task = tasks.setdefault(cell["task"], TaskResults(cell["task"], record["primary_metric"], {}))
        if task.baseline is None and "baseline_metrics" in record:
            task.baseline = 100.0 * float(record["baseline_metrics"][record["primary_metric"]])
        key = (cell["method"], float(cell["data_fraction"]), float(cell["time_budget_s"]))
        group = task.groups.setdefault(key, Group(cell["task"], *key))
        group.axes.update(record.get("axes") or [])
        group.values.append(100.0 * float(record["metrics"][record["primary_metric"]]))
        group.examples_seen.append(int(record["examples_seen"]))
        group.train_examples.append(int(record.get("train_examples", 0)))
        group.capped += record.get("stop_reason") == "time_budget"
        group.wall_time_s.append(float(record["wall_time_s"]))
        group.trainable_parameters = int(record["trainable_parameters"])
        group.patch_bytes = int(record["patch_bytes"])
    return dict(sorted(tasks.items(), key=lambda kv: _task_key(kv[0])))


def _ordered_methods(methods: Iterable[str]) -> list[str]:
    return sorted(set(methods), key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else 99, m))


def _task_key(task: str) -> tuple[int, str]:
    order = ("mrpc", "cola", "stsb")
    return (order.index(task) if task in order else 99, task)


def _budget_key(budget: float) -> float:
    return budget or math.inf  # unlimited (0) sorts last


def _title(task: str) -> str:
    return references.TASK_TITLES.get(task, task)


def _metric(name: str) -> str:
    return METRIC_TITLES.get(name, name)


def _setting(fraction: float, budget: float) -> str:
    return f"{fraction:.0%} data, budget {format_budget(budget)}"


def _signed(value: float) -> str:
    return f"{value:+.1f}"


# ---- verdicts --------------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    number: int
    claim: str
    status: str
    rule: str
    details: list[str]

    def headline(self) -> str:
        return f"Claim {self.number} ({self.claim}): {self.status}"

    def markdown(self) -> list[str]:
        lines = [f"### Claim {self.number}: {self.claim} — **{self.status}**", "", f"Rule: {self.rule}", ""]
        lines += [f"- {d}" for d in self.details]
        return [*lines, ""]


def _status(passed: int, total: int) -> str:
    if total == 0:
        return NOT_EVALUABLE
    if passed == total:
        return SUPPORTED
    return PARTLY if passed > 0 else NOT_SUPPORTED


def claim_bitfit_matches(tasks: dict[str, TaskResults]) -> Verdict:
    rule = (
        f"in every compared setting (each data fraction and each time budget), BitFit's mean is at most"
        f" {MATCH_TOLERANCE:g} point below full fine-tuning's; 'partly' when that holds in some settings."
    )
    details: list[str] = []
    passed = total = 0
    for task in tasks.values():
        deltas: list[tuple[tuple[float, float], float, Group, Group]] = []
        idle = 0
        for fraction, budget in task.settings():
            bitfit, full = task.get("bitfit", fraction, budget), task.get("full", fraction, budget)
            if bitfit and full and (task.learned(bitfit) or task.learned(full)):
                deltas.append(((fraction, budget), bitfit.mean - full.mean, bitfit, full))
            elif bitfit and full:
                idle += 1
        if idle:
            details.append(f"{_title(task.task)}: {_idle(idle, task)}")
        if not deltas:
            continue
        ok = sum(d >= -MATCH_TOLERANCE for _, d, _, _ in deltas)
        passed, total = passed + ok, total + len(deltas)
        main = (1.0, task.main_fraction_budget())
        headline = next((x for x in deltas if x[0] == main), deltas[-1])
        (fraction, budget), delta, bitfit, full = headline
        low, high = min(d for _, d, _, _ in deltas), max(d for _, d, _, _ in deltas)
        details.append(
            f"{_title(task.task)} ({_metric(task.metric)}): BitFit − full at {_setting(fraction, budget)} ="
            f" {_signed(delta)} ({bitfit.cell()} vs {full.cell()}); within {MATCH_TOLERANCE:g} point or better in"
            f" {ok} of {len(deltas)} settings (BitFit − full from {_signed(low)} to {_signed(high)})."
        )
    if not total:
        details.append("needs BitFit and full fine-tuning cells in a setting where at least one of them learned.")
    return Verdict(1, "BitFit matches full fine-tuning", _status(passed, total), rule, details)


def claim_bitfit_low_data(tasks: dict[str, TaskResults]) -> Verdict:
    rule = (
        f"(a) with 30% of the data BitFit is at most {STABLE_DROP:g} points below its own 100%-data score and its"
        f" seed-to-seed std is at most {STABLE_STD:g} points; (b) at every intermediate fraction (between the"
        " smallest and 100%) BitFit's mean is above full fine-tuning's. Supported when (a) and (b) hold"
        " everywhere, partly when some of them hold."
    )
    details: list[str] = []
    checks: list[bool] = []
    for task in tasks.values():
        budget = task.main_fraction_budget()
        if budget is None:
            continue
        fractions = sorted({g.fraction for g in task.axis(FRACTION_AXIS) if g.budget == budget})
        low_data, all_data = task.get("bitfit", 0.3, budget), task.get("bitfit", 1.0, budget)
        name = f"{_title(task.task)} ({_metric(task.metric)}, budget {format_budget(budget)})"
        if low_data and all_data and not task.learned(all_data):
            details.append(f"{name}: (a) left out: BitFit at 100% is at the constant-prediction baseline.")
        elif low_data and all_data:
            drop, std = all_data.mean - low_data.mean, low_data.std
            stable = drop <= STABLE_DROP and (math.isnan(std) or std <= STABLE_STD)
            checks.append(stable)
            spread = "std unknown with one seed" if math.isnan(std) else f"std {std:.1f}"
            details.append(
                f"{name}: (a) BitFit at 30% {low_data.cell()} vs 100% {all_data.cell()} (30% − 100%:"
                f" {_signed(-drop)}), {spread} → {'stable' if stable else 'not stable'} by the rule."
            )
        else:
            details.append(f"{name}: (a) needs BitFit at fractions 0.3 and 1.0 on the fraction axis.")
        intermediate = [f for f in fractions if fractions[0] < f < fractions[-1]]
        parts = []
        for fraction in intermediate:
            bitfit, full = task.get("bitfit", fraction, budget), task.get("full", fraction, budget)
            if bitfit and full and not (task.learned(bitfit) or task.learned(full)):
                parts.append(f"{fraction:.0%}: left out, both at the constant-prediction baseline")
            elif bitfit and full:
                delta = bitfit.mean - full.mean
                checks.append(delta > 0)
                parts.append(f"{fraction:.0%}: {_signed(delta)} ({bitfit.cell()} vs {full.cell()})")
        if parts:
            details.append(f"{name}: (b) BitFit − full at intermediate fractions: " + "; ".join(parts) + ".")
        else:
            details.append(f"{name}: (b) needs BitFit and full at a fraction strictly between the extremes.")
    return Verdict(
        2,
        "BitFit is stable with 30% of the data and beats full fine-tuning at intermediate data levels",
        _status(sum(checks), len(checks)),
        rule,
        details,
    )


def _pooled_std(groups: Iterable[Group]) -> float:
    """Root mean of the per-setting seed variances: run-to-run spread with the effect of the setting removed."""
    variances = [statistics.variance(g.values) for g in groups if g.n >= 2]
    return math.sqrt(statistics.fmean(variances)) if variances else math.nan


def claim_adapters_vary(tasks: dict[str, TaskResults]) -> Verdict:
    rule = (
        "(a) adapters have the largest seed-to-seed std of the methods (pooled over settings); (b) their difference"
        f" to full fine-tuning changes sign across settings (gain > +{GAIN:g}, loss < −{GAIN:g}, else tie: more than"
        " one kind = inconsistent). Supported when (a) holds on every task and (b) holds; partly when one holds."
    )
    details: list[str] = []
    variable_tasks = evaluable_tasks = 0
    kinds_all: set[str] = set()
    for task in tasks.values():
        methods = task.methods()
        if "adapter" not in methods:
            continue
        stds = {
            m: _pooled_std(g for (method, _, _), g in task.groups.items() if method == m and task.learned(g))
            for m in methods
        }
        name = f"{_title(task.task)} ({_metric(task.metric)})"
        if not math.isnan(stds["adapter"]) and len([s for s in stds.values() if not math.isnan(s)]) > 1:
            evaluable_tasks += 1
            most = max((s, m) for m, s in stds.items() if not math.isnan(s))[1] == "adapter"
            variable_tasks += most
            listed = ", ".join(f"{METHOD_TITLES.get(m, m)} {s:.1f}" for m, s in stds.items() if not math.isnan(s))
            details.append(f"{name}: (a) pooled seed std: {listed} → adapters {'most' if most else 'not most'}"
                           " variable.")  # fmt: skip
        else:
            details.append(
                f"{name}: (a) needs 2+ seeds in settings above the constant-prediction baseline, for adapters and"
                " another method."
            )
        kinds: dict[str, int] = {"gain": 0, "tie": 0, "loss": 0}
        deltas = []
        for fraction, budget in task.settings():
            adapter, full = task.get("adapter", fraction, budget), task.get("full", fraction, budget)
            if adapter and full and (task.learned(adapter) or task.learned(full)):
                delta = adapter.mean - full.mean
                deltas.append(delta)
                kinds["gain" if delta > GAIN else "loss" if delta < -GAIN else "tie"] += 1
        if deltas:
            kinds_all.update(k for k, n in kinds.items() if n)
            details.append(
                f"{name}: (b) adapters − full over {len(deltas)} settings: {kinds['gain']} gains, {kinds['tie']}"
                f" ties, {kinds['loss']} losses (from {_signed(min(deltas))} to {_signed(max(deltas))})."
            )
    inconsistent = len(kinds_all) > 1
    if kinds_all:
        details.append(
            f"(b) overall: {'inconsistent' if inconsistent else 'consistent'} ({', '.join(sorted(kinds_all))})."
        )
    if not evaluable_tasks and not kinds_all:
        status = NOT_EVALUABLE
        details.append("needs adapter cells, with 2+ seeds for (a) and full fine-tuning cells for (b).")
    elif (evaluable_tasks and variable_tasks == evaluable_tasks) and inconsistent:
        status = SUPPORTED
    elif variable_tasks or inconsistent:
        status = PARTLY
    else:
        status = NOT_SUPPORTED
    return Verdict(3, "adapters vary a lot across runs, with inconsistent gains", status, rule, details)


def _idle(count: int, task: TaskResults) -> str:
    return (
        f"{count} setting(s) left out: both methods within {BASELINE_MARGIN:g} point of the constant-prediction"
        f" baseline ({_metric(task.metric)} {task.baseline:.1f}), i.e. neither learned anything in its budget."
    )


def verdicts(tasks: dict[str, TaskResults]) -> list[Verdict]:
    return [claim_bitfit_matches(tasks), claim_bitfit_low_data(tasks), claim_adapters_vary(tasks)]


def caveats(records: Sequence[dict[str, Any]], tasks: dict[str, TaskResults]) -> list[str]:
    """What limits the reading of these numbers, computed from the records rather than assumed."""
    notes: list[str] = []
    for task in tasks.values():
        idle = [g for g in task.groups.values() if not task.learned(g)]
        if idle:
            notes.append(
                f"{_title(task.task)}: {len(idle)} of {len(task.groups)} settings are within {BASELINE_MARGIN:g} point"
                f" of the constant-prediction baseline ({_metric(task.metric)} {task.baseline:.1f}, marked ° in the"
                " tables): they learned nothing usable within their budget, and the verdicts leave comparisons"
                " between such settings out."
            )
        budget = task.main_fraction_budget()
        on_axis = [g for g in task.axis(FRACTION_AXIS) if g.budget == budget]
        total, capped = sum(g.n for g in on_axis), sum(g.capped for g in on_axis)
        if budget and capped:
            by_fraction: dict[float, list[Group]] = {}
            for g in on_axis:
                by_fraction.setdefault(g.fraction, []).append(g)
            full = [f for f, gs in sorted(by_fraction.items()) if all(g.capped == g.n for g in gs)]
            parts = []
            for fraction in full:
                seen = statistics.fmean(x for g in by_fraction[fraction] for x in g.examples_seen)
                pool = statistics.fmean(x for g in by_fraction[fraction] for x in g.train_examples)
                parts.append(f"{fraction:.0%}: {seen:,.0f} of {pool:,.0f}")
            where = (
                f"; at {', '.join(f'{f:.0%}' for f in full)} every cell did (mean examples seen of the pool:"
                f" {'; '.join(parts)}), so there the budget, not the amount of data, limited training: the"
                " fraction only decides the pool the examples come from"
                if full
                else ""
            )
            notes.append(
                f"{_title(task.task)}: {capped} of {total} cells on the fraction axis stopped at the {budget:g} s"
                f" budget{where}."
            )
    dev_limits = {r["cell"].get("dev_limit") for r in records}
    if dev_limits - {0, None}:
        sizes = sorted({r["dev_examples"] for r in records})
        notes.append(
            f"Dev sets were limited to {', '.join(map(str, sorted(dev_limits - {0, None})))} examples per task (a"
            f" stratified sample, the same for every cell; sizes used: {', '.join(map(str, sizes))}), so metrics"
            " carry more sampling noise than on the whole dev split."
        )
    seeds = max((g.n for t in tasks.values() for g in t.groups.values()), default=0)
    if seeds < 3:
        notes.append(f"{seeds} seed(s) per setting: std estimates from so few runs are rough.")
    scaled = sorted(
        {(r["cell"]["data_fraction"], r["train_config"]["epochs"]) for r in records if r["cell"].get("equal_compute")}
    )
    epochs = {r["cell"].get("epochs") for r in records}
    if epochs != {None} and not scaled:
        listed = ", ".join("method default" if e is None else str(e) for e in sorted(epochs, key=str))
        notes.append(f"Epochs per cell: {listed} (the methods' defaults are 10, docs/training-defaults.md).")
    if scaled:
        listed = ", ".join(f"{epochs} at {fraction:.0%}" for fraction, epochs in scaled)
        notes.append(
            f"Equal compute: epochs scale with 1/fraction ({listed}), so every fraction trains on about as many"
            " examples and only the amount of distinct data differs."
        )
    limits = {r["cell"].get("train_limit") for r in records} - {0, None}
    if limits:
        pool_sizes = ", ".join(
            f"{t} {n:,}"
            for t, n in sorted(
                {(r["cell"]["task"], r["train_examples"]) for r in records if r["cell"]["data_fraction"] == 1.0}
            )
        )
        notes.append(
            f"100% of the data is a stratified sample of at most {', '.join(f'{n:,}' for n in sorted(limits))}"
            f" training examples per task (used: {pool_sizes}), not the whole GLUE train split."
        )
    notes += keep_best_optimism(records)
    return notes


def keep_best_optimism(records: Sequence[dict[str, Any]], threshold: float = 0.5) -> list[str]:
    """How far the kept-best score sits above the last evaluation, by how many evaluations a cell made.

    Keep-best picks the evaluation with the best score on the same dev examples the tables report, so the more
    evaluations a cell makes, the more its score is the maximum of noisy looks. Cells that make more evaluations
    (more epochs: the small fractions under equal compute, or unlimited budgets) are then favoured; this puts a
    number on it, per task, when the gap reaches ``threshold`` points.
    """
    gaps: dict[str, dict[int, list[float]]] = {}
    for record in records:
        history = record.get("history") or []
        if not record.get("train_config", {}).get("keep_best", True) or not history:
            continue
        primary = record["primary_metric"]
        gap = 100 * (record["metrics"][primary] - history[-1][primary])
        gaps.setdefault(record["cell"]["task"], {}).setdefault(len(history), []).append(gap)
    notes = []
    for task in sorted(gaps, key=_task_key):
        by_count = gaps[task]
        if max(statistics.fmean(values) for values in by_count.values()) < threshold:
            continue
        listed = "; ".join(
            f"{statistics.fmean(values):.1f} with {count} evaluation{'s' if count > 1 else ''} ({len(values)} cells)"
            for count, values in sorted(by_count.items(), reverse=True)
        )
        notes.append(
            f"{_title(task)}: the kept-best score is the best of a cell's evaluations on the very dev examples"
            f" reported, so cells that evaluate more often read optimistically. Mean points above the last"
            f" evaluation: {listed}."
        )
    return notes


# ---- tables ----------------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def _human_bytes(size: int) -> str:
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def task_tables(task: TaskResults) -> list[str]:
    lines = [f"## {_title(task.task)} ({_metric(task.metric)}, dev ×100)", ""]
    if task.baseline is not None:
        kind = "the majority class" if task.metric not in ("spearman", "pearson") else "the mean score"
        lines += [
            f"Constant-prediction baseline (always {kind}): {task.baseline:.1f}; ° marks a mean within"
            f" {BASELINE_MARGIN:g} point of it.",
            "",
        ]
    methods = task.methods()
    fraction_groups = task.axis(FRACTION_AXIS)
    for budget in sorted({g.budget for g in fraction_groups}, key=_budget_key):
        fractions = sorted({g.fraction for g in fraction_groups if g.budget == budget})
        lines += [f"Data fraction (time budget {format_budget(budget)}):", ""]
        lines += _table(
            ["method", *(f"{f:.0%}" for f in fractions)],
            ([METHOD_TITLES.get(m, m), *(_cell(task, task.get(m, f, budget)) for f in fractions)] for m in methods),
        )
        lines += [
            "Training actually done there (mean examples seen; seeds stopped by the time budget / seeds):",
            "",
        ]
        lines += _table(
            ["method", *(f"{f:.0%}" for f in fractions)],
            ([METHOD_TITLES.get(m, m), *(_done(task.get(m, f, budget)) for f in fractions)] for m in methods),
        )
    budget_groups = task.axis(BUDGET_AXIS)
    for fraction in sorted({g.fraction for g in budget_groups}):
        budgets = sorted({g.budget for g in budget_groups if g.fraction == fraction}, key=_budget_key)
        lines += [f"Time budget (data fraction {fraction:.0%}):", ""]
        lines += _table(
            ["method", *(format_budget(b) for b in budgets)],
            ([METHOD_TITLES.get(m, m), *(_cell(task, task.get(m, fraction, b)) for b in budgets)] for m in methods),
        )
    cost_rows = []
    for method in methods:
        groups = [g for (m, _, _), g in task.groups.items() if m == method]
        walls = [w for g in groups for w in g.wall_time_s]
        cost_rows.append(
            [
                METHOD_TITLES.get(method, method),
                f"{groups[0].trainable_parameters:,}",
                _human_bytes(groups[0].patch_bytes),
                f"{statistics.fmean(walls):.1f}",
                str(len(walls)),
            ]
        )
    lines += ["Cost:", ""]
    lines += _table(["method", "trainable parameters", "patch file", "mean train time (s)", "cells"], cost_rows)
    return lines


def _cell(task: TaskResults, group: Group | None) -> str:
    if not group:
        return "—"
    return group.cell() + ("" if task.learned(group) else " °")


def _done(group: Group | None) -> str:
    if not group:
        return "—"
    return f"{statistics.fmean(group.examples_seen):,.0f} ({group.capped}/{group.n} capped)"


# ---- plots -----------------------------------------------------------------------------------------------------


def _color(method: str) -> str:
    known = METHOD_COLORS.get(method)
    return known or f"C{3 + sum(map(ord, method)) % 7}"  # plug-in methods: stable, distinct from the three


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _subplots(plt: Any, count: int) -> tuple[Any, list[Any]]:
    figure, axes = plt.subplots(1, max(count, 1), figsize=(4.6 * max(count, 1), 3.8), squeeze=False)
    return figure, list(axes[0])


def _method_errorbars(ax: Any, method: str, xs: Sequence[float], groups: Sequence[Group]) -> None:
    """One method's means with ± std bars (a setting run with one seed has no std: drawn without a bar)."""
    ax.errorbar(
        xs,
        [g.mean for g in groups],
        yerr=[0.0 if math.isnan(g.std) else g.std for g in groups],
        marker="o",
        capsize=4,
        color=_color(method),
        label=METHOD_TITLES.get(method, method),
    )


def _label_metric_axes(ax: Any, task: TaskResults, title: str, xlabel: str) -> None:
    """The parts every metric-vs-setting panel shares: constant-prediction line, labels, grid, legend."""
    if task.baseline is not None:
        ax.axhline(task.baseline, color="grey", linestyle="--", linewidth=1, label="constant prediction")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"dev {_metric(task.metric)} ×100")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _save(plt: Any, figure: Any, title: str, path: Path) -> None:
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_fraction(tasks: dict[str, TaskResults], path: Path) -> None:
    plt = _pyplot()
    figure, axes = _subplots(plt, len(tasks))
    for ax, task in zip(axes, tasks.values(), strict=False):
        budget = task.main_fraction_budget()
        for method in task.methods():
            groups = sorted(
                (g for g in task.axis(FRACTION_AXIS) if g.method == method and g.budget == budget),
                key=lambda g: g.fraction,
            )
            if groups:
                _method_errorbars(ax, method, [g.fraction * 100 for g in groups], groups)
        title = f"{_title(task.task)} (budget {format_budget(budget or 0.0)})"
        _label_metric_axes(ax, task, title, "training data used (%)")
    _save(plt, figure, "Metric vs data fraction (mean ± std over seeds)", path)


def plot_budget(tasks: dict[str, TaskResults], path: Path) -> None:
    plt = _pyplot()
    figure, axes = _subplots(plt, len(tasks))
    for ax, task in zip(axes, tasks.values(), strict=False):
        groups = task.axis(BUDGET_AXIS)
        budgets = sorted({g.budget for g in groups}, key=_budget_key)
        # Categorical x: "unlimited" has no position on a seconds axis, and budgets span orders of magnitude.
        position = {b: i for i, b in enumerate(budgets)}
        for offset, method in enumerate(task.methods()):
            mine = sorted((g for g in groups if g.method == method), key=lambda g: _budget_key(g.budget))
            if mine:
                dodged = [position[g.budget] + (offset - 1) * 0.06 for g in mine]  # so the bars don't overlap
                _method_errorbars(ax, method, dodged, mine)
        ax.set_xticks(range(len(budgets)), [format_budget(b) for b in budgets])
        _label_metric_axes(ax, task, f"{_title(task.task)} (100% data)", "training time budget")
    _save(plt, figure, "Metric vs time budget (mean ± std over seeds)", path)


def plot_spread(tasks: dict[str, TaskResults], path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    figure, axes = _subplots(plt, len(tasks))
    jitter = np.random.default_rng(0)  # fixed: the same results give the same picture
    for ax, task in zip(axes, tasks.values(), strict=False):
        methods = task.methods()
        deviations = []
        for index, method in enumerate(methods):
            values = [v - g.mean for g in task.groups.values() if g.method == method and g.n >= 2 for v in g.values]
            deviations.append(values)
            if values:
                x = index + jitter.uniform(-0.12, 0.12, len(values))
                ax.scatter(x, values, s=14, alpha=0.7, color=_color(method))
        if any(deviations):
            ax.boxplot([d or [0.0] for d in deviations], positions=range(len(methods)), widths=0.5, showfliers=False)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(methods)), [METHOD_TITLES.get(m, m) for m in methods])
        ax.set_title(_title(task.task))
        ax.set_ylabel(f"seed − cell mean ({_metric(task.metric)} ×100)")
        ax.grid(alpha=0.3, axis="y")
    _save(plt, figure, "Run-to-run spread: each seed's deviation from the mean of its setting", path)


# ---- the report ------------------------------------------------------------------------------------------------


@dataclass
class Written:
    markdown: Path
    plots: list[Path]
    verdicts: list[Verdict]
    warnings: list[str]


def _provenance(records: Sequence[dict[str, Any]], source: Path) -> list[str]:
    def distinct(key: Callable[[dict[str, Any]], Any]) -> str:
        return ", ".join(sorted({str(key(r)) for r in records}))

    return [
        f"- results: `{source}` ({len(records)} cells); profile: {distinct(lambda r: r.get('profile'))}",
        f"- backbone: {distinct(lambda r: r['backbone']['id'])}",
        f"- device: {distinct(lambda r: r['device'].get('name'))} ({distinct(lambda r: r['device'].get('type'))})",
        f"- torch {distinct(lambda r: r['versions'].get('torch'))}, transformers"
        f" {distinct(lambda r: r['versions'].get('transformers'))}, python"
        f" {distinct(lambda r: r['versions'].get('python'))}; code {distinct(lambda r: r.get('git_commit'))}",
        f"- generated {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
    ]


def render(records: Sequence[dict[str, Any]], source: Path, plots: Sequence[str], warnings: Sequence[str]) -> str:
    tasks = summarize(records)
    found = verdicts(tasks)
    lines = [
        "# Study: BitFit and adapters vs full fine-tuning (re-checking arXiv 2401.04051)",
        "",
        "Our measurements, made with taskpatch's own trainer (`python -m experiments.study`). Every value is the"
        " dev-set primary metric ×100 of the kept-best evaluation, as mean ± sample std over seeds.",
        "",
        *_provenance(records, source),
        "",
        "## Verdicts",
        "",
    ]
    for verdict in found:
        lines += verdict.markdown()
    notes = caveats(records, tasks)
    if notes or warnings:
        lines += ["### Read with care", ""]
        lines += [f"- {n}" for n in notes]
        lines += [f"- results file: {w}" for w in warnings]
        lines.append("")
    for task in tasks.values():
        lines += task_tables(task)
    lines += ["## Plots", ""]
    lines += [f"![{name}]({name})" for name in plots]
    lines += ["", references.render_markdown()]
    return "\n".join(lines) + "\n"


def mixed_settings(records: Sequence[dict[str, Any]]) -> list[str]:
    """A warning when the file pools cells run with different backbones, epochs or data limits.

    The tables group by task, method, fraction and budget only; the default results file is one per profile, so
    mixing only happens when several overrides write to one file, and then it must not go unnoticed.
    """
    fields = ("backbone", "epochs", "equal_compute", "dev_limit", "train_limit")
    kinds = sorted({tuple(str(r["cell"].get(f)) for f in fields) for r in records})
    if len(kinds) < 2:
        return []
    listed = "; ".join(", ".join(f"{f}={v}" for f, v in zip(fields, kind, strict=True)) for kind in kinds)
    return [f"the file mixes {len(kinds)} settings ({listed}): the tables pool them"]


def write_report(results: Path, out_dir: Path) -> Written:
    """Write ``report.md`` and the plots for ``results`` into ``out_dir``."""
    records, warnings = load_records(results)
    if not records:
        raise ValueError(f"{results} holds no finished cells")
    warnings += mixed_settings(records)
    out_dir.mkdir(parents=True, exist_ok=True)
    tasks = summarize(records)
    plots = {"fraction.png": plot_fraction, "budget.png": plot_budget, "spread.png": plot_spread}
    for name, plot in plots.items():
        plot(tasks, out_dir / name)
    markdown = out_dir / "report.md"
    markdown.write_text(render(records, results, list(plots), warnings))
    return Written(markdown, [out_dir / name for name in plots], verdicts(tasks), warnings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.report", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="a results file written by experiments.study")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: results file minus .jsonl)")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        print(f"error: no results file at {args.results}", file=sys.stderr)
        return 2
    try:
        written = write_report(args.results, args.out or args.results.with_suffix(""))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {written.markdown} and {', '.join(p.name for p in written.plots)}")
    for warning in written.warnings:
        print(f"warning: {warning}")
    for verdict in written.verdicts:
        print(verdict.headline())
    return 0


if __name__ == "__main__":
    sys.exit(main())
