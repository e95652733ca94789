"""The study's grid: profiles, cells with stable ids, and a time estimate.

The study varies two things, so the grid has two axes rather than a full product:

- the **data-fraction axis**: every fraction, at the profile's fraction-axis time budget (unlimited in ``full``);
- the **time-budget axis**: every budget, at data fraction 1.0.

A product of both would spend most of its time on cells that answer neither question. The cell at fraction 1.0
with the fraction-axis budget lies on both axes; it is built once and marked with both (``Cell.axes``).

A cell's id is a hash of what decides its result (task, method, fraction, budget, seed, epochs, data limits,
backbone), never of where it sits in the grid, so re-running with other axes reuses every cell already measured.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FRACTION_AXIS = "fraction"
BUDGET_AXIS = "budget"
DEVICE_TYPES = ("cpu", "cuda")


@dataclass(frozen=True)
class Cell:
    """One training run of the grid; ``time_budget_s`` 0 means unlimited, ``epochs`` None the method's default."""

    task: str
    method: str
    data_fraction: float
    time_budget_s: float
    seed: int
    epochs: int | None
    dev_limit: int  # 0: the whole dev split
    train_limit: int  # 0: the whole train split
    backbone: str
    equal_compute: bool = False  # epochs scale with 1/fraction (see ``train_epochs``)
    axes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def train_epochs(self) -> int | None:
        """Epochs the trainer runs: ``epochs``, or with ``equal_compute`` ``round(epochs / data_fraction)``.

        Equal compute gives a 10% cell ten passes over its tenth of the data, so every fraction trains on about as
        many examples and the fraction axis measures the data rather than how little training the small pool got.
        """
        if self.epochs is None or not self.equal_compute:
            return self.epochs
        return max(1, round(self.epochs / self.data_fraction))

    def identity(self) -> dict[str, Any]:
        """The fields the result depends on, normalised so 40 and 40.0 (or 0.30 and 0.3) are the same cell."""
        return {
            "task": self.task,
            "method": self.method,
            "data_fraction": float(self.data_fraction),
            "time_budget_s": float(self.time_budget_s),
            "seed": int(self.seed),
            "epochs": None if self.epochs is None else int(self.epochs),
            "dev_limit": int(self.dev_limit),
            "train_limit": int(self.train_limit),
            "backbone": self.backbone,
            # Only when set, so cells measured before the option existed keep their ids.
            **({"equal_compute": True} if self.equal_compute else {}),
        }

    @property
    def cell_id(self) -> str:
        """First 16 hex digits of sha256 over the canonical JSON of :meth:`identity`."""
        canonical = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def label(self) -> str:
        return (
            f"{self.task}/{self.method} frac={self.data_fraction:g} budget={format_budget(self.time_budget_s)}"
            f" seed={self.seed}"
        )


def format_budget(seconds: float) -> str:
    return "unlimited" if not seconds else f"{seconds:g}s"


@dataclass(frozen=True)
class Profile:
    """A named grid. Budgets are per device type because a time cap only means something relative to a speed."""

    name: str
    summary: str
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    fraction_budget_s: Mapping[str, float]  # device type -> time budget of the fraction axis (0: unlimited)
    budgets_s: Mapping[str, tuple[float, ...]]  # device type -> the time-budget axis (at data fraction 1.0)
    seeds: int
    epochs: int | None  # None: each method's default (10, docs/training-defaults.md)
    dev_limit: int  # 0: the whole dev split
    train_limit: int = 0  # 0: the whole train split; else a stratified sample of this size is "100% of the data"
    equal_compute: bool = False  # fraction-axis epochs = round(epochs / fraction) (Cell.train_epochs)


