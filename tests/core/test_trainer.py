"""Trainer controls: determinism, data fraction, time budget, early stopping, keep-best, events."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from server.errors import Cancelled, InvalidArgument
from server.model import PatchedModel
from server.training.config import TrainConfig
from server.training.trainer import TrainEvent, train


def test_same_seed_same_patch_on_cpu(model: PatchedModel, tiny_task) -> None:
    config = TrainConfig(method="bitfit", epochs=2, seed=3, learning_rate=1e-2)
    first, second = train(model, tiny_task, config), train(model, tiny_task, config)
    assert first.patch.tensors.keys() == second.patch.tensors.keys()
    for name, tensor in first.patch.tensors.items():
        assert torch.equal(tensor, second.patch.tensors[name]), name
    other = train(model, tiny_task, dataclasses.replace(config, seed=4))
    assert any(not torch.equal(t, other.patch.tensors[n]) for n, t in first.patch.tensors.items())


def test_data_fraction_subsamples_train(model: PatchedModel, tiny_task) -> None:
    result = train(model, tiny_task, TrainConfig(epochs=1, data_fraction=0.25, batch_size=2))
    assert result.train_examples == 6  # 25% of 24, stratified
    assert result.steps == 3


def test_time_budget_stops_cleanly_and_evaluates(model: PatchedModel, tiny_task) -> None:
    result = train(model, tiny_task, TrainConfig(epochs=1000, batch_size=2, time_budget_s=0.5))
    assert result.stop_reason == "time_budget"
    assert result.history and result.history[-1]["step"] == result.steps  # evaluated at the stop
    assert result.metrics


def test_early_stopping_and_keep_best(model: PatchedModel, tiny_task) -> None:
    config = TrainConfig(
        epochs=200, batch_size=8, early_stopping_patience=2, learning_rate=1e-6, head_learning_rate=1e-6
    )
    result = train(model, tiny_task, config)
    assert result.stop_reason == "early_stopping"
    scores = [h["metrics"]["accuracy"] for h in result.history]
    assert result.metrics["accuracy"] == max(scores)  # keep-best returns the best evaluation, not the last
    assert len(scores) < 200


def test_events_stream_in_order(model: PatchedModel, tiny_task) -> None:
    events: list[TrainEvent] = []
    train(model, tiny_task, TrainConfig(epochs=2, batch_size=4), on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "started"
    assert kinds.count("evaluation") == 2
    progress = [e for e in events if e.kind == "progress"]
    assert progress and progress[-1].step == progress[-1].total_steps
    assert all(e.examples_per_s > 0 for e in progress)


def test_cancel_between_steps(model: PatchedModel, tiny_task) -> None:
    calls = iter(range(1000))
    with pytest.raises(Cancelled):
        train(model, tiny_task, TrainConfig(epochs=5, batch_size=2), should_stop=lambda: next(calls) >= 3)


def test_regression_task_trains(model: PatchedModel) -> None:
    from tasks.types import Example, TaskData

    train_set = [Example(f"score {i % 5} words here", None, float(i % 5)) for i in range(30)]
    data = TaskData("reg", "regression", (), ("spearman", "pearson"), train_set, train_set[:10])
    result = train(model, data, TrainConfig(epochs=2, batch_size=8))
    assert result.patch.head.problem_type == "regression"
    assert result.patch.tensors["head.weight"].shape[0] == 1
    assert set(result.metrics) == {"spearman", "pearson"}


@pytest.mark.parametrize(
    "bad",
    [
        {"learning_rate": -1.0},
        {"epochs": 0},
        {"batch_size": 0},
        {"data_fraction": 1.5},
        {"data_fraction": 0.0},
        {"time_budget_s": float("nan")},
        {"max_seq_length": 4},
        {"method": "nope"},
        {"method_config": {"variant": "x"}, "method": "adapter"},
        {"method_config": {"unknown": 1}},
    ],
)
def test_invalid_configs_are_refused(bad: dict) -> None:
    with pytest.raises(InvalidArgument):
        TrainConfig(**bad).resolved()


def test_defaults_come_from_the_method() -> None:
    from server.patches import get_method

    for method in ("bitfit", "adapter", "full"):
        resolved = TrainConfig(method=method).resolved()
        defaults = get_method(method).defaults
        assert resolved.learning_rate == defaults.learning_rate
        assert resolved.batch_size == defaults.batch_size
        assert resolved.epochs == defaults.epochs
