"""Hostile and malformed input, generated with hypothesis, against one long-lived server process.

Every RPC gets generated requests: typed ones (path-like, NUL, over-long and look-alike task names; empty, blank,
over-long and odd unicode texts; labels outside the set; NaN/inf values and options; streams without spec or end
marker, with the spec twice, with empty items; oversized messages, over the server's small --max-message-bytes) and
raw bytes that do not parse as the request type at all. Each typed request has an oracle that says which status
code it must get; every answer must carry a message when it is not OK. The last test checks the totals: at least
10,000 requests, the server alive and SERVING, no INTERNAL/UNKNOWN in ``taskpatch_rpc_requests_total``, nothing
written outside the store (the server's working directory stays empty, the store holds only its own names), and
the server's RSS grew less than 150 MB.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from client.api import TaskPatchClient
from protos import taskpatch_pb2 as pb
from protos import taskpatch_pb2_grpc as pb_grpc
from server.names import TASK_NAME_PATTERN
from server.store import PatchStore, read_patch_file, write_patch_file
from tasks.metrics import METRICS
from tests.integration.helpers import (
    LABELS,
    client_code,
    internal_or_unknown,
    raw_call_status,
    toy_examples,
    toy_regression,
)
from tests.reliability.patches import random_meta_and_tensors, tiny_model
from tests.reliability.procs import Launcher, ServerProcess, server_argv

pytestmark = pytest.mark.integration

MAX_MESSAGE_BYTES = 64 * 1024
MAX_IMPORT_BYTES = 16 * MAX_MESSAGE_BYTES  # the server allows 16 messages' worth of patch file
MAX_INPUTS = 8
MAX_TEXT_CHARS = 256
MAX_UPLOAD_EXAMPLES = 64
MAX_UPLOAD_BYTES = 6000
RSS_GROWTH_LIMIT = 150 * 1024 * 1024
MIN_REQUESTS = 10_000
TIMEOUT_S = 20
SERVICE = "/taskpatch.v1.TaskPatch/"

EXISTING = ("base", "score")  # trained in the fixture; generated names never delete or change them
IMPORT_NAMES = ("imp-0", "imp-1", "imp-2")  # where valid patch files may be imported (bounded store growth)
STORED_IMPORT_NAME = "imp-src"  # the task name recorded inside the valid patch file
LOOKALIKES = [
    "../x",
    "..",
    ".",
    "./base",
    "base/../base",
    "/etc/passwd",
    "..\\x",
    "C:\\x",
    "a\x00b",
    "\x00",
    "base\n",
    " base",
    "base ",
    "BASE",
    "Base",
    "b\u0430se",  # Cyrillic a
    "ｂａｓｅ",  # fullwidth
    "\u200bbase",  # zero-width space
    "base\u0301",  # combining accent
    "-base",
    "_base",
    "x" * 63,
    "x" * 64,
    "x" * 10_000,
    "",
    "ba se",
    "base.safetensors",
    "%2e%2e%2fx",
    "~root",
    "$HOME",
    "CON",
    "nul",
]

# ---- request accounting ------------------------------------------------------------------------------------------

SENT: Counter[str] = Counter()  # requests per RPC
OUTCOMES: Counter[tuple[str, str]] = Counter()  # (rpc, code)
FRAMEWORK_INTERNAL: Counter[str] = Counter()  # INTERNAL "Exception deserializing request!" from grpc itself


def send(rpc: str, call: Callable[[], Any]) -> str:
    """Make one request, count it, and check the answer carries a message; return the status code name."""
    code, message = raw_call_status(call)
    SENT[rpc] += 1
    OUTCOMES[(rpc, code)] += 1
    assert code not in ("UNKNOWN", "UNAVAILABLE"), (rpc, code, message)
    if code != "OK":
        assert message.strip(), f"{rpc} answered {code} without a message"
    if code == "INTERNAL":
        # Only grpc's own refusal of unparseable bytes (see test_unparseable_request_is_invalid_argument).
        assert message == "Exception deserializing request!", (rpc, message)
        FRAMEWORK_INTERNAL[rpc] += 1
    return code


# ---- the server --------------------------------------------------------------------------------------------------


class Fuzz:
    """The long-lived server and what the tests need about it (a plain class: hypothesis prints fixtures in its
    reports, and the patch bytes would drown them)."""

    def __init__(
        self,
        proc: ServerProcess,
        channel: grpc.Channel,
        workdir: Path,
        valid_patch: bytes,
        foreign_patch: bytes,
        job_ids: frozenset[str],
    ) -> None:
        self.proc = proc
        self.channel = channel
        self.stub = pb_grpc.TaskPatchStub(channel)
        self.workdir = workdir
        self.store = workdir / "store"
        self.valid_patch = valid_patch  # a good patch file whose stored task name is STORED_IMPORT_NAME
        self.foreign_patch = foreign_patch  # a good patch file for another backbone
        self.job_ids = job_ids
        self.rss_start = proc.rss_bytes()

    def __repr__(self) -> str:
        return f"Fuzz(server pid {self.proc.pid} on {self.proc.addr})"


def _patch_bytes(path: Path, name: str, backbone: str) -> bytes:
    tensors, meta = random_meta_and_tensors(name, 3, backbone=backbone)
    write_patch_file(path, tensors, meta)
    return path.read_bytes()


@pytest.fixture(scope="module")
def fuzz(procs: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzz]:
    workdir = tmp_path_factory.mktemp("fuzz")
    files = tmp_path_factory.mktemp("fuzz-files")
    store = workdir / "store"
    argv = server_argv(
        store,
        "--max-message-bytes",
        str(MAX_MESSAGE_BYTES),
        "--max-inputs-per-request",
        str(MAX_INPUTS),
        "--max-text-chars",
        str(MAX_TEXT_CHARS),
        "--max-upload-examples",
        str(MAX_UPLOAD_EXAMPLES),
        "--max-upload-bytes",
        str(MAX_UPLOAD_BYTES),
        "--job-queue-size",
        "2",
    )
    proc = procs.start(argv, cwd=workdir / "cwd")
    with TaskPatchClient(proc.addr, timeout_s=60) as client:
        base = list(
            client.add_task(
                "base", toy_examples(24), toy_examples(8, offset=500), problem_type="classification", labels=LABELS
            )
        )
        score = list(
            client.add_task("score", toy_regression(24), toy_regression(8, offset=500), problem_type="regression")
        )
        assert base[-1].kind == score[-1].kind == "done"
        for _ in range(50):  # warm-up: lazy allocations are not growth
            client.predict("base", ["warm up the serving path"] * MAX_INPUTS)
    channel = grpc.insecure_channel(proc.addr)
    fixture = Fuzz(
        proc=proc,
        channel=channel,
        workdir=workdir,
        valid_patch=_patch_bytes(files / "valid.safetensors", STORED_IMPORT_NAME, "tiny"),
        foreign_patch=_patch_bytes(files / "foreign.safetensors", "foreign", "tiny:1"),
        job_ids=frozenset({base[-1].job_id, score[-1].job_id}),
    )
    try:
        yield fixture
    finally:
        channel.close()
        proc.kill()


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # nothing written into the repository
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


# ---- strategies --------------------------------------------------------------------------------------------------

valid_names = st.from_regex(TASK_NAME_PATTERN, fullmatch=True)
names = st.one_of(
    st.sampled_from(LOOKALIKES),
    valid_names,
    st.sampled_from(EXISTING),
    st.text(max_size=80),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
texts = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["", " ", "\t\n", "\u3000", "\x00", "\ufeff", "a" * MAX_TEXT_CHARS, "b" * (MAX_TEXT_CHARS + 1)]),
    st.text(min_size=MAX_TEXT_CHARS + 1, max_size=MAX_TEXT_CHARS + 200),
)
bad_floats = st.sampled_from([math.nan, math.inf, -math.inf])


def name_ok(name: str) -> bool:
    return TASK_NAME_PATTERN.fullmatch(name) is not None


# ---- typed unary RPCs --------------------------------------------------------------------------------------------


@st.composite
def predict_requests(draw: st.DrawFn) -> pb.PredictRequest:
    inputs = []
    for _ in range(draw(st.integers(0, MAX_INPUTS + 3))):
        item = pb.Input(text=draw(texts))
        if draw(st.booleans()):
            item.text_pair = draw(texts)
        inputs.append(item)
    return pb.PredictRequest(task=draw(names), inputs=inputs)


def predict_oracle(request: pb.PredictRequest) -> str:
    inputs = request.inputs
    if not inputs or len(inputs) > MAX_INPUTS:
        return "INVALID_ARGUMENT"
    for item in inputs:
        if not item.text.strip() or len(item.text) > MAX_TEXT_CHARS or len(item.text_pair) > MAX_TEXT_CHARS:
            return "INVALID_ARGUMENT"
    if not name_ok(request.task):
        return "INVALID_ARGUMENT"
    return "OK" if request.task in EXISTING else "NOT_FOUND"


@fuzz_settings(2000)
@given(request=predict_requests())
def test_fuzz_predict(fuzz: Fuzz, request: pb.PredictRequest) -> None:
    assume(request.task not in (*IMPORT_NAMES, STORED_IMPORT_NAME))
    code = send("Predict", lambda: fuzz.stub.Predict(request, timeout=TIMEOUT_S))
    assert code == predict_oracle(request), (request.task, [(i.text[:30], len(i.text)) for i in request.inputs])


versions = st.one_of(st.integers(-3, 4), st.integers(-(2**31), 2**31 - 1))


@fuzz_settings(2400)
@given(
    rpc=st.sampled_from(["GetTask", "DeleteTask", "RollbackTask", "PinTask", "ExportTask"]),
    name=names,
    version=versions,
    flag=st.booleans(),
)
def test_fuzz_registry_rpcs(fuzz: Fuzz, rpc: str, name: str, version: int, flag: bool) -> None:
    assume(name not in (*IMPORT_NAMES, STORED_IMPORT_NAME))
    if rpc == "DeleteTask":
        assume(name not in EXISTING)
    exists = name in EXISTING
    stub = fuzz.stub
    if rpc == "GetTask":
        call: Callable[[], Any] = lambda: stub.GetTask(pb.GetTaskRequest(name=name), timeout=TIMEOUT_S)  # noqa: E731
        expected = "OK" if exists else "NOT_FOUND" if name_ok(name) else "INVALID_ARGUMENT"
    elif rpc == "DeleteTask":
        call = lambda: stub.DeleteTask(pb.DeleteTaskRequest(name=name), timeout=TIMEOUT_S)  # noqa: E731
        expected = "NOT_FOUND" if name_ok(name) else "INVALID_ARGUMENT"
    elif rpc == "RollbackTask":
        call = lambda: stub.RollbackTask(pb.RollbackTaskRequest(name=name, version=version), timeout=TIMEOUT_S)  # noqa: E731
        if version < 0 or not name_ok(name):
            expected = "INVALID_ARGUMENT"
        elif not exists:
            expected = "NOT_FOUND"
        else:  # each existing task has exactly v1
            expected = {0: "FAILED_PRECONDITION", 1: "OK"}.get(version, "NOT_FOUND")
    elif rpc == "PinTask":
        call = lambda: stub.PinTask(pb.PinTaskRequest(name=name, pinned=flag), timeout=TIMEOUT_S)  # noqa: E731
        expected = "OK" if exists else "NOT_FOUND" if name_ok(name) else "INVALID_ARGUMENT"
    else:
        call = lambda: stub.ExportTask(pb.ExportTaskRequest(name=name, version=version), timeout=TIMEOUT_S)  # noqa: E731
        if version < 0 or not name_ok(name):
            expected = "INVALID_ARGUMENT"
        elif not exists:
            expected = "NOT_FOUND"
        else:
            expected = "OK" if version in (0, 1) else "NOT_FOUND"
    assert send(rpc, call) == expected, (rpc, name[:80], version, flag)


@fuzz_settings(1000)
@given(
    rpc=st.sampled_from(["GetJob", "WatchJob", "CancelJob", "ListJobs", "ListTasks"]),
    # (ids over ~8 KB: see test_error_messages_do_not_echo_unbounded_input)
    job_id=st.one_of(names, st.text(max_size=30)).filter(lambda j: len(j) < 2000),
)
def test_fuzz_job_and_list_rpcs(fuzz: Fuzz, rpc: str, job_id: str) -> None:
    assume(job_id not in fuzz.job_ids)
    stub = fuzz.stub
    calls: dict[str, Callable[[], Any]] = {
        "GetJob": lambda: stub.GetJob(pb.GetJobRequest(job_id=job_id), timeout=TIMEOUT_S),
        "WatchJob": lambda: stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=TIMEOUT_S),
        "CancelJob": lambda: stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=TIMEOUT_S),
        "ListJobs": lambda: stub.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT_S),
        "ListTasks": lambda: stub.ListTasks(pb.ListTasksRequest(), timeout=TIMEOUT_S),
    }
    expected = "OK" if rpc.startswith("List") else "NOT_FOUND"
    assert send(rpc, calls[rpc]) == expected


# ---- AddTask: a valid upload, then one mutation with its expected status -----------------------------------------


def _examples(split: int, items: list[tuple[str, str | float]]) -> pb.AddTaskRequest:
    chunk = pb.ExampleChunk(split=split)
    for text, target in items:
        example = chunk.examples.add(text=text)
        if isinstance(target, str):
            example.label = target
        else:
            example.value = target
    return pb.AddTaskRequest(chunk=chunk)


def _valid_upload(regression: bool) -> tuple[pb.TaskSpec, list[pb.AddTaskRequest]]:
    if regression:
        spec = pb.TaskSpec(name="score", problem_type=pb.REGRESSION, training=pb.TrainingOptions(epochs=1))
        train = [(e.text, float(e.label)) for e in toy_regression(8)]
        dev = [(e.text, float(e.label)) for e in toy_regression(4, offset=50)]
    else:
        spec = pb.TaskSpec(
            name="base", problem_type=pb.CLASSIFICATION, labels=list(LABELS), training=pb.TrainingOptions(epochs=1)
        )
        train = [(e.text, str(e.label)) for e in toy_examples(8)]
        dev = [(e.text, str(e.label)) for e in toy_examples(4, offset=50)]
    return spec, [_examples(pb.TRAIN, train), _examples(pb.DEV, dev)]  # type: ignore[arg-type]


END = pb.AddTaskRequest(end=pb.EndOfUpload())


def replace_all(field: Any, values: list[str]) -> None:
    """Replace a repeated protobuf field's values (slice assignment is not supported on every runtime)."""
    del field[:]
    field.extend(values)


