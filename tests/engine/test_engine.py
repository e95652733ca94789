"""Serving engine: cross-task batches give the same answers as per-task forwards, under any cache pressure."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch

from server.engine import ServingEngine
from server.errors import NotFound, ResourceExhausted
from server.model import Patch, PatchedModel
from server.store import PatchStore
from tests.engine.conftest import publish
from tests.helpers import random_patch

INPUTS = [
    ("the cat sat on the mat", "a cat is sitting on a mat"),
    ("stocks fell sharply today", None),
    ("he said hello", "she said goodbye"),
    ("a", None),
    ("many words in a rather long sentence about nothing in particular at all", "short"),
]


def reference(model: PatchedModel, patch: Patch, inputs: list[tuple[str, str | None]]) -> torch.Tensor:
    """Unbatched per-task forward: one example at a time, the patch applied to every row."""
    rows = []
    with torch.inference_mode():
        for text, pair in inputs:
            batch = model.collate(model.tokenize([text], [pair], 128))
            logits = model.logits(batch, patch)[0]
            if patch.head.problem_type == "classification":
                rows.append(torch.softmax(logits, -1))
            else:
                rows.append(logits[:1])
    return torch.stack(rows)


def as_tensor(output) -> torch.Tensor:
    if output.problem_type == "classification":
        return torch.tensor(output.probabilities)
    return torch.tensor(output.values).unsqueeze(-1)


def predict_concurrently(engine: ServingEngine, jobs: list[tuple[str, list]]) -> list:
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def run(i: int, task: str, inputs: list) -> None:
        barrier.wait()
        results[i] = engine.predict(task, inputs)

    threads = [threading.Thread(target=run, args=(i, t, x)) for i, (t, x) in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_results_equal_unbatched_per_task_forward(model, tasks, make_engine) -> None:
    engine = make_engine(max_wait_ms=20)
    jobs = [(name, INPUTS) for name in tasks]
    for (name, inputs), output in zip(jobs, predict_concurrently(engine, jobs), strict=True):
        expected = reference(model, tasks[name], inputs)
        assert torch.allclose(as_tensor(output), expected, atol=1e-5), name
        assert output.labels == tasks[name].head.labels


def test_batches_really_mix_tasks(model, tasks, make_engine) -> None:
    engine = make_engine(max_wait_ms=200, max_batch_size=64)
    predict_concurrently(engine, [(name, INPUTS[:2]) for name in tasks])
    histogram = engine.metrics.batch_tasks.collect()[0]
    counts = {s.labels.get("le"): s.value for s in histogram.samples if s.name.endswith("_bucket")}
    # At least one forward pass carried more than one task.
    assert counts["1.0"] < counts["+Inf"]


def test_more_tasks_than_the_table_holds(model, tasks, make_engine) -> None:
    """Six tasks, room for two: batches are split, patches evicted and reloaded, answers unchanged."""
    engine = make_engine(max_resident=2, max_wait_ms=50, max_batch_size=64)
    for _ in range(2):
        outputs = predict_concurrently(engine, [(name, INPUTS) for name in tasks])
        for name, output in zip(tasks, outputs, strict=True):
            assert torch.allclose(as_tensor(output), reference(model, tasks[name], INPUTS), atol=1e-5), name
    assert len(engine.resident.entries) <= 2
    evictions = sum(s.value for s in engine.metrics.patch_evictions.collect()[0].samples if s.name.endswith("_total"))
    assert evictions >= 4


def test_eviction_is_lru_and_pinned_tasks_stay(model, tasks, make_engine) -> None:
    engine = make_engine(max_resident=3)
    engine.pin("b0", True)
    assert engine.is_resident("b0") and engine.is_pinned("b0")
    for name in ("b1", "b2", "a0", "a1", "a2"):
        engine.predict(name, INPUTS[:1])
    assert engine.is_resident("b0"), "a pinned task was evicted"
    assert set(engine.resident.entries) == {"b0", "a1", "a2"}  # the two most recent + the pinned one
    engine.predict("a1", INPUTS[:1])  # a1 becomes most recent: a2 is now the LRU victim
    engine.predict("b1", INPUTS[:1])
    assert set(engine.resident.entries) == {"b0", "a1", "b1"}
    engine.pin("b0", False)
    engine.predict("a2", INPUTS[:1])
    engine.predict("b2", INPUTS[:1])
    assert not engine.is_resident("b0")


def test_cannot_pin_the_whole_table(model, tasks, make_engine) -> None:
    engine = make_engine(max_resident=2)
    engine.pin("b0", True)
    with pytest.raises(ResourceExhausted):
        engine.pin("b1", True)


def test_new_version_and_rollback_are_never_served_stale(model, store: PatchStore, tasks, make_engine) -> None:
    engine = make_engine()
    first = engine.predict("b0", INPUTS)
    replacement = random_patch(model, "bitfit", 99)
    publish(store, model, "b0", replacement)
    second = engine.predict("b0", INPUTS)
    assert second.version == 2
    assert torch.allclose(as_tensor(second), reference(model, replacement, INPUTS), atol=1e-5)
    store.rollback("b0")
    third = engine.predict("b0", INPUTS)
    assert third.version == 1
    assert third.probabilities == first.probabilities


def test_deleted_task_is_not_found(model, store: PatchStore, tasks, make_engine) -> None:
    engine = make_engine()
    engine.predict("a0", INPUTS[:1])
    store.delete("a0")
    with pytest.raises(NotFound):
        engine.predict("a0", INPUTS[:1])


def test_concurrent_predictions_equal_serial(model, tasks, make_engine) -> None:
    engine = make_engine(max_wait_ms=10, max_batch_size=16)
    jobs = [(name, INPUTS[i % len(INPUTS) :] + INPUTS[: i % len(INPUTS)]) for i, name in enumerate(list(tasks) * 4)]
    serial = [engine.predict(task, inputs) for task, inputs in jobs]
    concurrent = predict_concurrently(engine, jobs)
    for one, other in zip(serial, concurrent, strict=True):
        assert torch.allclose(as_tensor(one), as_tensor(other), atol=1e-5)


def test_large_request_is_split_across_forward_passes(model, tasks, make_engine) -> None:
    engine = make_engine(max_batch_size=4)
    inputs = INPUTS * 5  # 25 rows, 7 forward passes
    output = engine.predict("a1", inputs)
    assert torch.allclose(as_tensor(output), reference(model, tasks["a1"], inputs), atol=1e-5)


def test_one_corrupt_patch_does_not_break_the_batch(model, store: PatchStore, tasks, make_engine) -> None:
    engine = make_engine(max_wait_ms=50)
    path = store.current("b1").path
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # flip a byte in the tensor data
    path.write_bytes(bytes(data))
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = engine.predict(name, INPUTS[:2])
        except Exception as exc:
            results[name] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in ("b0", "b1", "a0")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert type(results["b1"]).__name__ == "PatchCorrupt"
    assert not isinstance(results["b0"], Exception) and not isinstance(results["a0"], Exception)


def test_wait_idle_returns_when_nothing_is_queued(make_engine: Callable[..., ServingEngine], tasks) -> None:
    engine = make_engine()
    engine.wait_idle(5.0)  # must not block for the full timeout on an idle engine
    engine.predict("b0", INPUTS[:1])
    engine.wait_idle(5.0)
