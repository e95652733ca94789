"""Training cost of full fine-tuning vs BitFit vs adapters, on the same MRPC batches in one run.

    python -m bench.training --quick            # a few minutes on 2 CPU cores
    python -m bench.training [--examples 512] [--batch-size 32] [--rounds 5] [--device auto] [--threads N]

What is measured (each method trains exactly as ``server.training.trainer.train`` does: fresh patch tensors as
``nn.Parameter``s, AdamW over them with the method's default learning rates, ``model.logits(batch, patch,
head_dropout=0.1)``, the trainer's loss, backward, gradient clipping, optimizer and LR-scheduler step):

- **examples/s**: training steps only (forward + backward + optimizer step); tokenization and padding are done once
  before timing. The first N MRPC train examples are cut into length-bucketed batches once (the trainer's
  ``bucketed_batches``, fixed seed) and every method runs the same batch sequence. After untimed warm-up steps,
  methods are timed in interleaved rounds (the order rotates each round) so machine noise hits all of them alike;
  the reported figure is the median over rounds.
- **peak memory**: memory the training step needs *on top of* the loaded, frozen backbone and the data, measured
  for each method in a fresh process: load backbone and batches, run one no-grad forward pass (so lazily created
  library buffers are in the baseline), take the baseline, then build the patch and optimizer and run 3 training
  steps on the longest batch (from the 2nd step on, gradients, optimizer state and activations coexist; the longest
  batch gives the largest activations). CUDA: ``torch.cuda.max_memory_allocated`` minus the allocated bytes at the
  baseline. CPU: peak resident set size (``VmHWM``, reset at the baseline via ``/proc/self/clear_refs``) minus the
  resident set size at the baseline (after ``malloc_trim``). It counts the trainable copies (for ``full`` a whole
  copy of the weights), their gradients, AdamW state, and activations kept for backward; it excludes the backbone's
  weights, which all methods share. ``total`` in the JSON is the absolute peak of that process, backbone included.
- **trainable parameters**: method tensors plus the head, as the trainer counts them.
- **patch bytes**: size of the safetensors file ``server.store.format.write_patch_file`` writes for the patch (for
  ``full``, the whole model).

Prints a table with ratios against ``full`` and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import importlib
import json
import multiprocessing
import os
import platform
import random
import re
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from server.backbone import load_backbone
from server.model import Features, PatchedModel
from server.patches.heads import HeadSpec
from server.patches.registry import get_method
from server.store.format import write_patch_file
from server.training.batching import bucketed_batches
from server.training.config import TrainConfig
from server.training.trainer import TrainingState, encode_examples, new_patch
from tasks.glue import load_glue

METHODS = ("full", "bitfit", "adapter")
TASK = "mrpc"
SEED = 0
MEMORY_STEPS = 3
# The goals for BitFit against full fine-tuning (a first prototype measured 1.47x and 0.80x).
GOALS = {"bitfit_vs_full_throughput": (">=", 1.5), "bitfit_vs_full_peak_mem": ("<=", 0.8)}
QUICK = {"examples": 128, "rounds": 3, "warmup_steps": 2}
FULL = {"examples": 512, "rounds": 5, "warmup_steps": 3}
REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20
_MODULE = "bench.training"
_PRELOAD = ["torch", "transformers", "server.model", "server.training.trainer", "server.store.format", "tasks.glue"]


@dataclass(frozen=True)
class Workload:
    """The fixed inputs every method trains on; picklable, so memory subprocesses get exactly the same data."""

    features: list[Features]
    targets: torch.Tensor  # [n] long (classification) or float (regression)
    batches: list[list[int]]  # indices into ``features``, in training order
    problem_type: str
    labels: tuple[str, ...]

    def longest_batch(self) -> list[int]:
        return max(self.batches, key=lambda b: (len(b) * max(len(self.features[i]) for i in b), len(b)))


class MethodRun:
    """One method's training state: the trainer's own ``TrainingState`` (same init, optimizer, step)."""

    def __init__(self, model: PatchedModel, method_name: str, workload: Workload, config: TrainConfig) -> None:
        self.model = model
        method_config = get_method(method_name).parse_config(config.method_config)
        generator = torch.Generator().manual_seed(config.seed)
        head = HeadSpec(workload.problem_type, workload.labels, model.backbone.pooling)
        initial = new_patch(model, method_name, method_config, head, generator)
        # The schedule's length does not change the cost of a step; only that it runs does.
        self.state = TrainingState(model, initial, config, total_steps=10**6)
        self.patch = self.state.patch
        self.params = self.state.params
        self.trainable_parameters = self.state.trainable_parameters

    def step(self, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> float:
        """One training step; returns the loss (reading it synchronises the device, as the trainer does)."""
        return self.state.step(batch, targets)

    def patch_bytes(self, directory: Path) -> int:
        """Size of the patch file the store would write for this patch."""
        meta = self.patch.meta(self.model.backbone, {"task_name": TASK, "bench": "training"}, {})
        path = directory / f"{self.patch.method}.safetensors"
        write_patch_file(path, {n: p.detach() for n, p in self.params.items()}, meta)
        return path.stat().st_size


def _config(method: str, batch_size: int, max_seq_length: int) -> TrainConfig:
    return TrainConfig(method=method, batch_size=batch_size, max_seq_length=max_seq_length, seed=SEED).resolved()


def _collate(
    model: PatchedModel, workload: Workload, indices: list[int]
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    batch = model.collate([workload.features[i] for i in indices])
    return batch, workload.targets[indices].to(model.backbone.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- memory, in a fresh process per method ---------------------------------------------------------------------
def _proc_status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


def _max_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def _release_free_memory() -> None:
    """Give freed heap pages back to the OS so the baseline RSS holds only live memory (glibc only)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