MUTATIONS = (
    "none",
    "empty-stream",
    "chunk-first",
    "end-first",
    "spec-only",
    "no-end",
    "spec-twice",
    "empty-item",
    "bad-name",
    "problem-type",
    "label-outside-set",
    "bad-regression-value",
    "value-for-classification",
    "label-for-regression",
    "split-unspecified",
    "blank-text",
    "long-text",
    "long-pair",
    "too-many-examples",
    "too-many-bytes",
    "bad-option-float",
    "bad-option-range",
    "bad-method",
    "bad-method-config",
    "bad-labels",
    "bad-metric",
    "no-dev",
    "one-class",
    "data-after-end",
)


@st.composite
def add_task_streams(draw: st.DrawFn) -> tuple[str, list[pb.AddTaskRequest], str]:
    """(mutation, the request stream, the status it must get)."""
    mutation = draw(st.sampled_from(MUTATIONS))
    regression = mutation in ("bad-regression-value", "label-for-regression") or (
        mutation not in ("label-outside-set", "value-for-classification", "bad-labels", "one-class")
        and draw(st.booleans())
    )
    spec, chunks = _valid_upload(regression)
    label = lambda: draw(st.sampled_from(LABELS)) if not regression else 1.0  # noqa: E731
    text = draw(st.text(min_size=1, max_size=20).filter(lambda t: t.strip()))
    expected = "INVALID_ARGUMENT"
    head: list[pb.AddTaskRequest] | None = None  # the spec message, built last: it copies the spec
    tail: list[pb.AddTaskRequest] = [END]
    if mutation == "none":
        expected = "ALREADY_EXISTS"  # valid, but the task exists and replace is not set: nothing is trained
    elif mutation == "empty-stream":
        return mutation, [], expected
    elif mutation == "chunk-first":
        head = []
        chunks = [chunks[0], pb.AddTaskRequest(spec=spec), *chunks[1:]]
    elif mutation == "end-first":
        head = [END]
    elif mutation == "spec-only":
        chunks, tail = [], []
    elif mutation == "no-end":
        tail = []
    elif mutation == "spec-twice":
        chunks.insert(draw(st.integers(0, len(chunks))), pb.AddTaskRequest(spec=spec))
    elif mutation == "empty-item":
        chunks.insert(draw(st.integers(0, len(chunks))), pb.AddTaskRequest())
    elif mutation == "bad-name":
        spec.name = draw(st.one_of(st.sampled_from(LOOKALIKES), st.text(max_size=40)).filter(lambda n: not name_ok(n)))
    elif mutation == "problem-type":
        spec.problem_type = draw(st.sampled_from([0, 3, 99, -1]))
    elif mutation == "label-outside-set":
        outside = draw(st.text(max_size=12).filter(lambda t: t not in LABELS))
        chunks.insert(1, _examples(draw(st.sampled_from([pb.TRAIN, pb.DEV])), [(text, outside)]))
    elif mutation == "bad-regression-value":
        chunks.insert(1, _examples(draw(st.sampled_from([pb.TRAIN, pb.DEV])), [(text, draw(bad_floats))]))
    elif mutation == "value-for-classification":
        chunks.insert(1, _examples(pb.TRAIN, [(text, draw(st.floats(allow_nan=True)))]))
    elif mutation == "label-for-regression":
        chunks.insert(1, _examples(pb.TRAIN, [(text, draw(st.text(max_size=8)))]))
    elif mutation == "split-unspecified":
        chunks.insert(1, _examples(draw(st.sampled_from([0, 3, 77])), [(text, label())]))
    elif mutation == "blank-text":
        chunks.insert(1, _examples(pb.TRAIN, [(draw(st.sampled_from(["", " ", "\n\t", "\u3000"])), label())]))
    elif mutation == "long-text":
        chunks.insert(1, _examples(pb.DEV, [("y" * draw(st.integers(MAX_TEXT_CHARS + 1, 2000)), label())]))
    elif mutation == "long-pair":
        request = _examples(pb.TRAIN, [(text, label())])
        request.chunk.examples[0].text_pair = "z" * (MAX_TEXT_CHARS + draw(st.integers(1, 500)))
        chunks.insert(1, request)
    elif mutation == "too-many-examples":
        n = MAX_UPLOAD_EXAMPLES + draw(st.integers(1, 20))
        chunks.insert(1, _examples(pb.TRAIN, [(f"w{i}", label()) for i in range(n)]))
        expected = "RESOURCE_EXHAUSTED"
    elif mutation == "too-many-bytes":
        n = MAX_UPLOAD_BYTES // MAX_TEXT_CHARS + draw(st.integers(1, 5))
        chunks.insert(1, _examples(pb.TRAIN, [("v" * MAX_TEXT_CHARS, label()) for _ in range(n)]))
        expected = "RESOURCE_EXHAUSTED"
    elif mutation == "bad-option-float":
        option = draw(
            st.sampled_from(
                [
                    "learning_rate",
                    "head_learning_rate",
                    "data_fraction",
                    "time_budget_s",
                    "warmup_ratio",
                    "weight_decay",
                ]
            )
        )
        setattr(spec.training, option, draw(bad_floats))
    elif mutation == "bad-option-range":
        option, value = draw(
            st.sampled_from(
                [
                    ("epochs", 0),
                    ("epochs", -5),
                    ("epochs", 2**31 - 1),
                    ("batch_size", 0),
                    ("batch_size", -1),
                    ("learning_rate", -1.0),
                    ("learning_rate", 0.0),
                    ("data_fraction", 0.0),
                    ("data_fraction", 1.5),
                    ("time_budget_s", -1.0),
                    ("warmup_ratio", 1.0),
                    ("seed", -1),
                    ("max_seq_length", 0),
                    ("early_stopping_patience", -2),
                    ("evals_per_epoch", 0),
                    ("weight_decay", -0.5),
                ]
            )
        )
        setattr(spec.training, option, value)
    elif mutation == "bad-method":
        spec.method = draw(st.text(min_size=1, max_size=20).filter(lambda m: m not in ("bitfit", "adapter", "full")))
    elif mutation == "bad-method-config":
        spec.method_config_json = draw(
            st.sampled_from(["{", "[]", "1", '"x"', "null", '{"no_such_option": 1}', "NaN"])
        )
    elif mutation == "bad-labels":
        replace_all(spec.labels, draw(st.sampled_from([["neg"], ["neg", "neg"], ["neg", ""], ["neg", " "], []])))
    elif mutation == "bad-metric":
        replace_all(spec.metrics, [draw(st.text(max_size=12).filter(lambda m: m not in METRICS))])
    elif mutation == "no-dev":
        chunks = chunks[:1]
    elif mutation == "one-class":
        chunks[0] = _examples(pb.TRAIN, [(f"t{i}", "pos") for i in range(6)])
    elif mutation == "data-after-end":
        tail = [END, *chunks]  # the server stops reading at the end marker: the upload is the valid one
        expected = "ALREADY_EXISTS"
    if head is None:
        head = [pb.AddTaskRequest(spec=spec)]
    return mutation, [*head, *chunks, *tail], expected


