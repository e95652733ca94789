"""Train one patch on the frozen backbone.

The trainer creates fresh patch tensors, makes them the only trainable tensors, and routes them into every forward
pass through the routing context. It never writes to the backbone and never publishes anything itself: it returns a
``TrainResult`` and the scheduler decides what to do with it.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from server.errors import Cancelled, InvalidArgument
from server.model import Features, Patch, PatchedModel
from server.patches.base import MethodConfig
from server.patches.heads import HEAD_BIAS, HeadSpec, init_head
from server.patches.registry import get_method
from server.training.batching import bucketed_batches, sorted_batches
from server.training.config import TrainConfig
from tasks.metrics import compute_metrics
from tasks.sampling import subsample
from tasks.types import Example, TaskData

EVAL_BATCH_SIZE = 64
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class TrainEvent:
    """Progress of one training run; ``kind`` is started, progress or evaluation."""

    kind: str
    epoch: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float = float("nan")
    examples_per_s: float = 0.0
    eta_s: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainResult:
    patch: Patch
    metrics: dict[str, float]  # dev metrics of the returned patch
    history: list[dict[str, Any]]  # every evaluation: step, epoch, metrics
    steps: int
    examples_seen: int
    train_examples: int
    wall_time_s: float
    stop_reason: str  # completed | time_budget | early_stopping
    trainable_parameters: int
    config: TrainConfig


@dataclass(frozen=True)
class _Encoded:
    features: list[Features]
    targets: torch.Tensor  # [n] long (classification) or float (regression)


def encode_examples(model: PatchedModel, data: TaskData, examples: Sequence[Example], max_length: int) -> _Encoded:
    features = model.tokenize([e.text for e in examples], [e.text_pair for e in examples], max_length)
    if data.problem_type == "classification":
        index = {name: i for i, name in enumerate(data.labels)}
        try:
            targets = torch.tensor([index[str(e.label)] for e in examples], dtype=torch.long)
        except KeyError as exc:
            raise InvalidArgument(
                f"label {exc.args[0]!r} is not one of the task's labels {list(data.labels)}"
            ) from None
    else:
        targets = torch.tensor([float(e.label) for e in examples], dtype=torch.float32)
    return _Encoded(features, targets)


def training_loss(logits: torch.Tensor, targets: torch.Tensor, problem_type: str) -> torch.Tensor:
    if problem_type == "classification":
        return F.cross_entropy(logits.float(), targets)
    return F.mse_loss(logits.float().squeeze(-1), targets)


def predict(model: PatchedModel, patch: Patch, features: Sequence[Features]) -> torch.Tensor:
    """Raw outputs for ``features`` in their original order: [n, outputs] (fp32, CPU)."""
    outputs: list[torch.Tensor | None] = [None] * len(features)
    with torch.no_grad():
        for indices in sorted_batches([len(f) for f in features], EVAL_BATCH_SIZE):
            batch = model.collate([features[i] for i in indices])
            logits = model.logits(batch, patch).float().cpu()
            for row, i in enumerate(indices):
                outputs[i] = logits[row]
    return torch.stack([o for o in outputs if o is not None]) if outputs else torch.empty(0)


def evaluate(model: PatchedModel, patch: Patch, data: TaskData, encoded: _Encoded) -> dict[str, float]:
    outputs = predict(model, patch, encoded.features)
    classification = data.problem_type == "classification"
    predictions = outputs.argmax(-1).numpy() if classification else outputs.squeeze(-1).numpy()
    return compute_metrics(data.metrics, predictions, encoded.targets.numpy())


def _linear_schedule(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


class TrainingState:
    """A fresh patch as trainable parameters, its optimizer and LR schedule, and one training step.

    Shared by :func:`train` and ``bench/training.py``, so the benchmark times exactly the trainer's step.
    """

    def __init__(
        self,
        model: PatchedModel,
        patch: Patch,
        config: TrainConfig,
        total_steps: int,
    ) -> None:
        device = model.backbone.device
        self.model = model
        self.config = config
        self.params = {name: torch.nn.Parameter(t.to(device, torch.float32)) for name, t in patch.tensors.items()}
        self.patch = Patch(patch.method, patch.config, patch.head, dict(self.params))
        self.trainable_parameters = sum(p.numel() for p in self.params.values())
        method_params = [p for n, p in self.params.items() if not n.startswith("head.")]
        head_params = [p for n, p in self.params.items() if n.startswith("head.")]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": method_params, "lr": config.learning_rate},
                {"params": head_params, "lr": config.head_learning_rate},
            ],
            weight_decay=config.weight_decay or 0.0,
        )
        warmup_steps = int(total_steps * (config.warmup_ratio or 0.0))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _linear_schedule(warmup_steps, total_steps))

    def step(self, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> float:
        """Forward, loss, backward, clip, optimizer and schedule step; returns the loss (syncs the device)."""
        logits = self.model.logits(batch, self.patch, head_dropout=self.config.head_dropout)
        loss = training_loss(logits, targets, self.patch.head.problem_type)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return float(loss.detach())

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().to("cpu", copy=True) for n, p in self.params.items()}


def new_patch(
    model: PatchedModel, method_name: str, method_config: MethodConfig, head: HeadSpec, generator: torch.Generator
) -> Patch:
    """Freshly initialised patch tensors (method + head) for ``model``'s backbone."""
    backbone = model.backbone
    method = get_method(method_name)
    tensors = method.init_tensors(backbone.model, backbone.pooling, method_config, generator)
    tensors.update(init_head(backbone.hidden_size, head, generator))
    return Patch(method_name, method_config, head, tensors)