class _PeakMeter:
    """Peak memory above a baseline taken at construction: CUDA allocator stats or the process's resident set."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        _sync(device)
        _release_free_memory()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline = torch.cuda.memory_allocated(device)
            self.how = "torch.cuda.max_memory_allocated"
            return
        rss = _proc_status_kib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            reset = rss is not None
        except OSError:
            reset = False
        if reset and rss is not None:
            self.baseline, self.how = rss * 1024, "VmHWM (reset at baseline) - VmRSS"
        else:  # peak since process start: an upper bound that may include the loading peak
            self.baseline, self.how = _max_rss_bytes(), "ru_maxrss - ru_maxrss at baseline (upper bound)"

    def peak(self) -> int:
        """Absolute peak since the baseline (bytes)."""
        _sync(self.device)
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        hwm = _proc_status_kib("VmHWM")
        return hwm * 1024 if hwm is not None and self.how.startswith("VmHWM") else _max_rss_bytes()


def measure_peak_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Subprocess entry point: peak memory of ``spec["method"]``'s training step (see the module docstring)."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(SEED)
    workload: Workload = spec["workload"]
    model = PatchedModel(load_backbone(spec["backbone"], device=spec["device"]))
    batch, targets = _collate(model, workload, workload.longest_batch())
    with torch.no_grad():
        model.encode(batch, {})  # warm the libraries' lazily allocated buffers into the baseline
    meter = _PeakMeter(model.backbone.device)
    run = MethodRun(model, spec["method"], workload, _config(spec["method"], spec["batch_size"], spec["max_len"]))
    for _ in range(MEMORY_STEPS):
        run.step(batch, targets)
    peak = meter.peak()
    return {"peak_bytes": max(0, peak - meter.baseline), "total_bytes": peak, "how": meter.how}


def _peak_memory_all(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One fresh process per method, run side by side (each measures only itself).

    A fresh process means no method inherits another's freed-but-resident memory or allocator cache. The processes
    are forked from a forkserver, a clean interpreter that has only imported the libraries (no model, no tensors):
    the same as spawn for memory, but the imports (seconds each on a busy machine) are paid once, not per method.
    """
    # By module name, not ``__main__``: under ``python -m bench.training`` the workers must find the function
    # without re-running the script.
    entry = importlib.import_module(_MODULE).measure_peak_memory
    forkserver = "forkserver" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if forkserver else "spawn")
    if forkserver:
        # The dependencies, not this module: a worker re-runs the parent's ``__main__`` module by name, and runpy
        # warns when that module was imported before.
        multiprocessing.set_forkserver_preload(_PRELOAD)
    pool = context.Pool(processes=len(specs), maxtasksperchild=1)
    try:
        results = pool.map(entry, specs, chunksize=1)
        pool.close()
        return results
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