# The quick profile has to finish on the 2-core CPU machine in an hour with the embedded MiniLM, and still train
# every cell far enough to tell the methods apart (a first version capped cells at 40 s and MRPC and CoLA never left
# the majority class). What it cuts, and why:
# - the data: "100%" is a stratified sample of 2,500 training examples per task (a whole MRPC epoch of full
#   fine-tuning alone takes ~90 s there) and 300 dev examples (evaluation runs once per epoch);
# - compute: one epoch-equivalent per cell, with equal compute across fractions (10 epochs of the 10% pool, 3 of the
#   30% pool, 1 of the whole), so each cell trains on ~2,500 examples and only the amount of data differs;
# - the grid: fractions 0.1, 0.3, 1.0 (no 0.5); budgets 10 s and 30 s at 100% (and unlimited: the cell shared with
#   the fraction axis); 2 seeds instead of 3.
# Estimate at the measured rates: ~40 min on 2 quiet cores (``test_quick_profile_fits_an_hour_on_two_cpu_cores``).
QUICK = Profile(
    name="quick",
    summary="3 tasks x 3 methods x fractions (0.1, 0.3, 1.0) of a 2,500-example pool with equal compute (10, 3, 1"
    " epochs) + budgets (unlimited, 10 s, 30 s; on CUDA 0.5 s, 1.5 s) at 100%; 2 seeds; 300 dev examples per task",
    tasks=("mrpc", "stsb", "cola"),
    methods=("full", "bitfit", "adapter"),
    fractions=(0.1, 0.3, 1.0),
    fraction_budget_s={"cpu": 0.0, "cuda": 0.0},
    budgets_s={"cpu": (0.0, 10.0, 30.0), "cuda": (0.0, 0.5, 1.5)},
    seeds=2,
    epochs=1,
    dev_limit=300,
    train_limit=2500,
    equal_compute=True,
)

# The real grid: each method's default schedule (10 epochs, keep-best), whole dev splits, 3 seeds. The caps on the
# budget axis are chosen to cut a run at very roughly 10%, 30% and 100% of its unlimited length: on a GPU alone a
# 10-epoch run of these tasks takes about 20-60 s (the H200 sweep in docs/training-defaults.md took 56-140 s with 8
# runs sharing the GPU); on the 2-core CPU 10 epochs take 25-55 min per cell, so the CPU caps are 60x larger.
FULL = Profile(
    name="full",
    summary="3 tasks x 3 methods x fractions (0.1, 0.3, 0.5, 1.0) unlimited + budgets at fraction 1.0"
    " (unlimited, 5 s, 15 s, 45 s on CUDA; unlimited, 300 s, 900 s, 2700 s on CPU); 3 seeds; method-default epochs",
    tasks=("mrpc", "cola", "stsb"),
    methods=("full", "bitfit", "adapter"),
    fractions=(0.1, 0.3, 0.5, 1.0),
    fraction_budget_s={"cpu": 0.0, "cuda": 0.0},
    budgets_s={"cpu": (0.0, 300.0, 900.0, 2700.0), "cuda": (0.0, 5.0, 15.0, 45.0)},
    seeds=3,
    epochs=None,
    dev_limit=0,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (QUICK, FULL)}


@dataclass(frozen=True)
class GridSpec:
    """A profile resolved for one device type, with any command-line overrides applied."""

    profile: str
    device_type: str
    tasks: tuple[str, ...]
    methods: tuple[str, ...]
    fractions: tuple[float, ...]
    fraction_budget_s: float
    budgets_s: tuple[float, ...]
    seeds: tuple[int, ...]
    epochs: int | None
    dev_limit: int
    train_limit: int
    backbone: str
    equal_compute: bool = False

    def describe(self) -> str:
        budgets = ", ".join(format_budget(b) for b in self.budgets_s) or "none"
        return (
            f"tasks {', '.join(self.tasks)}; methods {', '.join(self.methods)}; data fractions"
            f" {', '.join(f'{f:g}' for f in self.fractions)} at budget {format_budget(self.fraction_budget_s)};"
            f" budgets {budgets} at fraction 1; seeds {', '.join(map(str, self.seeds))};"
            f" epochs {self.epochs if self.epochs is not None else 'method default'}"
            + (" per 100% of the data, scaled by 1/fraction (equal compute)" if self.equal_compute else "")
            + ";"
            f" dev limit {self.dev_limit or 'none'}; backbone {self.backbone}"
            + (f"; train limit {self.train_limit}" if self.train_limit else "")
        )