def train(
    model: PatchedModel,
    data: TaskData,
    config: TrainConfig,
    *,
    on_event: Callable[[TrainEvent], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    before_step: Callable[[], None] | None = None,
) -> TrainResult:
    """Train a patch for ``data``. ``should_stop`` returning True raises Cancelled; ``before_step`` lets serving
    take priority (it may block)."""
    config = config.resolved()
    assert config.epochs is not None and config.batch_size is not None  # resolved() fills them
    started = time.monotonic()
    emit = on_event or (lambda event: None)
    method = get_method(config.method)
    method_config = method.parse_config(config.method_config)
    backbone = model.backbone
    if not data.dev:
        raise InvalidArgument("the task has no dev examples: they are needed for evaluation and keep-best")

    train_examples = subsample(data.train, config.data_fraction, config.seed)
    train_set = encode_examples(model, data, train_examples, config.max_seq_length)
    dev_set = encode_examples(model, data, data.dev, config.max_seq_length)

    # Deterministic for a seed on CPU: init, dropout and batch order all derive from it.
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    head = HeadSpec(data.problem_type, data.labels, backbone.pooling)
    initial = new_patch(model, config.method, method_config, head, generator)
    if data.problem_type == "regression":
        initial.tensors[HEAD_BIAS].fill_(float(train_set.targets.mean()))  # start at the mean: a sane first loss
    steps_per_epoch = math.ceil(len(train_set.features) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    state = TrainingState(model, initial, config, total_steps)
    patch = state.patch
    eval_points = {
        round(steps_per_epoch * k / config.evals_per_epoch) for k in range(1, config.evals_per_epoch + 1)
    }  # steps within an epoch after which to evaluate

    emit(TrainEvent("started", total_steps=total_steps))
    history: list[dict[str, Any]] = []
    best_metrics: dict[str, float] = {}
    best_tensors: dict[str, torch.Tensor] | None = None
    best_score = -math.inf
    evals_without_gain = 0
    step = 0
    examples_seen = 0
    stop_reason = "completed"
    primary = data.metrics[0]
    budget = config.time_budget_s
    lengths = [len(f) for f in train_set.features]
    loss_sum, loss_count, last_progress = 0.0, 0, time.monotonic()

    def run_evaluation(epoch: int) -> bool:
        """Evaluate, keep the best; True when early stopping says stop."""
        nonlocal best_score, best_tensors, best_metrics, evals_without_gain
        metrics = evaluate(model, patch, data, dev_set)
        history.append({"step": step, "epoch": epoch, "metrics": metrics})
        emit(TrainEvent("evaluation", epoch=epoch, step=step, total_steps=total_steps, metrics=metrics))
        score = metrics[primary]
        if score > best_score or best_tensors is None:
            best_score, best_metrics, evals_without_gain = score, metrics, 0
            best_tensors = state.snapshot()
        else:
            evals_without_gain += 1
        return 0 < config.early_stopping_patience <= evals_without_gain

    stop = False
    for epoch in range(1, config.epochs + 1):
        for position, indices in enumerate(bucketed_batches(lengths, config.batch_size, rng), start=1):
            if should_stop is not None and should_stop():
                raise Cancelled("training cancelled")
            if before_step is not None:
                before_step()
            batch = model.collate([train_set.features[i] for i in indices])
            targets = train_set.targets[indices].to(backbone.device)
            loss_sum += state.step(batch, targets)
            step += 1
            examples_seen += len(indices)
            loss_count += 1
            elapsed = time.monotonic() - started
            now = time.monotonic()
            if now - last_progress >= PROGRESS_EVERY_S or step == total_steps:
                rate = examples_seen / max(elapsed, 1e-9)
                eta = (total_steps - step) * config.batch_size / max(rate, 1e-9)
                if budget:
                    eta = min(eta, max(0.0, budget - elapsed))
                emit(TrainEvent("progress", epoch, step, total_steps, loss_sum / loss_count, rate, eta))
                loss_sum, loss_count, last_progress = 0.0, 0, now
            over_budget = bool(budget) and elapsed >= budget
            if (position in eval_points or over_budget) and run_evaluation(epoch):
                stop, stop_reason = True, "early_stopping"
                break
            if over_budget:
                stop, stop_reason = True, "time_budget"
                break
        if stop:
            break

    if best_tensors is None:  # no evaluation happened (cannot with a dev set, but keep the invariant explicit)
        run_evaluation(config.epochs)
    if config.keep_best and best_tensors is not None:
        final_tensors, final_metrics = best_tensors, best_metrics
    else:
        final_tensors = state.snapshot()
        final_metrics = history[-1]["metrics"]
    return TrainResult(
        patch=Patch(config.method, method_config, head, final_tensors),
        metrics=final_metrics,
        history=history,
        steps=step,
        examples_seen=examples_seen,
        train_examples=len(train_set.features),
        wall_time_s=time.monotonic() - started,
        stop_reason=stop_reason,
        trainable_parameters=state.trainable_parameters,
        config=config,
    )
