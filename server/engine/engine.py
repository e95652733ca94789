"""Cross-task micro-batching: requests for any tasks share one forward pass over the frozen backbone.

RPC threads call :meth:`ServingEngine.predict`, which tokenizes in the caller's thread, queues the rows and waits.
One worker thread owns the resident table and the device: it collects queued rows for up to ``max_wait_ms`` (or
until ``max_batch_size`` rows), makes their patches resident, and runs ONE forward pass in which every row gathers
its own patch by slot. No per-example Python work happens on that path beyond building index tensors.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch

from server.engine.resident import ResidentEntry, ResidentPatches
from server.errors import FailedPrecondition, InvalidArgument, ShuttingDown, TaskPatchError
from server.metrics import Metrics
from server.model import Features, PatchedModel
from server.names import validate_task_name
from server.patches.registry import get_method
from server.store import PatchStore, PatchVersion

log = logging.getLogger(__name__)

# How many queued rows (in batches) the worker looks at when grouping rows of similar length.
BUCKET_LOOKAHEAD_BATCHES = 4


@dataclass(frozen=True)
class EngineSettings:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0
    max_resident: int = 1024
    max_resident_bytes: int = 512 * 1024 * 1024
    max_seq_length: int = 128
    pinned: tuple[str, ...] = ()


@dataclass(frozen=True)
class PredictOutput:
    task: str
    version: int
    method: str
    problem_type: str
    labels: tuple[str, ...]
    probabilities: list[list[float]]  # classification: [n][labels]; empty for regression
    values: list[float]  # regression: [n]; empty for classification


@dataclass
class _Item:
    version: PatchVersion
    features: list[Features]
    future: Future[tuple[ResidentEntry, torch.Tensor]] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def longest(self) -> int:
        return max((len(f) for f in self.features), default=0)


class ServingEngine:
    def __init__(self, model: PatchedModel, store: PatchStore, settings: EngineSettings, metrics: Metrics) -> None:
        self.model = model
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.resident = ResidentPatches(model, store, settings.max_resident, settings.max_resident_bytes, metrics)
        for name in settings.pinned:
            self.resident.pin(validate_task_name(name))
        self._queue: deque[_Item] = deque()
        self._control: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._stale: set[str] = set()
        self._cond = threading.Condition()
        self._busy = False
        self._arriving = 0  # predict() calls between entry and enqueue
        self._stopping = False
        self._thread: threading.Thread | None = None
        store.subscribe(self._on_store_change)

    # ---- lifecycle -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="taskpatch-engine", daemon=True)
        self._thread.start()
        for name in self.settings.pinned:
            if self.store.exists(name):
                self.preload(name)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish what is queued, then stop the worker."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ---- public API (any thread) ---------------------------------------------------------------------------------
    def predict(self, task: str, inputs: Sequence[tuple[str, str | None]]) -> PredictOutput:
        validate_task_name(task)
        if not inputs:
            raise InvalidArgument("no inputs to predict")
        with self._cond:
            self._arriving += 1  # the worker may hold a batch open for us while we tokenize
        try:
            version = self.store.current(task)
            method = get_method(version.meta.method)
            if not method.servable:
                raise FailedPrecondition(f"task {task!r} uses method {method.name!r}, which cannot be served")
            texts, pairs = [t for t, _ in inputs], [p for _, p in inputs]
            features = self.model.tokenize(texts, pairs, self.settings.max_seq_length)
            size = self.settings.max_batch_size
            items = [_Item(version, features[i : i + size]) for i in range(0, len(features), size)]
        except BaseException:
            with self._cond:
                self._arriving -= 1
                self._cond.notify_all()
            raise
        self._enqueue(items, arriving=True)
        results = [item.future.result() for item in items]
        entry = results[0][0]
        logits = torch.cat([r[1] for r in results])  # [n, max_outputs]
        self.metrics.predict_examples.labels(method=entry.method).inc(len(inputs))
        head = entry.head
        if head.problem_type == "classification":
            probabilities = torch.softmax(logits[:, : head.num_outputs], dim=-1).tolist()
            return PredictOutput(task, entry.version, entry.method, head.problem_type, head.labels, probabilities, [])
        values = logits[:, 0].tolist()
        return PredictOutput(task, entry.version, entry.method, head.problem_type, head.labels, [], values)

    def preload(self, task: str) -> None:
        """Make ``task`` resident now (a zero-row request)."""
        item = _Item(self.store.current(validate_task_name(task)), [])
        self._enqueue([item])
        item.future.result()

    def pin(self, task: str, pinned: bool) -> None:
        validate_task_name(task)
        if pinned:
            self.store.current(task)  # NotFound / unhealthy before anything changes
            self._call(lambda: self.resident.pin(task))
            self.preload(task)
        else:
            self._call(lambda: self.resident.unpin(task))

    def is_pinned(self, task: str) -> bool:
        return self.resident.is_pinned(task)

    def is_resident(self, task: str) -> bool:
        return task in self.resident.entries

    def wait_idle(self, timeout_s: float) -> None:
        """Block until no prediction is queued or running, at most ``timeout_s``: lets training yield to serving."""
        with self._cond:
            self._cond.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    # ---- internals -----------------------------------------------------------------------------------------------
    def _enqueue(self, items: list[_Item], arriving: bool = False) -> None:
        with self._cond:
            if arriving:
                self._arriving -= 1
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            self._queue.extend(items)
            self.metrics.queue_depth.set(len(self._queue))
            self._cond.notify_all()

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the worker thread (the only thread that touches the resident table)."""
        future: Future[Any] = Future()
        with self._cond:
            self._control.append((fn, future))
            self._cond.notify_all()
        return future.result()

    def _on_store_change(self, name: str) -> None:
        with self._cond:
            self._stale.add(name)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._queue or self._control or self._stale or self._stopping)
                if self._stopping and not self._queue and not self._control:
                    return
                self._busy = True
                stale, self._stale = self._stale, set()
                controls = list(self._control)
                self._control.clear()
            for name in stale:
                self.resident.drop(name, reason="invalidated")
            for fn, future in controls:
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)
            items = self._take_batch()
            if items:
                self._forward(items)

    def _take_batch(self) -> list[_Item]:
        """The oldest queued request plus queued requests of similar length, up to max_batch_size rows."""
        max_rows = self.settings.max_batch_size
        max_wait = self.settings.max_wait_ms / 1000.0
        with self._cond:
            if not self._queue:
                return []
            # Hold the batch open only while another caller is on its way in (tokenizing): a lone request is
            # served at once instead of paying max_wait for company that is not coming.
            deadline = self._queue[0].enqueued + max_wait
            while not self._stopping and self._arriving > 0 and sum(len(i.features) for i in self._queue) < max_rows:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._cond.wait(remaining):
                    break
            first = self._queue.popleft()
            window = [self._queue[i] for i in range(min(len(self._queue), max_rows * BUCKET_LOOKAHEAD_BATCHES))]
            window.sort(key=lambda item: abs(item.longest - first.longest))
            taken, rows = [first], len(first.features)
            tasks = {first.version.name}
            capacity = self.resident.evictable_capacity()
            for item in window:
                if rows + len(item.features) > max_rows:
                    continue
                name = item.version.name
                if name not in tasks and len(tasks) >= capacity and not self.resident.is_pinned(name):
                    continue  # more distinct tasks than the table holds: leave it for the next batch
                tasks.add(name)
                taken.append(item)
                rows += len(item.features)
            for item in taken[1:]:
                self._queue.remove(item)
            self.metrics.queue_depth.set(len(self._queue))
        return taken

    def _forward(self, items: list[_Item]) -> None:
        ready: list[tuple[_Item, ResidentEntry]] = []
        protected: set[str] = set()
        for item in items:
            try:
                entry = self.resident.acquire(item.version, protected)
            except TaskPatchError as exc:
                item.future.set_exception(exc)
                continue
            except Exception as exc:
                log.exception("loading patch %s v%d failed", item.version.name, item.version.version)
                item.future.set_exception(exc)
                continue
            protected.add(entry.name)
            if item.features:
                ready.append((item, entry))
            else:
                item.future.set_result((entry, torch.empty(0)))
        if not ready:
            return
        features = list(chain.from_iterable(item.features for item, _ in ready))
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                batch = self.model.collate(features)
                method_rows, head_rows = self.resident.rows_for(
                    [entry for _, entry in ready], [len(item.features) for item, _ in ready]
                )
                appliers = {m: self.resident.tables[m].bind(rows) for m, rows in method_rows.items()}
                pooled = self.model.encode(batch, appliers)  # [rows, hidden]
                logits = self.resident.heads.apply(pooled, head_rows).float().cpu()  # [rows, max_outputs]
        except Exception as exc:
            log.exception("serving forward pass failed")
            for item, _ in ready:
                item.future.set_exception(exc)
            return
        self.metrics.forward_latency.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(features))
        self.metrics.batch_tasks.observe(len({e.name for _, e in ready}))
        offset = 0
        for item, entry in ready:
            n = len(item.features)
            item.future.set_result((entry, logits[offset : offset + n]))
            offset += n