def resolve_spec(
    profile: Profile,
    device_type: str,
    *,
    backbone: str,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    fractions: Sequence[float] | None = None,
    fraction_budget_s: float | None = None,
    budgets_s: Sequence[float] | None = None,
    seeds: int | None = None,
    epochs: int | None = None,
    dev_limit: int | None = None,
    train_limit: int | None = None,
    equal_compute: bool | None = None,
) -> GridSpec:
    """The profile's values for ``device_type``, each replaced by the override when one is given."""
    if device_type not in DEVICE_TYPES:
        raise ValueError(f"device type must be one of {', '.join(DEVICE_TYPES)}, got {device_type!r}")
    spec = GridSpec(
        profile=profile.name,
        device_type=device_type,
        tasks=tuple(tasks or profile.tasks),
        methods=tuple(methods or profile.methods),
        fractions=tuple(float(f) for f in (fractions or profile.fractions)),
        fraction_budget_s=float(
            profile.fraction_budget_s[device_type] if fraction_budget_s is None else fraction_budget_s
        ),
        budgets_s=tuple(float(b) for b in (profile.budgets_s[device_type] if budgets_s is None else budgets_s)),
        seeds=tuple(range(profile.seeds if seeds is None else seeds)),
        epochs=profile.epochs if epochs is None else epochs,
        dev_limit=profile.dev_limit if dev_limit is None else dev_limit,
        train_limit=profile.train_limit if train_limit is None else train_limit,
        backbone=backbone,
        equal_compute=profile.equal_compute if equal_compute is None else equal_compute,
    )
    _validate(spec)
    return spec


def _validate(spec: GridSpec) -> None:
    if not spec.tasks or not spec.methods or not spec.seeds:
        raise ValueError("the grid needs at least one task, one method and one seed")
    if not spec.fractions and not spec.budgets_s:
        raise ValueError("the grid needs at least one data fraction or one time budget")
    for fraction in spec.fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"data fractions must be in (0, 1], got {fraction:g}")
    for budget in (spec.fraction_budget_s, *spec.budgets_s):
        if not math.isfinite(budget) or budget < 0:
            raise ValueError(f"time budgets must be >= 0 seconds (0: unlimited), got {budget:g}")
    if spec.epochs is not None and spec.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {spec.epochs}")
    if spec.equal_compute and spec.epochs is None:
        raise ValueError("equal compute scales a number of epochs: give --epochs (or turn equal compute off)")
    if spec.dev_limit < 0 or spec.train_limit < 0:
        raise ValueError("data limits must be >= 0 (0: no limit)")


def build_grid(spec: GridSpec) -> list[Cell]:
    """Every cell of both axes, shared cells once, seed-major.

    Seed-major order (all of seed 0, then all of seed 1, ...) means a run stopped half-way has covered the whole
    grid with fewer seeds, which the report can already use, instead of half the grid with every seed.
    """
    cells: dict[str, Cell] = {}

    def add(cell: Cell, axis: str) -> None:
        known = cells.get(cell.cell_id)
        if known is None:
            cells[cell.cell_id] = dataclasses.replace(cell, axes=(axis,))
        elif axis not in known.axes:
            cells[cell.cell_id] = dataclasses.replace(known, axes=(*known.axes, axis))

    for seed in spec.seeds:
        for task in spec.tasks:
            for method in spec.methods:
                points = [(f, spec.fraction_budget_s, FRACTION_AXIS) for f in spec.fractions]
                points += [(1.0, b, BUDGET_AXIS) for b in spec.budgets_s]
                for fraction, budget, axis in points:
                    cell = Cell(
                        task=task,
                        method=method,
                        data_fraction=fraction,
                        time_budget_s=budget,
                        seed=seed,
                        epochs=spec.epochs,
                        dev_limit=spec.dev_limit,
                        train_limit=spec.train_limit,
                        backbone=spec.backbone,
                        equal_compute=spec.equal_compute,
                    )
                    add(cell, axis)
    return list(cells.values())


# ---- time estimate ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rates:
    """Throughputs the estimate assumes (examples per second)."""

    train: Mapping[str, float]  # method -> training examples/s
    eval: float  # evaluation examples/s
    tokenize: float  # tokenizer examples/s (counts against the time budget: the trainer's clock starts first)
    cell_overhead_s: float  # patch-file write, snapshot, bookkeeping
    full_patch_write_s: float  # writing + hashing the ~90 MB full fine-tuning "patch"
    source: str


