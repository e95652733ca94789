"""Serving benchmark: many tasks from one backbone at nearly the speed of the backbone alone.

    python -m bench.serving [--quick] [--backbone default] [--data-dir DIR]

Measures, on MRPC dev pairs, in one run (ratios are taken between numbers measured moments apart, in interleaved
rounds, so machine noise hits both sides):
 1. ceiling: the raw HF model forward (no hooks, no service), batch 32
 2. engine, one task (32 concurrent callers, one example each)
 3. engine, 32 different BitFit tasks mixed in every batch; the same with 32 adapter tasks
 4. naive baseline: for each task group of a batch, copy the patch into the model's biases and run that group
 5. over gRPC (server in a subprocess): batch-1 p50/p99 with 1 client; throughput with 1, 4, 16 clients
 6. cold load: time to make a non-resident BitFit patch resident (p50 over 50 tasks)
 7. scale: 1,000 stored BitFit tasks: server start time; resident bytes per task vs the patch's tensor bytes
 8. serving p99 latency while a training job runs vs idle
and ends with one JSON line of ratios and figures.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from server.backbone import load_backbone
from server.engine import EngineSettings, ServingEngine
from server.metrics import Metrics
from server.model import Patch, PatchedModel, pool
from server.patches import get_method
from server.patches.heads import HeadSpec, apply_head, init_head
from server.store import PatchStore
from tasks.glue import load_glue

BATCH = 32


# ---------------------------------------------------------------------------------------------------------------
# helpers
def random_patch(model: PatchedModel, method: str, seed: int) -> Patch:
    """A patch with small random values everywhere (as a trained one would have)."""
    generator = torch.Generator().manual_seed(seed)
    impl = get_method(method)
    config = impl.parse_config({})
    head = HeadSpec("classification", ("not_paraphrase", "paraphrase"), model.backbone.pooling)
    tensors = impl.init_tensors(model.backbone.model, model.backbone.pooling, config, generator)
    tensors.update(init_head(model.backbone.hidden_size, head, generator))
    tensors = {k: v + torch.randn(v.shape, generator=generator) * 0.01 for k, v in tensors.items()}
    return Patch(method, config, head, tensors)


def publish(store: PatchStore, model: PatchedModel, name: str, patch: Patch) -> None:
    store.publish(name, patch.tensors, patch.meta(model.backbone, {"task_name": name}, {}))


def sync() -> None:
    """Wait for queued GPU work, so a timer measures the work and not its launch."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


_POOL: ThreadPoolExecutor | None = None


def concurrent_calls(calls: Sequence[Callable[[], object]]) -> float:
    """Run every call at once on a persistent pool (no thread start-up in the timing); wall seconds until all
    returned."""
    global _POOL
    if _POOL is None or _POOL._max_workers < len(calls):
        _POOL = ThreadPoolExecutor(max_workers=len(calls))
    started = time.perf_counter()
    for future in [_POOL.submit(call) for call in calls]:
        future.result()
    return time.perf_counter() - started


