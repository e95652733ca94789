"""Every user-caused error reaches the caller with its specific gRPC status code, never UNKNOWN or INTERNAL.

Most checks share one module server (tiny:0 backbone, small limits, a job queue of one); the last test reads the RPC
counters of every server this module started and requires that none counted INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.api import TaskPatchClient
from protos import taskpatch_pb2 as pb
from tasks.types import Example
from tests.integration.helpers import (
    LABELS,
    MetricSamples,
    ServerHandle,
    Servers,
    cancel_and_wait,
    client_code,
    client_error,
    internal_or_unknown,
    raw_add_task,
    raw_call_code,
    registry_metrics,
    scrape,
    start_blocker,
    submit_detached,
    toy_chunk,
    toy_examples,
    toy_regression,
    toy_spec,
    train_toy,
    wait_until,
)

pytestmark = pytest.mark.integration

MAX_INPUTS = 4
MAX_TEXT_CHARS = 200
MAX_UPLOAD_EXAMPLES = 1000
MAX_UPLOAD_BYTES = 50_000
BAD_NAMES = ["../x", "/etc/passwd", "A" * 200, "a\x00b", "Upper", "has space", "-dash", ""]


@pytest.fixture(scope="module")
def main(module_servers: Servers) -> ServerHandle:
    return module_servers.start(
        backbone="tiny:0",
        max_inputs_per_request=MAX_INPUTS,
        max_text_chars=MAX_TEXT_CHARS,
        max_upload_examples=MAX_UPLOAD_EXAMPLES,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        job_queue_size=1,
    )


@pytest.fixture(scope="module")
def client(main: ServerHandle) -> TaskPatchClient:
    return main.client


@pytest.fixture(scope="module")
def base(client: TaskPatchClient) -> str:
    """A trained task the checks can address."""
    train_toy(client, "base")
    return "base"


def add_toy(client: TaskPatchClient, name: str, **options: Any) -> Callable[[], object]:
    """A deferred add_task of a small valid toy task; ``options`` override any keyword."""
    kwargs: dict[str, Any] = {
        "train": toy_examples(40),
        "dev": toy_examples(10, offset=10_000),
        "problem_type": "classification",
        "labels": LABELS,
        "epochs": 1,
        **options,
    }
    return lambda: client.add_task(name, **kwargs)


# ---- NOT_FOUND ---------------------------------------------------------------------------------------------------


def test_unknown_task_is_not_found(client: TaskPatchClient, tmp_path: Path) -> None:
    calls: dict[str, Callable[[], object]] = {
        "predict": lambda: client.predict("nosuchtask", ["hello"]),
        "get": lambda: client.get_task("nosuchtask"),
        "delete": lambda: client.delete_task("nosuchtask"),
        "rollback": lambda: client.rollback_task("nosuchtask"),
        "rollback to v1": lambda: client.rollback_task("nosuchtask", 1),
        "pin": lambda: client.pin_task("nosuchtask"),
        "export": lambda: client.export_task("nosuchtask", tmp_path / "x.safetensors"),
    }
    assert {what: client_code(call) for what, call in calls.items()} == dict.fromkeys(calls, "NOT_FOUND")
    assert not list(tmp_path.iterdir()), "a failed export left a file behind"


def test_unknown_version_is_not_found(client: TaskPatchClient, base: str, tmp_path: Path) -> None:
    assert client_code(lambda: client.rollback_task(base, 99)) == "NOT_FOUND"
    assert client_code(lambda: client.export_task(base, tmp_path / "x.safetensors", version=99)) == "NOT_FOUND"


def test_unknown_job_is_not_found(client: TaskPatchClient) -> None:
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: client.get_job("nosuchjob"),
        "cancel": lambda: client.cancel_job("nosuchjob"),
        "watch": lambda: client.watch_job("nosuchjob"),
        "get empty id": lambda: client.get_job(""),
    }
    assert {what: client_code(call) for what, call in calls.items()} == dict.fromkeys(calls, "NOT_FOUND")


# ---- ALREADY_EXISTS ----------------------------------------------------------------------------------------------


def test_adding_an_existing_task_needs_replace(client: TaskPatchClient) -> None:
    train_toy(client, "dup")
    error = client_error(add_toy(client, "dup"))
    assert error is not None and error.code == "ALREADY_EXISTS"
    assert "replace" in error.message

    events = train_toy(client, "dup", replace=True, seed=1)
    assert events[-1].version == 2
    task = client.get_task("dup")
    assert task.version == 2 and task.versions == (1, 2)


def test_a_second_job_for_a_busy_task_already_exists(client: TaskPatchClient) -> None:
    job_id = start_blocker(client, "busy")
    try:
        assert client_code(add_toy(client, "busy", detach=True)) == "ALREADY_EXISTS"
        assert client_code(add_toy(client, "busy", detach=True, replace=True)) == "ALREADY_EXISTS"
        assert client.get_job(job_id).state == "running"
    finally:
        assert cancel_and_wait(client, job_id).kind == "cancelled"


# ---- INVALID_ARGUMENT --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_task_names_are_invalid_arguments(client: TaskPatchClient, name: str, tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a patch")
    calls: dict[str, Callable[[], object]] = {
        "add": add_toy(client, name),
        "predict": lambda: client.predict(name, ["hello"]),
        "get": lambda: client.get_task(name),
        "delete": lambda: client.delete_task(name),
        "rollback": lambda: client.rollback_task(name),
        "pin": lambda: client.pin_task(name),
        "unpin": lambda: client.pin_task(name, False),
        "export": lambda: client.export_task(name, tmp_path / "out.safetensors"),
    }
    if name:  # an empty import name means "the name stored in the patch"
        calls["import"] = lambda: client.import_task(junk, name)
    assert {what: client_code(call) for what, call in calls.items()} == dict.fromkeys(calls, "INVALID_ARGUMENT")
    assert not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize(
    "options",
    [
        {"method": "nosuchmethod"},
        {"method_config": {"no_such_option": 1}},
        {"epochs": 0},
        {"epochs": 100_000},
        {"learning_rate": -0.1},
        {"learning_rate": 0.0},
        {"data_fraction": 1.5},
        {"data_fraction": 0.0},
        {"batch_size": 0},
        {"time_budget_s": -1.0},
        {"warmup_ratio": 1.0},
        {"seed": -1},
        {"metrics": ["no_such_metric"]},
        pytest.param({"labels": ("neg",)}, id="one-label"),
        pytest.param({"labels": ("neg", "neg")}, id="repeated-label"),
        pytest.param(
            {"problem_type": "regression", "train": toy_regression(20), "dev": toy_regression(5, offset=100)},
            id="regression-with-labels",
        ),
    ],
    ids=lambda options: ",".join(f"{key}={value}" for key, value in options.items()),
)
def test_bad_training_options_are_invalid_arguments(client: TaskPatchClient, options: dict[str, Any]) -> None:
    assert client_code(add_toy(client, "badopts", **options)) == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    "train",
    [
        pytest.param([*toy_examples(20), Example("odd one", None, "maybe")], id="label-not-in-set"),
        pytest.param([e for e in toy_examples(40) if e.label == "pos"], id="single-class"),
        pytest.param([*toy_examples(20), Example("   ", None, "pos")], id="blank-text"),
        pytest.param([*toy_examples(20), Example("", None, "pos")], id="empty-text"),
        pytest.param([*toy_examples(20), Example("x" * 201, None, "pos")], id="text-too-long"),
        pytest.param([*toy_examples(20), Example("x", "y" * 201, "pos")], id="pair-too-long"),
        pytest.param([], id="no-train-examples"),
    ],
)
def test_bad_examples_are_invalid_arguments(client: TaskPatchClient, train: list[Example]) -> None:
    assert client_code(add_toy(client, "badexamples", train=train, detach=True)) == "INVALID_ARGUMENT"


def test_a_dev_label_outside_the_label_set_is_an_invalid_argument(client: TaskPatchClient) -> None:
    dev = [*toy_examples(5, offset=10_000), Example("odd one", None, "maybe")]
    error = client_error(add_toy(client, "baddev", dev=dev))
    assert error is not None and error.code == "INVALID_ARGUMENT"
    assert "maybe" in error.message


def test_an_empty_dev_split_is_an_invalid_argument(client: TaskPatchClient) -> None:
    assert client_code(add_toy(client, "nodev", dev=[])) == "INVALID_ARGUMENT"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=str)
def test_a_non_finite_regression_value_is_an_invalid_argument(main: ServerHandle, value: float) -> None:
    channel, stub = main.stub()  # the typed client refuses to send it (see the next test)
    with channel:
        spec = toy_spec("nanscore", problem_type=pb.REGRESSION, labels=[])
        train = toy_chunk(pb.TRAIN, toy_regression(20))
        train.chunk.examples.add(text="poisoned", value=value)
        error = raw_add_task(
            stub,
            [
                pb.AddTaskRequest(spec=spec),
                train,
                toy_chunk(pb.DEV, toy_regression(5, offset=100)),
                pb.AddTaskRequest(end=pb.EndOfUpload()),
            ],
        )
    assert error is not None and error.code == "INVALID_ARGUMENT"


def test_an_upload_the_client_abandons_is_counted_as_cancelled_not_internal(servers: Servers) -> None:
    # Not on the module server: this test must not pollute the module-wide INTERNAL check if it fails.
    handle = servers.start()
    train = [*toy_regression(20), Example("poisoned", None, math.nan)]
    with pytest.raises(ValueError, match="finite"):  # the typed client stops mid-stream and cancels the call
        list(add_toy(handle.client, "nanscore", problem_type="regression", labels=(), train=train)())

    def counted() -> MetricSamples:
        return scrape(handle.metrics_port)

    wait_until(lambda: sum(v for _, v in counted().find("taskpatch_rpc_requests_total", rpc="AddTask")) == 1)
    assert internal_or_unknown(counted()) == []
    assert counted().value("taskpatch_rpc_requests_total", rpc="AddTask", code="CANCELLED") == 1
    assert client_code(lambda: handle.client.get_task("nanscore")) == "NOT_FOUND"


@pytest.mark.parametrize(
    "spec_fields",
    [
        {"method_config_json": "{not json"},
        {"method_config_json": "[1, 2]"},
        {"problem_type": pb.PROBLEM_TYPE_UNSPECIFIED},
        {"training": pb.TrainingOptions(learning_rate=math.nan)},
        {"training": pb.TrainingOptions(time_budget_s=math.inf)},
    ],
    ids=["bad-json", "json-not-object", "no-problem-type", "nan-lr", "inf-budget"],
)
def test_bad_raw_specs_are_invalid_arguments(main: ServerHandle, spec_fields: dict[str, Any]) -> None:
    channel, stub = main.stub()
    with channel:
        error = raw_add_task(
            stub,
            [
                pb.AddTaskRequest(spec=toy_spec("rawspec", **spec_fields)),
                toy_chunk(pb.TRAIN, toy_examples(20)),
                toy_chunk(pb.DEV, toy_examples(5, offset=100)),
                pb.AddTaskRequest(end=pb.EndOfUpload()),
            ],
        )
    assert error is not None and error.code == "INVALID_ARGUMENT", error


def test_malformed_upload_streams_are_invalid_arguments(client: TaskPatchClient, main: ServerHandle) -> None:
    spec = pb.AddTaskRequest(spec=toy_spec("stream", detach=True))
    train = toy_chunk(pb.TRAIN, toy_examples(20))
    dev = toy_chunk(pb.DEV, toy_examples(5, offset=100))
    end = pb.AddTaskRequest(end=pb.EndOfUpload())
    streams = {
        "no end marker": [spec, train, dev],
        "chunk before spec": [train, spec, dev, end],
        "end before spec": [end],
        "duplicate spec": [spec, train, spec, dev, end],
        "empty message": [spec, pb.AddTaskRequest(), dev, end],
        "chunk without split": [spec, toy_chunk(pb.SPLIT_UNSPECIFIED, toy_examples(20)), dev, end],
        "no messages at all": [],
    }
    channel, stub = main.stub()
    with channel:
        codes = {}
        for what, requests in streams.items():
            error = raw_add_task(stub, requests)
            codes[what] = "OK" if error is None else error.code
    assert codes == dict.fromkeys(streams, "INVALID_ARGUMENT")
    assert not [job for job in client.list_jobs() if job.task == "stream"], "a malformed upload queued a job"


def test_predict_input_limits_are_invalid_arguments(client: TaskPatchClient, base: str) -> None:
    assert client_code(lambda: client.predict(base, [])) == "INVALID_ARGUMENT"
    assert client_code(lambda: client.predict(base, ["  "])) == "INVALID_ARGUMENT"

    assert client_code(lambda: client.predict(base, ["ok"] * MAX_INPUTS)) == "OK"
    error = client_error(lambda: client.predict(base, ["ok"] * (MAX_INPUTS + 1)))
    assert error is not None and error.code == "INVALID_ARGUMENT"
    assert f"max_inputs_per_request={MAX_INPUTS}" in error.message

    assert client_code(lambda: client.predict(base, ["x" * MAX_TEXT_CHARS])) == "OK"
    for item in ["x" * (MAX_TEXT_CHARS + 1), ("ok", "y" * (MAX_TEXT_CHARS + 1))]:
        error = client_error(lambda item=item: client.predict(base, [item]))
        assert error is not None and error.code == "INVALID_ARGUMENT"
        assert f"max_text_chars={MAX_TEXT_CHARS}" in error.message


def test_negative_versions_are_invalid_arguments(client: TaskPatchClient, base: str, tmp_path: Path) -> None:
    assert client_code(lambda: client.rollback_task(base, -1)) == "INVALID_ARGUMENT"
    assert client_code(lambda: client.export_task(base, tmp_path / "x", version=-1)) == "INVALID_ARGUMENT"


def test_malformed_import_streams_are_invalid_arguments(main: ServerHandle) -> None:
    channel, stub = main.stub()
    with channel:
        streams = {
            "data before name": [pb.ImportTaskRequest(data=b"abc")],
            "no data": [pb.ImportTaskRequest(name="imported")],
            "name twice": [pb.ImportTaskRequest(name="imported"), pb.ImportTaskRequest(name="again")],
            "nothing": [],
        }
        codes = {
            what: raw_call_code(lambda requests=requests: stub.ImportTask(iter(requests), timeout=30))
            for what, requests in streams.items()
        }
    assert codes == dict.fromkeys(streams, "INVALID_ARGUMENT")


def test_importing_a_file_that_is_not_a_patch_is_data_loss(client: TaskPatchClient, tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert client_code(lambda: client.import_task(junk, "junk")) == "DATA_LOSS"
    assert client_code(lambda: client.get_task("junk")) == "NOT_FOUND"


# ---- RESOURCE_EXHAUSTED ------------------------------------------------------------------------------------------


def test_a_full_job_queue_is_resource_exhausted(client: TaskPatchClient) -> None:
    blocker = start_blocker(client, "blocker")
    queued = None
    try:
        queued = submit_detached(client, "waiting")
        assert client.get_job(queued).state == "queued"

        error = client_error(add_toy(client, "overflow", detach=True))
        assert error is not None and error.code == "RESOURCE_EXHAUSTED"
        assert "queue is full" in error.message
        assert not [job for job in client.list_jobs() if job.task == "overflow"]
    finally:
        if queued is not None:
            assert cancel_and_wait(client, queued).kind == "cancelled"
        assert cancel_and_wait(client, blocker).kind == "cancelled"


def test_an_upload_over_max_upload_examples_is_resource_exhausted(client: TaskPatchClient) -> None:
    error = client_error(add_toy(client, "huge", train=toy_examples(MAX_UPLOAD_EXAMPLES + 1)))
    assert error is not None and error.code == "RESOURCE_EXHAUSTED"
    assert str(MAX_UPLOAD_EXAMPLES) in error.message
    assert client_code(lambda: client.get_task("huge")) == "NOT_FOUND"


def test_an_upload_over_max_upload_bytes_is_resource_exhausted(client: TaskPatchClient) -> None:
    long_examples = [Example(f"{i} " + "x" * 190, None, LABELS[i % 2]) for i in range(300)]  # ~58 kB of text
    error = client_error(add_toy(client, "wordy", train=long_examples))
    assert error is not None and error.code == "RESOURCE_EXHAUSTED"
    assert str(MAX_UPLOAD_BYTES) in error.message


def test_pinning_every_resident_slot_is_resource_exhausted(module_servers: Servers) -> None:
    small = module_servers.start(max_resident=2)
    train_toy(small.client, "one")
    train_toy(small.client, "two")
    assert small.client.pin_task("one").pinned
    error = client_error(lambda: small.client.pin_task("two"))
    assert error is not None and error.code == "RESOURCE_EXHAUSTED"
    assert small.client.get_task("two").pinned is False
    assert small.client.predict("two", ["hello"]).version == 1


# ---- FAILED_PRECONDITION -----------------------------------------------------------------------------------------


def test_full_fine_tuning_is_a_failed_precondition_when_disabled(client: TaskPatchClient) -> None:
    error = client_error(add_toy(client, "fullft", method="full"))
    assert error is not None and error.code == "FAILED_PRECONDITION", error
    assert "allow-full" in error.message


def test_rolling_back_the_only_version_is_a_failed_precondition(client: TaskPatchClient) -> None:
    train_toy(client, "single")
    assert client_code(lambda: client.rollback_task("single")) == "FAILED_PRECONDITION"
    assert client.get_task("single").version == 1


def test_importing_a_patch_for_another_backbone_is_a_failed_precondition(
    main: ServerHandle, module_servers: Servers, base: str, tmp_path: Path
) -> None:
    patch = tmp_path / "base.safetensors"
    assert main.client.export_task(base, patch) > 0
    other = module_servers.start(backbone="tiny:1")
    error = client_error(lambda: other.client.import_task(patch, "foreign"))
    assert error is not None and error.code == "FAILED_PRECONDITION", error
    assert "fingerprint" in error.message or "backbone" in error.message
    assert other.client.list_tasks() == []


# ---- UNAUTHENTICATED ---------------------------------------------------------------------------------------------


def test_mutating_rpcs_need_the_token(module_servers: Servers) -> None:
    secured = module_servers.start(auth_token="s3cret")
    with secured.connect() as anonymous, secured.connect("wrong") as wrong, secured.connect("s3cret") as admin:
        assert client_code(add_toy(anonymous, "guarded")) == "UNAUTHENTICATED"
        assert client_code(add_toy(wrong, "guarded")) == "UNAUTHENTICATED"
        assert anonymous.list_tasks() == []

        train_toy(admin, "guarded")
        assert anonymous.predict("guarded", ["hello"]).version == 1  # reads stay open
        assert [t.name for t in anonymous.list_tasks()] == ["guarded"]

        for what, call in {
            "delete": lambda c: c.delete_task("guarded"),
            "pin": lambda c: c.pin_task("guarded"),
            "rollback": lambda c: c.rollback_task("guarded"),
            "cancel": lambda c: c.cancel_job("nosuchjob"),
        }.items():
            assert client_code(lambda call=call: call(anonymous)) == "UNAUTHENTICATED", what
        assert admin.get_task("guarded").version == 1

        admin.delete_task("guarded")
        assert client_code(lambda: anonymous.get_task("guarded")) == "NOT_FOUND"


def test_refused_calls_are_counted_as_unauthenticated(module_servers: Servers) -> None:
    secured = module_servers.start(auth_token="s3cret")
    with secured.connect() as anonymous:
        assert client_code(lambda: anonymous.delete_task("x")) == "UNAUTHENTICATED"
        assert client_code(add_toy(anonymous, "x")) == "UNAUTHENTICATED"
    m = scrape(secured.metrics_port)
    assert m.value("taskpatch_rpc_requests_total", rpc="DeleteTask", code="UNAUTHENTICATED") == 1
    assert m.value("taskpatch_rpc_requests_total", rpc="AddTask", code="UNAUTHENTICATED") == 1


def test_auth_all_guards_reads_too(module_servers: Servers) -> None:
    secured = module_servers.start(auth_token="s3cret", auth_all=True)
    with secured.connect() as anonymous, secured.connect("s3cret") as admin:
        train_toy(admin, "private")
        assert client_code(lambda: anonymous.predict("private", ["hello"])) == "UNAUTHENTICATED"
        assert client_code(lambda: anonymous.list_tasks()) == "UNAUTHENTICATED"
        assert client_code(lambda: anonymous.list_jobs()) == "UNAUTHENTICATED"
        assert admin.predict("private", ["hello"]).version == 1


# ---- no user error is ever INTERNAL / UNKNOWN (keep this test last in the module) ---------------------------------


def test_no_request_in_this_module_was_internal_or_unknown(main: ServerHandle, module_servers: Servers) -> None:
    scraped = scrape(main.metrics_port)
    assert internal_or_unknown(scraped) == []
    for code in ("NOT_FOUND", "ALREADY_EXISTS", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION"):
        assert sum(v for _, v in scraped.find("taskpatch_rpc_requests_total", code=code)) > 0, code
    for handle in module_servers.started:
        assert internal_or_unknown(registry_metrics(handle.server)) == [], handle.addr
