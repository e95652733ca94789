"""Helpers for integration tests: a handle on a running server, toy data, job waiting, metrics scraping."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from client.api import TaskPatchClient
from client.errors import TaskPatchError, error_from_rpc
from client.types import JobEvent, PredictResult
from protos import taskpatch_pb2 as pb
from protos import taskpatch_pb2_grpc as pb_grpc
from server.app import TaskPatchServer, create_server
from server.settings import Settings
from tasks.types import Example

LABELS = ("neg", "pos")
_POSITIVE = ("great", "good", "excellent", "wonderful", "superb", "lovely", "brilliant", "fine")
_NEGATIVE = ("awful", "bad", "terrible", "poor", "dreadful", "boring", "horrible", "weak")
_NOUNS = ("movie", "film", "show", "play", "book", "song", "meal", "trip")

# Fixed inputs whose predictions the tests compare bit for bit.
PROBE_INPUTS: tuple[str, ...] = (
    "a great movie",
    "the film was awful",
    "superb acting and a lovely story",
    "boring",
    "I did not expect such a dreadful ending to such a good book",
    "fine",
    "the show was weak but the songs were brilliant",
    "terrible trip",
)


@dataclass
class ServerHandle:
    """A started server plus a client connected to it."""

    server: TaskPatchServer
    port: int
    store_dir: Path
    client: TaskPatchClient

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_port(self) -> int:
        return self.server.metrics_port

    def connect(self, token: str | None = None) -> TaskPatchClient:
        """Another client (caller closes it), e.g. with a bearer token."""
        return TaskPatchClient(self.addr, token=token)

    def stub(self) -> tuple[grpc.Channel, pb_grpc.TaskPatchStub]:
        """A raw stub, for requests the typed client refuses to build (caller closes the channel)."""
        channel = grpc.insecure_channel(self.addr)
        return channel, pb_grpc.TaskPatchStub(channel)


# ---- servers -----------------------------------------------------------------------------------------------------


def make_settings(store_dir: Path, **overrides: Any) -> Settings:
    """Settings for a test server: tiny backbone, free ports, short batching wait; ``overrides`` win.

    One torch thread: the tiny model's ops are far too small to gain from more, and on a busy 2-core CI box the
    intra-op threads wait on each other (we measured small-batch training ~10x slower with the default 2)."""
    values: dict[str, Any] = {
        "backbone": "tiny",
        "device": "cpu",
        "threads": 1,
        "port": 0,
        "metrics_port": 0,
        "store_dir": store_dir,
        "max_wait_ms": 2,
        "grace_s": 5,
        **overrides,
    }
    return Settings(**values)


class Servers:
    """Starts servers and stops every one still running at teardown."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.started: list[ServerHandle] = []
        self._torch_threads = torch.get_num_threads()  # Settings.threads sets it process-wide; restored at the end

    def start(self, store_dir: Path | None = None, **overrides: Any) -> ServerHandle:
        store = store_dir or self.base_dir / f"store{len(self.started)}"
        server, port = create_server(make_settings(store, **overrides))
        handle = ServerHandle(server, port, store, server_client(port))
        self.started.append(handle)
        return handle

    def stop(self, handle: ServerHandle) -> None:
        handle.client.close()
        handle.server.stop(grace_s=5)

    def stop_all(self) -> None:
        for handle in reversed(self.started):
            self.stop(handle)  # stop() is idempotent
        torch.set_num_threads(self._torch_threads)


def server_client(port: int) -> TaskPatchClient:
    return TaskPatchClient(f"127.0.0.1:{port}", timeout_s=60)


# ---- toy data ----------------------------------------------------------------------------------------------------


def toy_examples(n: int, offset: int = 0) -> list[Example]:
    """A separable two-class sentiment task: short sentences, alternating labels."""
    examples = []
    for i in range(offset, offset + n):
        positive = i % 2 == 0
        words = _POSITIVE if positive else _NEGATIVE
        text = f"the {_NOUNS[i % len(_NOUNS)]} was {words[(i // 2) % len(words)]} {i % 7}"
        examples.append(Example(text, None, "pos" if positive else "neg"))
    return examples


def toy_regression(n: int, offset: int = 0) -> list[Example]:
    """A regression task: the score grows with the number of positive words."""
    examples = []
    for i in range(offset, offset + n):
        k = i % 4
        text = " ".join(["the", _NOUNS[i % len(_NOUNS)], "was", *_POSITIVE[:k], *_NEGATIVE[: 3 - k]])
        examples.append(Example(text, None, float(k)))
    return examples


def train_toy(
    client: TaskPatchClient, name: str, *, n_train: int = 120, n_dev: int = 40, epochs: int = 1, **options: Any
) -> list[JobEvent]:
    """Train a toy classification task to the end; returns every event (the stream is read to its end)."""
    events = list(
        client.add_task(
            name,
            toy_examples(n_train),
            toy_examples(n_dev, offset=10_000),
            problem_type="classification",
            labels=LABELS,
            epochs=epochs,
            **options,
        )
    )
    assert events[-1].kind == "done", events[-1]
    return events


def start_blocker(client: TaskPatchClient, name: str, *, n_train: int = 600, **options: Any) -> str:
    """Queue a long training job (many small steps; it is meant to be cancelled) and wait until it RUNS.

    A time budget bounds it in case a cancel never arrives. Returns the job id."""
    options = {"epochs": 200, "batch_size": 4, "time_budget_s": 120.0, **options}
    events = list(
        client.add_task(
            name,
            toy_examples(n_train),
            toy_examples(20, offset=10_000),
            problem_type="classification",
            labels=LABELS,
            detach=True,
            **options,
        )
    )
    assert [e.kind for e in events] == ["queued"], events
    job_id = events[0].job_id
    wait_for_event(client, job_id, "started")
    return job_id