# ---------------------------------------------------------------------------------------------------------------
# 1-4: in-process forward paths
class InProcess:
    def __init__(self, backbone_name: str, pairs: list[tuple[str, str | None]], store_dir: Path) -> None:
        self.raw = load_backbone(backbone_name)  # a second copy: no hooks at all, the true ceiling
        self.model = PatchedModel(load_backbone(backbone_name))
        self.pairs = pairs
        self.store = PatchStore(store_dir, self.model.backbone.fingerprint)
        self.bitfit = [random_patch(self.model, "bitfit", i) for i in range(BATCH)]
        self.adapters = [random_patch(self.model, "adapter", 1000 + i) for i in range(BATCH)]
        for i, patch in enumerate(self.bitfit):
            publish(self.store, self.model, f"bitfit-{i}", patch)
        for i, patch in enumerate(self.adapters):
            publish(self.store, self.model, f"adapter-{i}", patch)
        self.engine = ServingEngine(
            self.model, self.store, EngineSettings(max_batch_size=BATCH, max_wait_ms=50), Metrics()
        )
        self.engine.start()
        # Naive baseline: its own model copy whose biases get overwritten per task group.
        self.naive_model = copy.deepcopy(self.raw.model)
        self.naive_base = {n: p.detach().clone() for n, p in self.naive_model.named_parameters() if n.endswith("bias")}
        self.features = self.model.tokenize([a for a, _ in pairs], [b for _, b in pairs], 128)

    def batch(self, round_index: int) -> list[tuple[str, str | None]]:
        start = (round_index * BATCH) % (len(self.pairs) - BATCH)
        return self.pairs[start : start + BATCH]

    def raw_forward(self, round_index: int) -> float:
        start = (round_index * BATCH) % (len(self.pairs) - BATCH)
        features = self.features[start : start + BATCH]
        patch = self.bitfit[0]
        started = time.perf_counter()
        with torch.inference_mode():
            batch = self.model.collate(features)
            output = self.raw.model(**batch)
            apply_head(pool(output, batch["attention_mask"], self.raw.pooling), patch.tensors)
            sync()
        return BATCH / (time.perf_counter() - started)

    def engine_forward(self, round_index: int, task_names: list[str]) -> float:
        pairs = self.batch(round_index)
        calls = [lambda t=t, p=p: self.engine.predict(t, [p]) for t, p in zip(task_names, pairs, strict=True)]
        return BATCH / concurrent_calls(calls)

    def naive_forward(self, round_index: int) -> float:
        """What a set_adapter-style server does: one forward per task group, biases swapped in between."""
        start = (round_index * BATCH) % (len(self.pairs) - BATCH)
        features = self.features[start : start + BATCH]
        params = dict(self.naive_model.named_parameters())
        started = time.perf_counter()
        with torch.inference_mode():
            for row, patch in enumerate(self.bitfit):  # 32 tasks, one row each
                for name, base in self.naive_base.items():
                    delta = patch.tensors.get(name[: -len(".bias")] + ".bias_delta")
                    params[name].copy_(base if delta is None else base + delta.to(base.device))
                batch = self.model.collate([features[row]])
                output = self.naive_model(**batch)
                apply_head(pool(output, batch["attention_mask"], self.raw.pooling), patch.tensors)
            sync()
        return BATCH / (time.perf_counter() - started)

    def close(self) -> None:
        self.engine.stop()
        self.store.close()


def measure_in_process(bench: InProcess, rounds: int) -> dict[str, float]:
    single = ["bitfit-0"] * BATCH
    mixed = [f"bitfit-{i}" for i in range(BATCH)]
    mixed_adapters = [f"adapter-{i}" for i in range(BATCH)]
    for warm in range(2):  # warm-up: resident loads, allocator, thread pools
        bench.raw_forward(warm), bench.engine_forward(warm, single), bench.engine_forward(warm, mixed)
        bench.engine_forward(warm, mixed_adapters), bench.naive_forward(warm)
    results: dict[str, list[float]] = {k: [] for k in ("raw", "single", "mixed", "adapter_mixed", "naive")}
    for r in range(rounds):
        results["raw"].append(bench.raw_forward(r))
        results["single"].append(bench.engine_forward(r, single))
        results["mixed"].append(bench.engine_forward(r, mixed))
        results["adapter_mixed"].append(bench.engine_forward(r, mixed_adapters))
        results["naive"].append(bench.naive_forward(r))
    return {k: statistics.median(v) for k, v in results.items()}


def measure_cold_load(bench: InProcess, tasks: int) -> list[float]:
    """Seconds to make a stored, non-resident BitFit patch resident (store read + hash check + table write)."""
    for i in range(tasks):
        publish(bench.store, bench.model, f"cold-{i}", random_patch(bench.model, "bitfit", 5000 + i))
    times = []
    for i in range(tasks):
        started = time.perf_counter()
        bench.engine.preload(f"cold-{i}")
        times.append(time.perf_counter() - started)
    return times


# ---------------------------------------------------------------------------------------------------------------
# 5, 7, 8: a real server in a subprocess
class ServerProcess:
    def __init__(self, backbone: str, store_dir: Path, extra: Sequence[str] = ()) -> None:
        self.started = time.perf_counter()
        command = [sys.executable, "-m", "server", "--backbone", backbone, "--port", "0", "--metrics-port", "-1"]
        command += ["--store-dir", str(store_dir), *extra]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.port = 0
        assert self.process.stderr is not None
        for line in self.process.stderr:
            match = re.search(r"serving on [^:]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
        if not self.port:
            raise RuntimeError("server did not start")
        self.start_s = time.perf_counter() - self.started
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for _ in self.process.stderr:
            pass

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)


