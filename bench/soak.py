"""Soak test: many concurrent clients against one server for a while; no failed request, no resource drift.

    python -m bench.soak [--duration-s 600] [--clients 16] [--backbone tiny] [--tasks 16] [--churn-clients 2]

Before the server starts, ``--tasks`` stable tasks (random BitFit patches, as trained ones would look) are published
into a fresh store. Then ``--clients`` threads run for ``--duration-s`` seconds, each with its own connection:

- ``--churn-clients`` of them each own one churn task and cycle it: AddTask (a tiny training job), Predict on it,
  RollbackTask/replace now and then, DeleteTask, again;
- the others Predict on random stable tasks (1-4 inputs a call, with and without text pairs), each on a connection
  of its own that it drops and reopens every few hundred calls.

Predictions only go to stable tasks and each churn task has one owner, so an error is a failure, by design: the
expected count of failed requests is 0. After a warm-up (``--warmup-s``, default 10% of the run) the server's RSS,
threads (``/proc/PID/status``) and open file descriptors (``/proc/PID/fd``) are recorded, and again at the end while
the clients are still running; latencies are counted after the warm-up. The run ends with one JSON line on stdout
(human-readable lines go to stderr); the exit status is 1 if a request failed, RSS grew more than
``--max-rss-growth-pct`` (default 5), or threads/descriptors grew more than a small slack from the first half of the
measured period to the second. Halves, not warm-up vs end: the RPC thread pool starts its workers lazily, up to its
bound, whenever concurrency reaches a new peak, which can happen after any warm-up; a leak keeps growing, so it
shows as growth between the halves, while a pool filling up to its bound does not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVING_RE = re.compile(r"taskpatch serving on \S+:(\d+) \(metrics port (-?\d+)\)")
WORDS = (
    "the movie was great and the acting superb",
    "a dull film with a weak plot",
    "I loved every minute of this book",
    "terrible service, cold food",
    "the song is fine but too long",
    "an excellent trip with lovely people",
    "boring",
    "what a brilliant ending",
    "the play had a dreadful second act",
    "not bad at all",
)
THREAD_SLACK = 4  # grpc and the thread pool may still add a worker or two under a new peak of concurrency
FD_SLACK = 8


def half_maxima(
    warm: dict[str, int],
    samples: list[tuple[float, dict[str, int]]],
    final: dict[str, int],
    key: str,
    warm_at_s: float,
    end_at_s: float,
) -> tuple[int, int]:
    """The most ``key`` reached in the first half of the measured period (warm-up sample included) and in the second
    (final sample included); sample times are seconds since the start, like ``warm_at_s`` and ``end_at_s``."""
    middle = (warm_at_s + end_at_s) / 2
    first = [warm[key]] + [sample[key] for at, sample in samples if at <= middle]
    second = [sample[key] for at, sample in samples if at > middle] + [final[key]]
    return max(first), max(second)


# ---- store preparation -------------------------------------------------------------------------------------------


def publish_stable_tasks(store_dir: Path, backbone: str, count: int, seed: int) -> list[str]:
    """Publish ``count`` random BitFit patches (trained-looking: small random values) before the server starts."""
    import torch

    from server.backbone import load_backbone
    from server.patches import get_method
    from server.patches.heads import HeadSpec, init_head
    from server.store import PatchMeta, PatchStore

    loaded = load_backbone(backbone, device="cpu", dtype="fp32")
    method = get_method("bitfit")
    config = method.parse_config({})
    names = [f"stable-{i:03d}" for i in range(count)]
    with PatchStore(store_dir, loaded.fingerprint) as store:
        for i, name in enumerate(names):
            generator = torch.Generator().manual_seed(seed + i)
            labels = ("neg", "pos") if i % 3 else ("a", "b", "c")
            head = HeadSpec("classification", labels, loaded.pooling)
            tensors = method.init_tensors(loaded.model, loaded.pooling, config, generator)
            tensors.update(init_head(loaded.hidden_size, head, generator))
            tensors = {k: v + torch.randn(v.shape, generator=generator) * 0.02 for k, v in tensors.items()}
            meta = PatchMeta(
                method="bitfit",
                method_config=config.to_dict(),
                head=head.to_dict(),
                backbone_id=loaded.backbone_id,
                backbone_fingerprint=loaded.fingerprint,
                training={"task_name": name, "source": "bench/soak.py"},
                metrics={},
            )
            store.publish(name, tensors, meta)
    return names


# ---- the server process --------------------------------------------------------------------------------------------


class Server:
    """``python -m server`` in a subprocess, logging to a file; inspected through /proc."""

    def __init__(self, argv: list[str], log_path: Path, timeout_s: float = 300.0) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "server", *argv], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout_s
        while True:
            match = SERVING_RE.search(log_path.read_text(errors="replace"))
            if match:
                self.port = int(match.group(1))
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.process.wait(30)
                raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    @property
    def pid(self) -> int:
        return self.process.pid

    def resources(self) -> dict[str, int]:
        status = Path(f"/proc/{self.pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        return {
            "rss_bytes": int(fields["VmRSS"].split()[0]) * 1024,
            "threads": int(fields["Threads"].strip()),
            "fds": len(os.listdir(f"/proc/{self.pid}/fd")),
        }

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
        return self.process.returncode


# ---- clients -------------------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Shared by the client threads (one lock; the counts are small compared to an RPC)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    failure_examples: list[str] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)  # Predict, after the warm-up
    measuring: bool = False

    def ok(self, rpc: str, latency_s: float | None = None) -> None:
        with self.lock:
            self.requests[rpc] += 1
            if latency_s is not None and self.measuring:
                self.latencies_s.append(latency_s)

    def failed(self, rpc: str, error: BaseException) -> None:
        with self.lock:
            self.requests[rpc] += 1
            self.failures[rpc] += 1
            if len(self.failure_examples) < 20:
                self.failure_examples.append(f"{rpc}: {error}")


def connect(addr: str, timeout_s: float) -> Any:
    """A client on a connection of its own.

    grpc shares one TCP connection between channels of a process that have the same target and options; a local
    subchannel pool gives each client its own, as separate client processes would have (and makes the server's
    descriptor count mean something).
    """
    import grpc

    from client import TaskPatchClient
    from protos import taskpatch_pb2_grpc as pb_grpc

    client = TaskPatchClient(addr, timeout_s=timeout_s)
    # TaskPatchClient takes no channel options: swap in a channel of our own (the client's API is unchanged).
    client._channel.close()
    client._channel = grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
    client._stub = pb_grpc.TaskPatchStub(client._channel)
    return client


def _inputs(rng: random.Random) -> list[tuple[str, str | None]]:
    return [(rng.choice(WORDS), rng.choice(WORDS) if rng.random() < 0.3 else None) for _ in range(rng.randint(1, 4))]


def predict_client(addr: str, tasks: list[str], stop: threading.Event, tally: Tally, seed: int) -> None:
    """Predict on random stable tasks; every few hundred calls, drop the connection and open a new one."""
    from client.errors import TaskPatchError

    rng = random.Random(seed)
    while not stop.is_set():
        with connect(addr, 60) as client:
            for _ in range(rng.randint(200, 600)):
                if stop.is_set():
                    break
                started = time.perf_counter()
                try:
                    client.predict(rng.choice(tasks), _inputs(rng))
                except TaskPatchError as err:
                    tally.failed("Predict", err)
                    continue
                tally.ok("Predict", time.perf_counter() - started)
        tally.ok("reconnect")


def churn_client(addr: str, name: str, stop: threading.Event, tally: Tally, seed: int) -> None:
    """Owns task ``name``: add (train), predict, replace / roll back now and then, delete; again."""
    from client.errors import TaskPatchError

    rng = random.Random(seed)
    train = [(f"{rng.choice(WORDS)} {i}", "pos" if i % 2 else "neg") for i in range(24)]
    dev = [(f"{rng.choice(WORDS)} dev {i}", "pos" if i % 2 else "neg") for i in range(8)]

    from tasks.types import Example

    train_examples = [Example(text, None, label) for text, label in train]
    dev_examples = [Example(text, None, label) for text, label in dev]

    def call(rpc: str, fn: Any) -> bool:
        try:
            result = fn()
            if rpc == "AddTask":
                events = list(result)
                if not events or events[-1].kind != "done":
                    raise RuntimeError(f"training ended with {events[-1] if events else 'no event'}")
        except (TaskPatchError, RuntimeError) as err:
            tally.failed(rpc, err)
            return False
        tally.ok(rpc)
        return True

    with connect(addr, 120) as client:
        while not stop.is_set():

            def add(replace: bool) -> Any:
                return client.add_task(
                    name,
                    train_examples,
                    dev_examples,
                    problem_type="classification",
                    labels=("neg", "pos"),
                    epochs=1,
                    batch_size=8,
                    seed=rng.randrange(1000),
                    replace=replace,
                )

            if not call("AddTask", lambda: add(False)):
                time.sleep(0.5)
                continue
            for _ in range(rng.randint(1, 5)):
                call("Predict", lambda: client.predict(name, _inputs(rng)))
            if rng.random() < 0.5 and call("AddTask", lambda: add(True)):
                call("RollbackTask", lambda: client.rollback_task(name))
                call("Predict", lambda: client.predict(name, _inputs(rng)))
            call("GetTask", lambda: client.get_task(name))
            call("DeleteTask", lambda: client.delete_task(name))
            stop.wait(rng.uniform(0.05, 0.3))


# ---- the run -------------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run(args: argparse.Namespace) -> dict[str, Any]:
    log = sys.stderr
    workdir = Path(tempfile.mkdtemp(prefix="taskpatch-soak-", dir=args.work_dir))
    store = workdir / "store"
    started = time.monotonic()
    tasks = publish_stable_tasks(store, args.backbone, args.tasks, args.seed)
    argv = [
        "--backbone",
        args.backbone,
        "--device",
        args.device,
        "--port",
        "0",
        "--metrics-port",
        "-1",
        "--store-dir",
        str(store),
        *args.server_arg,
    ]
    server = Server(argv, workdir / "server.log")
    addr = f"127.0.0.1:{server.port}"
    print(f"soak: server pid {server.pid} on {addr}, {len(tasks)} stable tasks, {args.clients} clients", file=log)
    stop = threading.Event()
    tally = Tally()
    churners = min(args.churn_clients, args.clients - 1)
    threads = [
        threading.Thread(target=churn_client, args=(addr, f"churn-{i}", stop, tally, args.seed + 100 + i), daemon=True)
        for i in range(churners)
    ]
    threads += [
        threading.Thread(target=predict_client, args=(addr, tasks, stop, tally, args.seed + 200 + i), daemon=True)
        for i in range(args.clients - churners)
    ]
    samples: list[tuple[float, dict[str, int]]] = []
    try:
        t0 = time.monotonic()
        for thread in threads:
            thread.start()
        warmup_s = args.warmup_s if args.warmup_s is not None else min(60.0, max(5.0, args.duration_s * 0.1))
        time.sleep(warmup_s)
        warm = server.resources()
        with tally.lock:
            tally.measuring = True
            requests_at_warm = sum(n for rpc, n in tally.requests.items() if rpc != "reconnect")
        t_warm = time.monotonic()
        print(f"soak: warm after {warmup_s:.0f} s: {warm}", file=log)
        end = t0 + args.duration_s
        while time.monotonic() < end:
            time.sleep(min(args.sample_s, max(0.0, end - time.monotonic())))
            samples.append((time.monotonic() - t0, server.resources()))
        final = server.resources()
        t_end = time.monotonic()
    finally:
        stop.set()
        for thread in threads:
            thread.join(180)
        exit_code = server.stop()
    with tally.lock:
        reconnects = tally.requests.pop("reconnect", 0)
        requests = sum(tally.requests.values())
        failed = sum(tally.failures.values())
        latencies = list(tally.latencies_s)
    rss_growth_pct = 100.0 * (final["rss_bytes"] - warm["rss_bytes"]) / warm["rss_bytes"]
    halves = {key: half_maxima(warm, samples, final, key, t_warm - t0, t_end - t0) for key in ("threads", "fds")}
    measured_requests = requests - requests_at_warm
    result: dict[str, Any] = {
        "bench": "soak",
        "backbone": args.backbone,
        "clients": args.clients,
        "churn_clients": churners,
        "stable_tasks": len(tasks),
        "duration_s": round(args.duration_s, 1),
        "warmup_s": round(warmup_s, 1),
        "requests": requests,
        "requests_by_rpc": dict(sorted(tally.requests.items())),
        "failed_requests": failed,
        "reconnects": reconnects,
        "failures_by_rpc": dict(sorted(tally.failures.items())),
        "failure_examples": tally.failure_examples[:5],
        "requests_per_s_after_warmup": round(measured_requests / max(1e-9, t_end - t_warm), 1),
        "predict_latency_ms": {
            "p50": round(1000 * percentile(latencies, 50), 2),
            "p90": round(1000 * percentile(latencies, 90), 2),
            "p99": round(1000 * percentile(latencies, 99), 2),
            "mean": round(1000 * statistics.fmean(latencies), 2) if latencies else None,
            "count": len(latencies),
        },
        "rss_mb_warm": round(warm["rss_bytes"] / 2**20, 1),
        "rss_mb_end": round(final["rss_bytes"] / 2**20, 1),
        "rss_mb_max": round(max([warm["rss_bytes"]] + [s["rss_bytes"] for _, s in samples]) / 2**20, 1),
        "rss_growth_pct": round(rss_growth_pct, 2),
        "threads_warm": warm["threads"],
        "threads_first_half_max": halves["threads"][0],
        "threads_second_half_max": halves["threads"][1],
        "threads_end": final["threads"],
        "threads_samples": [s["threads"] for _, s in samples],
        "fds_warm": warm["fds"],
        "fds_first_half_max": halves["fds"][0],
        "fds_second_half_max": halves["fds"][1],
        "fds_end": final["fds"],
        "server_exit_code": exit_code,
        "wall_s": round(time.monotonic() - started, 1),
    }
    problems = []
    if failed:
        problems.append(f"{failed} failed requests")
    if rss_growth_pct >= args.max_rss_growth_pct:
        problems.append(f"RSS grew {rss_growth_pct:.1f}% (limit {args.max_rss_growth_pct}%)")
    for key, name, slack in (("threads", "threads", THREAD_SLACK), ("fds", "open descriptors", FD_SLACK)):
        first, second = halves[key]
        if second > first + slack:
            problems.append(f"{name} grew from at most {first} in the first half to {second} in the second")
    if exit_code != 0:
        problems.append(f"server exited with {exit_code} on SIGTERM")
    result["problems"] = problems
    result["ok"] = not problems
    if not args.keep:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    else:
        result["work_dir"] = str(workdir)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration-s", type=float, default=600.0, help="how long the clients run (default 600)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--churn-clients", type=int, default=2, help="of which add/predict/delete their own task")
    parser.add_argument("--tasks", type=int, default=16, help="stable tasks published before the start")
    parser.add_argument("--backbone", default="tiny", help="tiny (CI), default (MiniLM) or any --backbone value")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup-s", type=float, default=None, help="default: 10%% of the run, 5-60 s")
    parser.add_argument("--sample-s", type=float, default=5.0, help="how often RSS/threads/fds are sampled")
    parser.add_argument("--max-rss-growth-pct", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="where the temporary store goes (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the store and server log")
    parser.add_argument(
        "--server-arg", action="append", default=[], metavar="FLAG", help="extra server flag (repeatable)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.clients < 2:
        raise SystemExit("--clients must be at least 2")
    result = run(args)
    print(json.dumps(result, sort_keys=True))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
