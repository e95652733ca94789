"""Hyper-parameter sweep behind the per-method training defaults (docs/training-defaults.md).

Runs ``bench.quality`` once per (task, method, lr, head lr, batch size) in parallel worker processes and appends
every run's JSON line to ``--out``. On a GPU several small runs share the device well; on 2 CPU cores use
``--workers 1``.

    python -m bench.sweep --out sweep.jsonl --workers 6 --tasks mrpc stsb cola --epochs 10
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

GRID: dict[str, list[tuple[float, float, int]]] = {
    # (learning rate, head learning rate, batch size)
    "bitfit": [(1e-3, 1e-3, 32), (3e-3, 3e-3, 32), (1e-2, 1e-2, 32), (3e-3, 1e-2, 16), (1e-3, 1e-3, 8)],
    "adapter": [(3e-4, 1e-3, 32), (1e-3, 1e-3, 32), (3e-3, 3e-3, 32)],
    "full": [(2e-5, 1e-3, 32), (5e-5, 1e-3, 32)],
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "stsb", "cola"])
    parser.add_argument("--methods", nargs="+", default=list(GRID))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="passed to bench.quality after --")
    args = parser.parse_args(argv)
    extra = [a for a in args.extra if a != "--"]
    runs = [
        (task, method, lr, head_lr, batch)
        for task, method in itertools.product(args.tasks, args.methods)
        for lr, head_lr, batch in GRID[method]
    ]

    def run(spec: tuple[str, str, float, float, int]) -> int:
        task, method, lr, head_lr, batch = spec
        command = [
            sys.executable, "-m", "bench.quality", "--tasks", task, "--methods", method, "--lr", str(lr),
            "--head-lr", str(head_lr), "--batch-size", str(batch), "--epochs", str(args.epochs),
            "--out", str(args.out), *extra,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True)
        status = "ok" if done.returncode == 0 else f"FAILED\n{done.stderr[-2000:]}"
        print(f"{task} {method} lr={lr} head_lr={head_lr} batch={batch}: {status}", flush=True)
        return done.returncode

    with ThreadPoolExecutor(args.workers) as pool:
        failures = sum(1 for code in pool.map(run, runs) if code)
    print(f"{len(runs) - failures}/{len(runs)} runs ok; results in {args.out}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