def grpc_latencies(port: int, task: str, pairs: list[tuple[str, str | None]], n: int) -> list[float]:
    from client import TaskPatchClient

    latencies = []
    with TaskPatchClient(f"127.0.0.1:{port}") as client:
        client.predict(task, [pairs[0]])
        for i in range(n):
            started = time.perf_counter()
            client.predict(task, [pairs[i % len(pairs)]])
            latencies.append(time.perf_counter() - started)
    return latencies


def grpc_throughput(port: int, task: str, pairs: list[tuple[str, str | None]], clients: int, seconds: float) -> float:
    from client import TaskPatchClient

    counts = [0] * clients
    deadline = time.perf_counter() + seconds

    def worker(index: int) -> None:
        with TaskPatchClient(f"127.0.0.1:{port}") as client:
            i = index
            while time.perf_counter() < deadline:
                client.predict(task, [pairs[i % len(pairs)]])
                counts[index] += 1
                i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def raw_single_latency(bench: InProcess, n: int) -> list[float]:
    latencies = []
    with torch.inference_mode():
        for i in range(n):
            started = time.perf_counter()
            batch = bench.model.collate([bench.features[i % len(bench.features)]])
            output = bench.raw.model(**batch)
            apply_head(pool(output, batch["attention_mask"], bench.raw.pooling), bench.bitfit[0].tensors)
            sync()
            latencies.append(time.perf_counter() - started)
    return latencies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds and requests (a few minutes on CPU)")
    parser.add_argument("--backbone", default="default")
    parser.add_argument("--data-dir", default=os.environ.get("GLUE_DIR"))
    parser.add_argument("--scale-tasks", type=int, default=1000)
    args = parser.parse_args(argv)
    rounds = 4 if args.quick else 10
    n_latency = 60 if args.quick else 300
    seconds = 6.0 if args.quick else 20.0

    dev = load_glue("mrpc", args.data_dir, allow_hub=False).dev
    pairs = [(e.text, e.text_pair) for e in dev]
    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu: {cpu_model()}"
    machine = f"{device}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}\nbackbone: {args.backbone}\n", flush=True)
    results: dict[str, object] = {"machine": machine, "backbone": args.backbone, "quick": args.quick}

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        bench = InProcess(args.backbone, pairs, root / "engine-store")
        speeds = measure_in_process(bench, rounds)
        print("1-4. examples/s at batch 32 (median of interleaved rounds)")
        for key, label in (
            ("raw", "raw HF forward (ceiling)"),
            ("single", "engine, 1 task"),
            ("mixed", "engine, 32 BitFit tasks mixed"),
            ("adapter_mixed", "engine, 32 adapter tasks mixed"),
            ("naive", "naive bias swap per task group"),
        ):
            print(f"   {label:34} {speeds[key]:8.1f}   x{speeds[key] / speeds['raw']:.2f} of raw")
        results.update({f"{k}_ex_per_s": round(v, 2) for k, v in speeds.items()})
        results["single_vs_raw"] = round(speeds["single"] / speeds["raw"], 3)
        results["mixed_vs_raw"] = round(speeds["mixed"] / speeds["raw"], 3)
        results["adapter_mixed_vs_raw"] = round(speeds["adapter_mixed"] / speeds["raw"], 3)
        results["mixed_vs_naive"] = round(speeds["mixed"] / speeds["naive"], 3)

        cold = measure_cold_load(bench, 50)
        results["cold_load_p50_ms"] = round(statistics.median(cold) * 1000, 2)
        print(
            f"\n6. cold load of a BitFit patch: p50 {results['cold_load_p50_ms']} ms, p99 "
            f"{percentile(cold, 99) * 1000:.2f} ms over {len(cold)} tasks"
        )

        raw_latency = raw_single_latency(bench, n_latency)
        results["raw_batch1_p50_ms"] = round(statistics.median(raw_latency) * 1000, 2)
        bench.close()

        # 5. gRPC
        grpc_store = root / "grpc-store"
        with PatchStore(grpc_store, bench.model.backbone.fingerprint) as store:
            publish(store, bench.model, "mrpc", bench.bitfit[0])
        server = ServerProcess(args.backbone, grpc_store)
        try:
            latencies = grpc_latencies(server.port, "mrpc", pairs, n_latency)
            throughput = {c: grpc_throughput(server.port, "mrpc", pairs, c, seconds) for c in (1, 4, 16)}
        finally:
            server.stop()
        p50, p99 = statistics.median(latencies), percentile(latencies, 99)
        results.update(
            grpc_p50_ms=round(p50 * 1000, 2),
            grpc_p99_ms=round(p99 * 1000, 2),
            grpc_p50_vs_raw=round(p50 * 1000 / results["raw_batch1_p50_ms"], 3),  # type: ignore[operator]
            clients16_vs_1=round(throughput[16] / throughput[1], 3),
            **{f"grpc_clients{c}_ex_per_s": round(v, 2) for c, v in throughput.items()},
        )
        print(
            f"\n5. gRPC batch 1, 1 client: p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
            f"(raw single forward p50 {results['raw_batch1_p50_ms']} ms: x{results['grpc_p50_vs_raw']})"
        )
        for c, v in throughput.items():
            print(f"   {c:2} clients: {v:7.1f} ex/s   x{v / throughput[1]:.2f} of 1 client")

        # 7. scale
        scale_store = root / "scale-store"
        model = bench.model
        with PatchStore(scale_store, model.backbone.fingerprint) as store:
            template = random_patch(model, "bitfit", 7)
            for i in range(args.scale_tasks):
                patch = Patch(
                    "bitfit", template.config, template.head, {k: v + i * 1e-4 for k, v in template.tensors.items()}
                )
                publish(store, model, f"t{i:04d}", patch)
        empty_server = ServerProcess(args.backbone, root / "empty-store")
        empty_server.stop()
        scale_server = ServerProcess(args.backbone, scale_store)
        scale_server.stop()
        tensor_bytes = sum(t.numel() * t.element_size() for t in template.tensors.values())
        with PatchStore(scale_store, model.backbone.fingerprint) as store:
            engine = ServingEngine(model, store, EngineSettings(max_resident=args.scale_tasks + 24), Metrics())
            engine.start()
            for i in range(args.scale_tasks):
                engine.preload(f"t{i:04d}")
            table_bytes = engine.resident.table_bytes
            engine.stop()
        results.update(
            start_empty_store_s=round(empty_server.start_s, 2),
            start_1000_tasks_s=round(scale_server.start_s, 2),
            resident_bytes_ratio=round(table_bytes / args.scale_tasks / tensor_bytes, 3),
            bitfit_tensor_bytes=tensor_bytes,
        )
        print(
            f"\n7. {args.scale_tasks} stored BitFit tasks: server start {scale_server.start_s:.2f} s "
            f"(empty store {empty_server.start_s:.2f} s); resident table {table_bytes / args.scale_tasks:.0f} B/task "
            f"for {tensor_bytes} B of tensors: x{results['resident_bytes_ratio']}"
        )

        # 8. serving p99 while a training job runs
        server = ServerProcess(args.backbone, grpc_store)
        try:
            idle = grpc_latencies(server.port, "mrpc", pairs, n_latency)
            busy = latencies_while_training(server.port, pairs, args.data_dir, n_latency)
        finally:
            server.stop()
        results["idle_p99_ms"] = round(percentile(idle, 99) * 1000, 2)
        results["train_p99_ms"] = round(percentile(busy, 99) * 1000, 2)
        results["train_p99_vs_idle"] = round(percentile(busy, 99) / percentile(idle, 99), 3)
        print(
            f"\n8. batch-1 p99 idle {results['idle_p99_ms']} ms, while training {results['train_p99_ms']} ms: "
            f"x{results['train_p99_vs_idle']}"
        )
    print(json.dumps(results))


def latencies_while_training(port: int, pairs: list, data_dir: str | None, n: int) -> list[float]:
    from client import TaskPatchClient

    with TaskPatchClient(f"127.0.0.1:{port}") as client:
        events = client.add_glue_task("mrpc", data_dir, task_name="train-me", train_limit=2000, epochs=5, detach=True)
        job_id = next(iter(events)).job_id
        deadline = time.monotonic() + 120
        while client.get_job(job_id).state != "running":
            if time.monotonic() > deadline:
                raise RuntimeError("training job did not start")
            time.sleep(0.05)
        latencies = grpc_latencies(port, "mrpc", pairs, n)
        still_running = client.get_job(job_id).state == "running"
        client.cancel_job(job_id)
    if not still_running:
        print("   warning: the training job ended before the latency sample did")
    return latencies


if __name__ == "__main__":
    main()