# ---- throughput, interleaved in this process -------------------------------------------------------------------
def measure_throughput(
    model: PatchedModel, runs: dict[str, MethodRun], workload: Workload, rounds: int, steps: int, warmup: int
) -> dict[str, list[float]]:
    """Examples/s per round for each method. Methods share this process so rounds can interleave them step-block by
    step-block (noise from the shared machine is spread evenly); memory is measured elsewhere, so holding every
    method's state here at once does not distort it."""
    device = model.backbone.device
    collated = [_collate(model, workload, indices) for indices in workload.batches]
    cursors = dict.fromkeys(runs, 0)

    def run_steps(method: str, count: int) -> int:
        examples = 0
        for _ in range(count):
            batch, targets = collated[cursors[method] % len(collated)]
            cursors[method] += 1
            runs[method].step(batch, targets)
            examples += int(targets.shape[0])
        return examples

    for method in runs:
        run_steps(method, warmup)
    rates: dict[str, list[float]] = {method: [] for method in runs}
    order = list(runs)
    for round_index in range(rounds):
        # Rotate who goes first so no method always follows the same one (cache and frequency effects).
        shift = round_index % len(order)
        for method in order[shift:] + order[:shift]:
            _sync(device)
            started = time.perf_counter()
            examples = run_steps(method, steps)
            _sync(device)
            rates[method].append(examples / (time.perf_counter() - started))
    return rates


# ---- reporting ---------------------------------------------------------------------------------------------------
def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    name = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        name = found.group(1).strip() if found else name
    return f"{name}, {torch.get_num_threads()} torch threads, {os.cpu_count()} visible CPUs"


def _ratio(value: float, reference: float) -> float | None:
    return round(value / reference, 3) if reference > 0 else None


def _glue_dir(explicit: str | None) -> tuple[str | None, str | None]:
    """(data_dir, glue_dir_env) for ``load_glue``: --data-dir, then GLUE_DIR, then the shared copy next to the repo
    (where tests/conftest.py looks too), then the hub."""
    env = os.environ.get("GLUE_DIR") or None
    if explicit is None and env is None:
        shared = REPO_ROOT.parent / "shared" / "data" / "glue"
        explicit = str(shared) if (shared / "MRPC" / "train.tsv").is_file() else None
    return explicit, env


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"defaults {QUICK} instead of {FULL}")
    parser.add_argument("--examples", type=int, default=None, help="first N MRPC train examples")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps-per-round", type=int, default=0, help="0: one pass over the batches")
    parser.add_argument("--warmup-steps", type=int, default=None, help="untimed steps per method before round 1")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbone", default="default", help="default (embedded MiniLM), tiny, or a model dir")
    parser.add_argument("--data-dir", default=None, help="GLUE folder; else GLUE_DIR, else ../shared/data/glue")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    args = parser.parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads_before)  # main() may be called in-process (tests)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark for parsed ``args``: prints the table and the JSON line, returns the JSON line's object."""
    preset = QUICK if args.quick else FULL
    examples = args.examples or preset["examples"]
    rounds = args.rounds or preset["rounds"]
    warmup = preset["warmup_steps"] if args.warmup_steps is None else args.warmup_steps
    started = time.monotonic()

    backbone = load_backbone(args.backbone, device=args.device)
    model = PatchedModel(backbone)
    data_dir, glue_env = _glue_dir(args.data_dir)
    data = load_glue(TASK, data_dir, glue_dir_env=glue_env)
    encoded = encode_examples(model, data, data.train[:examples], args.max_seq_length)
    lengths = [len(f) for f in encoded.features]
    batches = bucketed_batches(lengths, args.batch_size, random.Random(SEED))
    workload = Workload(encoded.features, encoded.targets, batches, data.problem_type, data.labels)
    steps = args.steps_per_round or len(batches)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches) / len(lengths)

    memory: dict[str, dict[str, Any]] = {}
    if not args.no_memory:
        specs = [
            {
                "method": method,
                "workload": workload,
                "backbone": args.backbone,
                "device": str(backbone.device),
                "threads": torch.get_num_threads(),
                "batch_size": args.batch_size,
                "max_len": args.max_seq_length,
            }
            for method in METHODS
        ]
        memory = dict(zip(METHODS, _peak_memory_all(specs), strict=True))

    torch.manual_seed(SEED)
    runs = {m: MethodRun(model, m, workload, _config(m, args.batch_size, args.max_seq_length)) for m in METHODS}
    rates = measure_throughput(model, runs, workload, rounds, steps, warmup)
    with tempfile.TemporaryDirectory(prefix="taskpatch-bench-") as tmp:
        patch_bytes = {m: run.patch_bytes(Path(tmp)) for m, run in runs.items()}

    per_method: dict[str, dict[str, Any]] = {}
    for m in METHODS:
        per_method[m] = {
            "examples_per_s": round(statistics.median(rates[m]), 3),
            "examples_per_s_rounds": [round(r, 3) for r in rates[m]],
            "peak_mem_bytes": memory[m]["peak_bytes"] if memory else None,
            "peak_mem_total_bytes": memory[m]["total_bytes"] if memory else None,
            "trainable_parameters": runs[m].trainable_parameters,
            "patch_bytes": patch_bytes[m],
        }
    full = per_method["full"]
    result: dict[str, Any] = {}
    for m in METHODS[1:]:
        result[f"{m}_vs_full_throughput"] = _ratio(per_method[m]["examples_per_s"], full["examples_per_s"])
        result[f"{m}_vs_full_peak_mem"] = (
            _ratio(per_method[m]["peak_mem_bytes"], full["peak_mem_bytes"]) if memory else None
        )
    for m in METHODS:
        result[f"{m}_patch_bytes"] = patch_bytes[m]
    goals = {}
    for key, (op, target) in GOALS.items():
        value = result[key]
        goals[key] = None if value is None else (value >= target if op == ">=" else value <= target)
    how = next(iter(memory.values()))["how"] if memory else "not measured"
    result.update(
        {
            "goals_met": goals,
            "methods": per_method,
            "peak_mem_definition": f"training-step memory above the loaded backbone + data, fresh process; {how}",
            "device": str(backbone.device),
            "machine": _machine(backbone.device),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "backbone": backbone.backbone_id,
            "task": TASK,
            "examples": len(lengths),
            "batch_size": args.batch_size,
            "batches": len(batches),
            "mean_padded_length": round(padded, 1),
            "rounds": rounds,
            "steps_per_round": steps,
            "warmup_steps": warmup,
            "wall_time_s": round(time.monotonic() - started, 1),
        }
    )
    _print_table(result, per_method)
    print(json.dumps(result), flush=True)
    return result


