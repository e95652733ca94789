"""Dev-set quality of each patch method with its defaults, on the full train split of GLUE tasks.

    python -m bench.quality --tasks mrpc stsb cola --methods full bitfit adapter [--device auto]

Prints a table (method x task: primary metric, all metrics, wall time, epochs, steps) and one JSON line per run;
``--out FILE`` appends the JSON lines to a file. Any hyper-parameter can be overridden to run sweeps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from server.backbone import load_backbone
from server.model import PatchedModel
from server.training.config import TrainConfig
from server.training.trainer import train
from tasks.glue import load_glue
from tasks.types import TaskData


def _limit(data: TaskData, train_limit: int, dev_limit: int) -> TaskData:
    train = data.train[:train_limit] if train_limit else data.train
    dev = data.dev[:dev_limit] if dev_limit else data.dev
    return TaskData(data.name, data.problem_type, data.labels, data.metrics, train, dev)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["mrpc", "stsb", "cola"])
    parser.add_argument("--methods", nargs="+", default=["full", "bitfit", "adapter"])
    parser.add_argument("--backbone", default="default")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir", default=os.environ.get("GLUE_DIR"))
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--head-lr", type=float, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--warmup-ratio", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, default=0, help="use only the first N train examples (0: all)")
    parser.add_argument("--dev-limit", type=int, default=0)
    parser.add_argument("--method-config", default="{}", help="JSON options for the method")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    backbone = load_backbone(args.backbone, device=args.device)
    model = PatchedModel(backbone)
    machine = torch.cuda.get_device_name(0) if backbone.device.type == "cuda" else platform.processor() or "cpu"
    machine = f"{machine} ({torch.get_num_threads()} threads)" if backbone.device.type == "cpu" else machine
    rows = []
    for task in args.tasks:
        data = _limit(load_glue(task, args.data_dir), args.train_limit, args.dev_limit)
        for method in args.methods:
            config = TrainConfig(
                method=method,
                method_config=json.loads(args.method_config) if method != "full" else {},
                learning_rate=args.lr,
                head_learning_rate=args.head_lr,
                epochs=args.epochs,
                batch_size=args.batch_size,
                warmup_ratio=args.warmup_ratio,
                seed=args.seed,
            )
            started = time.monotonic()
            result = train(model, data, config)
            row = {
                "task": task,
                "method": method,
                "primary": data.metrics[0],
                "metrics": result.metrics,
                "best_epoch": max((h for h in result.history), key=lambda h: h["metrics"][data.metrics[0]])["epoch"],
                "history": [h["metrics"][data.metrics[0]] for h in result.history],
                "wall_time_s": round(time.monotonic() - started, 1),
                "epochs": result.config.epochs,
                "steps": result.steps,
                "lr": result.config.learning_rate,
                "head_lr": result.config.head_learning_rate,
                "batch_size": result.config.batch_size,
                "train_examples": result.train_examples,
                "trainable_parameters": result.trainable_parameters,
                "device": machine,
                "seed": args.seed,
            }
            rows.append(row)
            line = json.dumps(row)
            print(line, flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(line + "\n")
    print(
        f"\nbackbone {backbone.backbone_id} on {machine}, torch {torch.__version__}, python {sys.version.split()[0]}"
    )
    print(f"{'task':6} {'method':8} {'primary':>9} {'metrics':40} {'time_s':>8} {'epochs':>6} {'best':>5}")
    for r in rows:
        metrics = " ".join(f"{k}={v * 100:.1f}" for k, v in r["metrics"].items())
        print(
            f"{r['task']:6} {r['method']:8} {r['metrics'][r['primary']] * 100:9.1f} {metrics:40} "
            f"{r['wall_time_s']:8.1f} {r['epochs']:6} {r['best_epoch']:5}"
        )


if __name__ == "__main__":
    main()