@fuzz_settings(2200)
@given(case=add_task_streams())
def test_fuzz_add_task_streams(fuzz: Fuzz, case: tuple[str, list[pb.AddTaskRequest], str]) -> None:
    mutation, requests, expected = case
    code = send("AddTask", lambda: fuzz.stub.AddTask(iter(requests), timeout=TIMEOUT_S))
    assert code == expected, (mutation, code)


@pytest.mark.parametrize("after", ["nothing", "spec", "spec-and-chunk"])
def test_add_task_stream_that_stalls_times_out_and_queues_nothing(fuzz: Fuzz, after: str) -> None:
    """A client that opens the upload and never finishes it: its deadline ends the call; nothing is queued."""
    spec, chunks = _valid_upload(regression=False)
    spec.name, spec.replace = "stalled", True
    first = {
        "nothing": [],
        "spec": [pb.AddTaskRequest(spec=spec)],
        "spec-and-chunk": [pb.AddTaskRequest(spec=spec), chunks[0]],
    }

    def requests() -> Iterator[pb.AddTaskRequest]:
        yield from first[after]
        time.sleep(1.0)  # longer than the deadline: grpc cancels the call meanwhile

    assert send("AddTask", lambda: fuzz.stub.AddTask(requests(), timeout=0.3)) == "DEADLINE_EXCEEDED"
    assert all(job.task != "stalled" for job in fuzz.stub.ListJobs(pb.ListJobsRequest(), timeout=TIMEOUT_S).jobs)


