"""Adapters in a mixed batch: batched matmul over per-row gathered weights vs grouping rows per task.

    python -m bench.adapter_routing [--tasks 1 4 32] [--batch 32] [--seq 80]

DESIGN.md asks which is faster; the engine uses the gathered-bmm form (no Python loop over tasks). This prints the
time of one adapter application at MiniLM's shapes (hidden 384, bottleneck 24) for each strategy and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def gathered_bmm(h, rows, down_w, down_b, up_w, up_b):  # type: ignore[no-untyped-def]
    z = torch.baddbmm(down_b.index_select(0, rows).unsqueeze(1), h, down_w.index_select(0, rows))
    return h + torch.baddbmm(up_b.index_select(0, rows).unsqueeze(1), F.relu(z), up_w.index_select(0, rows))


def grouped(h, rows, down_w, down_b, up_w, up_b):  # type: ignore[no-untyped-def]
    out = h.clone()
    for slot in torch.unique(rows).tolist():
        index = (rows == slot).nonzero().squeeze(1)
        part = h.index_select(0, index)
        z = F.relu(torch.matmul(part, down_w[slot]) + down_b[slot])
        out.index_copy_(0, index, part + torch.matmul(z, up_w[slot]) + up_b[slot])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 32])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=80)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--rank", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    result = {}
    with torch.inference_mode():
        for n_tasks in args.tasks:
            slots = n_tasks + 1
            down_w = torch.randn(slots, args.hidden, args.rank) * 0.02
            down_b = torch.randn(slots, args.rank) * 0.02
            up_w = torch.randn(slots, args.rank, args.hidden) * 0.02
            up_b = torch.randn(slots, args.hidden) * 0.02
            h = torch.randn(args.batch, args.seq, args.hidden)
            rows = torch.arange(args.batch) % n_tasks + 1
            tensors = (h, rows, down_w, down_b, up_w, up_b)
            assert torch.allclose(gathered_bmm(*tensors), grouped(*tensors), atol=1e-5)
            times: dict[str, list[float]] = {"bmm": [], "grouped": []}
            for _ in range(args.repeats):
                for name, fn in (("bmm", gathered_bmm), ("grouped", grouped)):
                    started = time.perf_counter()
                    fn(*tensors)
                    times[name].append(time.perf_counter() - started)
            bmm_ms, grouped_ms = (statistics.median(times[k]) * 1000 for k in ("bmm", "grouped"))
            print(f"{n_tasks:3} tasks: gathered bmm {bmm_ms:7.3f} ms, grouped {grouped_ms:7.3f} ms, "
                  f"grouped/bmm x{grouped_ms / bmm_ms:.2f}")  # fmt: skip
            result[f"grouped_vs_bmm_{n_tasks}_tasks"] = round(grouped_ms / bmm_ms, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