def _print_table(result: dict[str, Any], per_method: dict[str, dict[str, Any]]) -> None:
    full = per_method["full"]

    def fmt_ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    print(
        f"\n{result['task']}: {result['examples']} train examples in {result['batches']} batches of "
        f"{result['batch_size']} (mean padded length {result['mean_padded_length']}); "
        f"{result['warmup_steps']} warm-up steps, then {result['rounds']} interleaved rounds of "
        f"{result['steps_per_round']} steps per method"
    )
    header = (
        f"{'method':8} {'ex/s':>9} {'spread':>7} {'vs full':>8} {'peak MiB':>9} {'vs full':>8} "
        f"{'total MiB':>10} {'trainable':>12} {'patch bytes':>13}"
    )
    print(header)
    print("-" * len(header))
    for m, row in per_method.items():
        rounds = row["examples_per_s_rounds"]
        spread = (max(rounds) - min(rounds)) / row["examples_per_s"] if row["examples_per_s"] else 0.0
        peak, total = row["peak_mem_bytes"], row["peak_mem_total_bytes"]
        print(
            f"{m:8} {row['examples_per_s']:9.2f} {spread:7.0%} "
            f"{fmt_ratio(_ratio(row['examples_per_s'], full['examples_per_s'])):>8} "
            f"{'-' if peak is None else f'{peak / MIB:.1f}':>9} "
            f"{fmt_ratio(None if peak is None else _ratio(peak, full['peak_mem_bytes'])):>8} "
            f"{'-' if total is None else f'{total / MIB:.1f}':>10} "
            f"{row['trainable_parameters']:>12,} {row['patch_bytes']:>13,}"
        )
    print(
        "ex/s: median over rounds of training steps (forward+backward+AdamW), spread = (max-min)/median; "
        f"peak MiB: {result['peak_mem_definition']}; total MiB: that process's absolute peak"
    )
    print(f"machine: {result['machine']}; device {result['device']}; torch {result['torch']}; {result['backbone']}")
    for key, (op, target) in GOALS.items():
        met = result["goals_met"][key]
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        print(f"goal {key} {op} {target}: {fmt_ratio(result[key])} -> {verdict}")
    print(f"wall time {result['wall_time_s']} s")


if __name__ == "__main__":
    main()