# ---- ImportTask: names, then bytes (invalid UTF-8 is fine: it is a bytes field) ---------------------------------


@st.composite
def import_streams(draw: st.DrawFn, valid: bytes, foreign: bytes) -> tuple[str, list[pb.ImportTaskRequest], set[str]]:
    kind = draw(
        st.sampled_from(
            [
                "garbage",
                "garbage",
                "valid",
                "truncated",
                "flipped-data",
                "flipped-header",
                "foreign",
                "empty",
                "no-name",
                "name-twice",
                "bad-name",
                "too-large",
                "empty-stream",
            ]
        )
    )
    name = draw(st.sampled_from([*IMPORT_NAMES, ""]))
    data = draw(st.binary(min_size=1, max_size=3000))
    expected = {"DATA_LOSS"}
    if kind == "valid":
        data, expected = valid, {"OK"}
    elif kind == "truncated":
        data = valid[: draw(st.integers(1, len(valid) - 1))]
    elif kind == "flipped-data":
        header_len = int.from_bytes(valid[:8], "little")
        position = draw(st.integers(8 + header_len, len(valid) - 1))
        data = valid[:position] + bytes([valid[position] ^ draw(st.integers(1, 255))]) + valid[position + 1 :]
    elif kind == "flipped-header":
        header_len = int.from_bytes(valid[:8], "little")
        position = draw(st.integers(0, 8 + header_len - 1))
        data = valid[:position] + bytes([valid[position] ^ draw(st.integers(1, 255))]) + valid[position + 1 :]
        # a flip in a free-text part of the header (time, training record) leaves a valid patch; a name is given so
        # that a flipped stored task name cannot create tasks outside the pool
        expected = {"DATA_LOSS", "FAILED_PRECONDITION", "OK"}
        name = draw(st.sampled_from(IMPORT_NAMES))
    elif kind == "foreign":
        data, expected = foreign, {"FAILED_PRECONDITION"}
        name = draw(st.sampled_from(IMPORT_NAMES))
    elif kind == "empty":
        data, expected = b"", {"INVALID_ARGUMENT"}
    elif kind in ("no-name", "name-twice", "bad-name", "empty-stream"):
        expected = {"INVALID_ARGUMENT"}
    elif kind == "too-large":
        expected = {"RESOURCE_EXHAUSTED"}
    chunk = MAX_MESSAGE_BYTES - 64
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    if kind == "too-large":
        pieces = [b"\xff" * chunk] * (MAX_IMPORT_BYTES // chunk + 1)
    requests = [pb.ImportTaskRequest(name=name)] + [pb.ImportTaskRequest(data=p) for p in pieces]
    if kind == "no-name":
        requests = requests[1:] or [pb.ImportTaskRequest(data=b"\x80")]
    elif kind == "name-twice":
        requests.insert(draw(st.integers(1, len(requests))), pb.ImportTaskRequest(name=name))
    elif kind == "bad-name":
        requests[0] = pb.ImportTaskRequest(name=draw(st.sampled_from([n for n in LOOKALIKES if n and not name_ok(n)])))
    elif kind == "empty-stream":
        requests = []
    elif kind == "empty":
        requests = requests[:1] + ([pb.ImportTaskRequest(data=b"")] if draw(st.booleans()) else [])
    return kind, requests, expected


@fuzz_settings(1500)
@given(data=st.data())
def test_fuzz_import_streams(fuzz: Fuzz, data: st.DataObject) -> None:
    kind, requests, expected = data.draw(import_streams(fuzz.valid_patch, fuzz.foreign_patch))
    code = send("ImportTask", lambda: fuzz.stub.ImportTask(iter(requests), timeout=TIMEOUT_S))
    shape = [(r.WhichOneof("item"), len(r.data) if r.WhichOneof("item") == "data" else r.name[:20]) for r in requests]
    assert code in expected, (kind, code, shape)


# ---- oversized messages (over --max-message-bytes), one per RPC ------------------------------------------------

HUGE = "h" * (MAX_MESSAGE_BYTES + 100)
OVERSIZED: dict[str, Callable[[pb_grpc.TaskPatchStub], Any]] = {
    "Predict": lambda s: s.Predict(pb.PredictRequest(task="base", inputs=[pb.Input(text=HUGE)]), timeout=TIMEOUT_S),
    "GetTask": lambda s: s.GetTask(pb.GetTaskRequest(name=HUGE), timeout=TIMEOUT_S),
    "DeleteTask": lambda s: s.DeleteTask(pb.DeleteTaskRequest(name=HUGE), timeout=TIMEOUT_S),
    "RollbackTask": lambda s: s.RollbackTask(pb.RollbackTaskRequest(name=HUGE), timeout=TIMEOUT_S),
    "PinTask": lambda s: s.PinTask(pb.PinTaskRequest(name=HUGE), timeout=TIMEOUT_S),
    "GetJob": lambda s: s.GetJob(pb.GetJobRequest(job_id=HUGE), timeout=TIMEOUT_S),
    "CancelJob": lambda s: s.CancelJob(pb.CancelJobRequest(job_id=HUGE), timeout=TIMEOUT_S),
    "WatchJob": lambda s: s.WatchJob(pb.WatchJobRequest(job_id=HUGE), timeout=TIMEOUT_S),
    "ExportTask": lambda s: s.ExportTask(pb.ExportTaskRequest(name=HUGE), timeout=TIMEOUT_S),
    "AddTask-spec": lambda s: s.AddTask(
        iter([pb.AddTaskRequest(spec=pb.TaskSpec(name="base", method=HUGE))]), timeout=TIMEOUT_S
    ),
    "AddTask-chunk": lambda s: s.AddTask(
        iter([pb.AddTaskRequest(spec=_valid_upload(False)[0]), _examples(pb.TRAIN, [(HUGE, "pos")]), END]),
        timeout=TIMEOUT_S,
    ),
    "ImportTask-name": lambda s: s.ImportTask(iter([pb.ImportTaskRequest(name=HUGE)]), timeout=TIMEOUT_S),
    "ImportTask-data": lambda s: s.ImportTask(
        iter([pb.ImportTaskRequest(name="imp-0"), pb.ImportTaskRequest(data=HUGE.encode())]), timeout=TIMEOUT_S
    ),
}


@pytest.mark.parametrize("what", sorted(OVERSIZED))
def test_oversized_message_is_resource_exhausted(fuzz: Fuzz, what: str) -> None:
    assert send(what.split("-")[0], lambda: OVERSIZED[what](fuzz.stub)) == "RESOURCE_EXHAUSTED"


# ---- raw bytes: wrong types, truncated messages, invalid UTF-8 in string fields ----------------------------------

UNARY = ("ListJobs", "GetJob", "CancelJob", "Predict", "ListTasks", "GetTask", "DeleteTask", "RollbackTask", "PinTask")
UNARY_STREAM = ("WatchJob", "ExportTask")
STREAM_UNARY = ("ImportTask",)
STREAM_STREAM = ("AddTask",)


@st.composite
def protobuf_shaped(draw: st.DrawFn) -> bytes:
    """Bytes shaped like protobuf (tag + payload) with field numbers and wire types chosen at random."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 4))):
        field, wire = draw(st.integers(1, 12)), draw(st.sampled_from([0, 1, 2, 5, 3, 7]))
        out += bytes([(field << 3) | wire])
        if wire == 0:
            out += draw(st.sampled_from([b"\x01", b"\xff\xff\xff\xff\x0f", b"\x80"]))
        elif wire == 1:
            out += draw(st.binary(min_size=8, max_size=8))
        elif wire == 5:
            out += draw(st.binary(min_size=4, max_size=4))
        elif wire == 2:
            payload = draw(
                st.one_of(
                    st.binary(max_size=12), st.sampled_from([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"../x"])
                )
            )
            out += bytes([len(payload) + draw(st.sampled_from([0, 0, 0, 1, -1 if payload else 0]))]) + payload
    return bytes(out)


raw_payloads = st.one_of(st.binary(max_size=200), protobuf_shaped())


@fuzz_settings(2000)
@given(
    rpc=st.sampled_from(UNARY + UNARY_STREAM + STREAM_UNARY + STREAM_STREAM),
    payloads=st.lists(raw_payloads, min_size=1, max_size=3),
)
def test_fuzz_raw_bytes(fuzz: Fuzz, rpc: str, payloads: list[bytes]) -> None:
    channel, path = fuzz.channel, SERVICE + rpc
    if rpc in UNARY:
        call: Callable[[], Any] = lambda: channel.unary_unary(path)(payloads[0], timeout=TIMEOUT_S)  # noqa: E731
    elif rpc in UNARY_STREAM:
        call = lambda: channel.unary_stream(path)(payloads[0], timeout=TIMEOUT_S)  # noqa: E731
    elif rpc in STREAM_UNARY:
        call = lambda: channel.stream_unary(path)(iter(payloads), timeout=TIMEOUT_S)  # noqa: E731
    else:
        call = lambda: channel.stream_stream(path)(iter(payloads), timeout=TIMEOUT_S)  # noqa: E731
    code = send(rpc, call)
    # What raw bytes can mean once parsed: nothing (defaults), an unknown name/job, a bad name or stream, junk data.
    allowed = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "DATA_LOSS", "FAILED_PRECONDITION", "INTERNAL", "CANCELLED"}
    assert code in allowed, (rpc, payloads)


@pytest.mark.parametrize("rpc", ["Predict", "GetTask", "ImportTask", "AddTask"])
def test_unparseable_request_is_invalid_argument(fuzz: Fuzz, rpc: str) -> None:
    bad = b"\x0a\x02\xff\xfe"  # field 1 (a string in every one of these) holding invalid UTF-8
    channel, path = fuzz.channel, SERVICE + rpc
    if rpc == "ImportTask":
        call: Callable[[], Any] = lambda: channel.stream_unary(path)(iter([bad]), timeout=TIMEOUT_S)  # noqa: E731
    elif rpc == "AddTask":
        call = lambda: channel.stream_stream(path)(iter([b"\x0a\x04\x0a\x02\xff\xfe"]), timeout=TIMEOUT_S)  # noqa: E731
    else:
        call = lambda: channel.unary_unary(path)(bad, timeout=TIMEOUT_S)  # noqa: E731
    assert send(rpc, call) == "INVALID_ARGUMENT"


@pytest.mark.parametrize("rpc", ["GetJob", "AddTask"])
def test_error_messages_do_not_echo_unbounded_input(fuzz: Fuzz, rpc: str) -> None:
    long = "j" * 20_000  # well under --max-message-bytes
    if rpc == "GetJob":
        expected, call = "NOT_FOUND", lambda: fuzz.stub.GetJob(pb.GetJobRequest(job_id=long), timeout=TIMEOUT_S)
    else:
        spec = pb.TaskSpec(name="x", method=long, problem_type=pb.CLASSIFICATION, labels=list(LABELS))
        expected = "INVALID_ARGUMENT"
        call = lambda: fuzz.stub.AddTask(iter([pb.AddTaskRequest(spec=spec)]), timeout=TIMEOUT_S)  # noqa: E731
    code, message = raw_call_status(call)
    SENT[rpc] += 1
    assert (code, len(message) <= 2000) == (expected, True), (code, message[:200])


# ---- patches that parse, hash and fit the backbone, but not their method or head ---------------------------------


def _hostile_cases() -> dict[str, Callable[[dict[str, torch.Tensor], Any], tuple[dict[str, torch.Tensor], Any]]]:
    def drop(key: str) -> Callable[[dict[str, torch.Tensor], Any], tuple[dict[str, torch.Tensor], Any]]:
        return lambda t, m: ({k: v for k, v in t.items() if k != key}, m)

    def reshape(
        key: str, shape: tuple[int, ...]
    ) -> Callable[[dict[str, torch.Tensor], Any], tuple[dict[str, torch.Tensor], Any]]:
        return lambda t, m: ({**t, key: torch.zeros(shape)}, m)

    def meta(**changes: Any) -> Callable[[dict[str, torch.Tensor], Any], tuple[dict[str, torch.Tensor], Any]]:
        return lambda t, m: (t, dataclasses.replace(m, **changes))

    head = {"problem_type": "classification", "labels": ["neg", "pos"], "pooling": "mean", "num_outputs": 2}
    return {
        "head-weight-missing": drop("head.weight"),
        "head-weight-wrong-shape": reshape("head.weight", (2, 7)),
        "bias-delta-wrong-shape": reshape("embeddings.LayerNorm.bias_delta", (3,)),
        "head-pooling-missing": meta(head={k: v for k, v in head.items() if k != "pooling"}),
        "head-labels-not-a-list": meta(head={**head, "labels": "neg,pos"}),
        "method-unknown": meta(method="nosuchmethod"),
        "method-config-unknown-option": meta(method_config={"no_such_option": 1}),
    }


HOSTILE = _hostile_cases()


@pytest.fixture(scope="module")
def hostile_server(procs: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    workdir = tmp_path_factory.mktemp("hostile")
    proc = procs.start(server_argv(workdir / "store"), cwd=workdir / "cwd")
    try:
        yield proc, workdir
    finally:
        proc.kill()


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_import_of_a_patch_that_does_not_fit_is_refused(hostile_server: tuple[ServerProcess, Path], case: str) -> None:
    proc, workdir = hostile_server
    tensors, meta = random_meta_and_tensors("hostile", 11)
    tensors, meta = HOSTILE[case](dict(tensors), meta)
    path = workdir / f"{case}.safetensors"
    write_patch_file(path, tensors, dataclasses.replace(meta, content_sha256=""))
    name = f"h-{sorted(HOSTILE).index(case)}"
    with TaskPatchClient(proc.addr, timeout_s=30) as client:
        imported = client_code(lambda: client.import_task(path, name))
        served = client_code(lambda: client.predict(name, ["hello"])) if imported == "OK" else "-"
    assert imported in ("INVALID_ARGUMENT", "DATA_LOSS", "FAILED_PRECONDITION"), (imported, served)


def test_failing_patch_loads_do_not_leak_resident_slots(
    procs: Launcher, tmp_path: Path, tiny_fingerprint: str
) -> None:
    store = tmp_path / "store"
    tensors, meta = random_meta_and_tensors("leaky", 5)
    with PatchStore(store, tiny_fingerprint) as opened:  # put there directly: no import validation can stop it
        opened.publish("leaky", {k: v for k, v in tensors.items() if k != "head.weight"}, meta)
        for i, name in enumerate(("good", "good2")):
            good, good_meta = random_meta_and_tensors(name, 6 + i)
            opened.publish(name, good, good_meta)
    proc = procs.start(server_argv(store), cwd=tmp_path / "cwd")
    try:
        with TaskPatchClient(proc.addr, timeout_s=30) as client:
            client.predict("good", ["hello"])
            before = proc.scrape().value("taskpatch_resident_table_bytes")
            for _ in range(200):
                assert client_code(lambda: client.predict("leaky", ["hello"])) != "OK"
            client.predict("good2", ["hello"])  # a successful load refreshes the gauges
            after = proc.scrape().value("taskpatch_resident_table_bytes")
        assert after <= 2 * before, f"resident tables grew from {before:.0f} to {after:.0f} bytes"
    finally:
        proc.kill()


# ---- the totals --------------------------------------------------------------------------------------------------


def test_totals_server_alive_nothing_written_outside_memory_bounded(fuzz: Fuzz) -> None:
    total = sum(SENT.values())
    figures = {
        "requests": total,
        "by_rpc": dict(sorted(SENT.items())),
        "by_code": dict(sorted(Counter(code for (_, code), n in OUTCOMES.items() for _ in range(n)).items())),
        "framework_internal": dict(FRAMEWORK_INTERNAL),
        "rss_start_mb": round(fuzz.rss_start / 2**20, 1),
        "rss_end_mb": round(fuzz.proc.rss_bytes() / 2**20, 1),
    }
    line = json.dumps({"check": "fuzz", **figures}, sort_keys=True)
    print(line)
    if os.environ.get("TASKPATCH_RELIABILITY_OUT"):
        out = Path(os.environ["TASKPATCH_RELIABILITY_OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "fuzz.json").write_text(line + "\n")
    assert total >= MIN_REQUESTS, figures
    # alive and healthy
    assert fuzz.proc.alive()
    health = health_pb2_grpc.HealthStub(fuzz.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    with TaskPatchClient(fuzz.proc.addr, timeout_s=30) as client:
        assert client.predict("base", ["still serving"]).version == 1
        assert {t.name for t in client.list_tasks()} <= {*EXISTING, *IMPORT_NAMES, STORED_IMPORT_NAME}
        assert all(t.healthy for t in client.list_tasks())
    # the servicer never answered INTERNAL/UNKNOWN
    assert internal_or_unknown(fuzz.proc.scrape()) == []
    # nothing written outside the store: the server's cwd is empty, the store holds only its own names
    assert sorted(p.name for p in fuzz.workdir.iterdir()) == ["cwd", "store"]
    assert list((fuzz.workdir / "cwd").iterdir()) == []
    assert {p.name for p in fuzz.store.iterdir()} <= {".lock", "tasks", "jobs"}
    for task_dir in (fuzz.store / "tasks").iterdir():
        assert task_dir.name in {*EXISTING, *IMPORT_NAMES, STORED_IMPORT_NAME}, task_dir
        for entry in task_dir.iterdir():
            assert entry.name == "CURRENT" or entry.name.endswith(".safetensors"), entry
            if entry.name != "CURRENT":
                read_patch_file(entry, tiny_model().backbone.fingerprint)
    # memory bounded
    growth = fuzz.proc.rss_bytes() - fuzz.rss_start
    assert growth < RSS_GROWTH_LIMIT, f"server RSS grew by {growth / 2**20:.0f} MB"