RATES: dict[str, Rates] = {
    # Measured on the otherwise idle 2-core CPU machine with the embedded MiniLM on MRPC (the longest inputs of the
    # three tasks; 20 s of training per method, 400 dev examples evaluated). Faster than the figures in the
    # developers' guide (26 ex/s for BitFit) because the trainer pads per batch and groups similar lengths.
    "cpu": Rates(
        train={"bitfit": 60.0, "adapter": 65.0, "full": 41.0},
        eval=135.0,
        tokenize=4000.0,
        cell_overhead_s=1.0,
        full_patch_write_s=2.0,
        source="measured on the idle 2-core CPU machine, embedded MiniLM, MRPC",
    ),
    # Not measured alone: read off the H200 sweep (8 runs sharing the GPU) and scaled up; the progress bar's ETA,
    # which follows the real pace, is the better guide on a GPU.
    "cuda": Rates(
        train={"bitfit": 1200.0, "adapter": 2000.0, "full": 2000.0},
        eval=8000.0,
        tokenize=8000.0,
        cell_overhead_s=0.5,
        full_patch_write_s=1.0,
        source="rough guess from the shared-GPU sweep, embedded MiniLM",
    ),
}
DEFAULT_TRAIN_RATE = 40.0  # a method the table does not know (a plug-in) on CPU
# Mean characters per training example (text + pair) of MRPC's train split, where the CPU rates were measured.
REFERENCE_CHARS = 231.0
# Share of an example's cost that does not grow with its length (per-step and per-layer overheads), fitted to the
# same measurement: CoLA (41 characters) trains 3.0x faster per example than MRPC, STS-B (115) 1.6x.
FIXED_COST_SHARE = 0.18


def length_factor(mean_chars: float) -> float:
    """Per-example cost relative to the examples the rates were measured on (clamped to 0.2..3)."""
    return min(3.0, max(0.2, FIXED_COST_SHARE + (1 - FIXED_COST_SHARE) * mean_chars / REFERENCE_CHARS))


def _train_rate(method: str, device_type: str) -> float:
    return RATES[device_type].train.get(method, DEFAULT_TRAIN_RATE if device_type == "cpu" else 1000.0)


def estimate_cell_s(
    cell: Cell,
    n_train: int,
    n_dev: int,
    default_epochs: int,
    device_type: str,
    length: float = 1.0,
    evals_per_epoch: int = 1,
) -> float:
    """Seconds one cell should take: tokenizing, training (capped by the budget), evaluations, overheads.

    ``n_train`` and ``n_dev`` are the split sizes after the data limits; ``default_epochs`` is the method's
    default, used when the cell leaves epochs unset; ``length`` is the task's :func:`length_factor`.
    """
    rates = RATES[device_type]
    examples = max(1, round(n_train * cell.data_fraction))
    epochs = cell.train_epochs or default_epochs
    epoch_s = examples * length / _train_rate(cell.method, device_type)
    planned_s = epochs * epoch_s
    eval_s = n_dev * length / rates.eval
    if cell.time_budget_s and planned_s > cell.time_budget_s:
        train_s = cell.time_budget_s
        evaluations = math.floor(cell.time_budget_s / epoch_s) * evals_per_epoch + 1  # + the one at the stop
    else:
        train_s = planned_s
        evaluations = epochs * evals_per_epoch
    tokenize_s = (examples + n_dev) / rates.tokenize
    write_s = rates.full_patch_write_s if cell.method == "full" else 0.1
    return tokenize_s + train_s + evaluations * eval_s + write_s + rates.cell_overhead_s


def bound_cell_s(cell: Cell, n_dev: int, batch_size: int, device_type: str, length: float = 1.0) -> float | None:
    """Most seconds a capped cell can take however slowly it trains (None when its budget is unlimited).

    The trainer checks the budget after every step and evaluates once when it stops, so a cell ends within its
    budget + one step + one evaluation (+ writing the patch): a bound that holds even on a loaded machine, as long
    as evaluation runs at the assumed rate.
    """
    if not cell.time_budget_s:
        return None
    rates = RATES[device_type]
    step_s = batch_size * length / _train_rate(cell.method, device_type)
    write_s = rates.full_patch_write_s if cell.method == "full" else 0.1
    return cell.time_budget_s + step_s + n_dev * length / rates.eval + write_s + rates.cell_overhead_s


def estimate_total_s(
    cells: Iterable[Cell],
    split_sizes: Mapping[str, tuple[int, int]],
    default_epochs: Mapping[str, int],
    device_type: str,
    lengths: Mapping[str, float] | None = None,
) -> float:
    """Sum of :func:`estimate_cell_s`; ``split_sizes`` maps task -> (train, dev) sizes after the limits, and
    ``lengths`` task -> :func:`length_factor` (1.0, MRPC's cost, when not given: errs high)."""
    lengths = lengths or {}
    return sum(
        estimate_cell_s(c, *split_sizes[c.task], default_epochs[c.method], device_type, lengths.get(c.task, 1.0))
        for c in cells
    )