def submit_detached(client: TaskPatchClient, name: str, *, n_train: int = 60, **options: Any) -> str:
    """Queue a small toy job without following it; returns the job id."""
    events = list(
        client.add_task(
            name,
            toy_examples(n_train),
            toy_examples(20, offset=10_000),
            problem_type="classification",
            labels=LABELS,
            epochs=1,
            detach=True,
            **options,
        )
    )
    assert [e.kind for e in events] == ["queued"], events
    return events[0].job_id


def wait_for_event(client: TaskPatchClient, job_id: str, kind: str) -> JobEvent:
    """Follow the job's event stream until an event of ``kind`` (the stream is then closed, not the job)."""
    stream = client.watch_job(job_id)
    try:
        for event in stream:
            if event.kind == kind:
                return event
            assert not event.terminal, f"job {job_id} ended with {event} before a {kind!r} event"
    finally:
        stream.close()  # type: ignore[attr-defined]
    raise AssertionError(f"the event stream of job {job_id} ended without a {kind!r} event")


def finish(client: TaskPatchClient, job_id: str) -> JobEvent:
    """Follow the job to its terminal event."""
    events = list(client.watch_job(job_id))
    assert events and events[-1].terminal, events
    return events[-1]


def cancel_and_wait(client: TaskPatchClient, job_id: str) -> JobEvent:
    client.cancel_job(job_id)
    return finish(client, job_id)


# ---- predictions -------------------------------------------------------------------------------------------------


def probabilities(result: PredictResult) -> list[tuple[float, ...]]:
    """Every prediction's probabilities in label order: the floats compared bit for bit."""
    rows = []
    for prediction in result.predictions:
        assert prediction.probabilities is not None
        rows.append(tuple(prediction.probabilities[label] for label in result.labels))
    return rows


# ---- errors ------------------------------------------------------------------------------------------------------


def raw_call_status(call: Any) -> tuple[str, str]:
    """Run a raw-stub call (a callable returning a response or a response iterator, drained); return the status code
    name and the details exactly as the server sent them ("" when none: tests check that errors carry a message)."""
    try:
        response = call()
        if isinstance(response, Iterator):
            for _ in response:
                pass
    except grpc.RpcError as err:
        return err.code().name, err.details() or ""
    return "OK", ""


def raw_call_code(call: Any) -> str:
    """The status code name of a raw-stub call (see :func:`raw_call_status`)."""
    return raw_call_status(call)[0]


def raw_add_task(stub: pb_grpc.TaskPatchStub, requests: Iterable[pb.AddTaskRequest]) -> TaskPatchError | None:
    """Send an AddTask stream as given; return the error (None when the stream ended OK)."""
    try:
        for _ in stub.AddTask(iter(list(requests)), timeout=30):
            pass
    except grpc.RpcError as err:
        return error_from_rpc(err)
    return None


def toy_spec(name: str, **fields: Any) -> pb.TaskSpec:
    options = {
        "problem_type": pb.CLASSIFICATION,
        "labels": list(LABELS),
        "training": pb.TrainingOptions(epochs=1),
        **fields,
    }
    return pb.TaskSpec(name=name, **options)


def toy_chunk(split: int, examples: Sequence[Example]) -> pb.AddTaskRequest:
    messages = []
    for e in examples:
        if isinstance(e.label, str):
            messages.append(pb.Example(text=e.text, label=e.label))
        else:
            messages.append(pb.Example(text=e.text, value=float(e.label)))
    return pb.AddTaskRequest(chunk=pb.ExampleChunk(split=split, examples=messages))


# ---- metrics -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSamples:
    """Samples of one scrape, looked up by sample name and a subset of labels."""

    samples: tuple[tuple[str, dict[str, str], float], ...]

    def find(self, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
        return [
            (sample_labels, value)
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The one sample matching; 0.0 when there is none (a labelled counter never incremented)."""
        found = self.find(name, **labels)
        assert len(found) <= 1, f"{name}{labels} matches several samples: {found}"
        return found[0][1] if found else 0.0


def parse_metrics(text: str) -> MetricSamples:
    samples = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.append((sample.name, dict(sample.labels), float(sample.value)))
    return MetricSamples(tuple(samples))


def scrape(metrics_port: int) -> MetricSamples:
    """GET /metrics over HTTP, as Prometheus would."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        return parse_metrics(response.read().decode())


def registry_metrics(server: TaskPatchServer) -> MetricSamples:
    """The server's registry read in-process (still readable after the server stopped)."""
    return parse_metrics(generate_latest(server.metrics.registry).decode())


def internal_or_unknown(samples: MetricSamples) -> list[tuple[dict[str, str], float]]:
    """RPC counter samples with code INTERNAL or UNKNOWN: user-caused errors must never be counted there."""
    return [
        (labels, value)
        for labels, value in samples.find("taskpatch_rpc_requests_total")
        if labels.get("code") in ("INTERNAL", "UNKNOWN") and value > 0
    ]


def client_error(call: Any) -> TaskPatchError | None:
    """Run a client call (a streaming one is read to its end); return its error, None when it succeeded."""
    try:
        result = call()
        if isinstance(result, Iterator):
            for _ in result:
                pass
    except TaskPatchError as err:
        return err
    return None


def client_code(call: Any) -> str:
    """The status code name of a client call: ``"OK"`` or the error's code."""
    error = client_error(call)
    return "OK" if error is None else error.code


def wait_until(predicate: Any, timeout_s: float = 30.0, interval_s: float = 0.02) -> None:
    """Poll ``predicate()`` until it is true; fail after ``timeout_s`` (a deadline, not a timed assertion)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s: {predicate}")
        time.sleep(interval_s)
