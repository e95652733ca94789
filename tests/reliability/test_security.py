"""Security checks on real server processes: loopback bind, bearer tokens (file, env, --auth-all) never logged, TLS,
one task-name rule for every RPC.

Per-request limits and the bounded job queue are covered in-process by ``tests/integration/test_errors.py``
(``test_predict_input_limits_are_invalid_arguments``, ``test_an_upload_over_max_upload_examples/bytes...``,
``test_a_full_job_queue_is_resource_exhausted``) and the message-size limit by
``tests/reliability/test_fuzz.py::test_oversized_message_is_resource_exhausted``; they are not repeated here.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.api import TaskPatchClient
from client.cli import run as cli_run
from protos import taskpatch_pb2 as pb
from protos import taskpatch_pb2_grpc as pb_grpc
from server.names import TASK_NAME_PATTERN
from server.settings import Settings
from tests.integration.helpers import LABELS, client_code, raw_call_code, toy_examples
from tests.reliability.patches import random_meta_and_tensors
from tests.reliability.procs import Launcher, ServerProcess, server_argv

pytestmark = pytest.mark.integration

TOKEN = "tp-7f3c9a51e2b84d06a1c5-secret"  # distinctive: a grep of the logs for it cannot match anything else
WRONG = "tp-wrong-0a9d8c7b6e5f-guess"


def non_loopback_ipv4() -> list[str]:
    """This machine's IPv4 addresses other than 127.0.0.0/8 (``ip -o -4 addr``; empty if none or no ``ip``)."""
    if shutil.which("ip") is None:
        return []
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False).stdout
    addresses = [line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3]
    return [a for a in addresses if not a.startswith("127.")]


def can_connect(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


# ---- binding -----------------------------------------------------------------------------------------------------


def test_default_settings_bind_loopback_only() -> None:
    defaults = Settings()
    assert defaults.host == "127.0.0.1"
    assert defaults.metrics_host == "127.0.0.1"
    assert defaults.auth_token is None and defaults.auth_token_file is None
    assert defaults.tls_cert is None


def test_server_is_not_reachable_on_other_addresses(procs: Launcher, tmp_path: Path) -> None:
    others = non_loopback_ipv4()
    if not others:
        pytest.skip("this machine has no non-loopback IPv4 address")
    proc = procs.start(server_argv(tmp_path / "store"), cwd=tmp_path / "cwd")  # --host not given: the default
    try:
        assert proc.host == "127.0.0.1"
        assert can_connect("127.0.0.1", proc.port) and can_connect("127.0.0.1", proc.metrics_port)
        for address in others:
            assert not can_connect(address, proc.port), f"gRPC port reachable on {address}"
            assert not can_connect(address, proc.metrics_port), f"metrics port reachable on {address}"
    finally:
        proc.kill()
    # control: the probe does see a server that binds every address
    exposed = procs.start(server_argv(tmp_path / "store2", "--host", "0.0.0.0"), cwd=tmp_path / "cwd")
    try:
        assert can_connect(others[0], exposed.port)
    finally:
        exposed.kill()


# ---- bearer tokens -----------------------------------------------------------------------------------------------


def _mutating_calls(stub: pb_grpc.TaskPatchStub, patch: bytes) -> dict[str, Callable[[Any], Any]]:
    """One call per mutating RPC; each would change something if it were let through."""
    spec = pb.TaskSpec(name="guarded", problem_type=pb.CLASSIFICATION, labels=list(LABELS))
    examples = [pb.Example(text=e.text, label=str(e.label)) for e in toy_examples(16)]
    upload = [
        pb.AddTaskRequest(spec=spec),
        pb.AddTaskRequest(chunk=pb.ExampleChunk(split=pb.TRAIN, examples=examples)),
        pb.AddTaskRequest(chunk=pb.ExampleChunk(split=pb.DEV, examples=examples[:4])),
        pb.AddTaskRequest(end=pb.EndOfUpload()),
    ]
    return {
        "AddTask": lambda md: stub.AddTask(iter(upload), metadata=md, timeout=60),
        "DeleteTask": lambda md: stub.DeleteTask(pb.DeleteTaskRequest(name="existing"), metadata=md, timeout=10),
        "RollbackTask": lambda md: stub.RollbackTask(
            pb.RollbackTaskRequest(name="existing", version=1), metadata=md, timeout=10
        ),
        "CancelJob": lambda md: stub.CancelJob(pb.CancelJobRequest(job_id="nosuchjob"), metadata=md, timeout=10),
        "PinTask": lambda md: stub.PinTask(pb.PinTaskRequest(name="existing", pinned=True), metadata=md, timeout=10),
        "ImportTask": lambda md: stub.ImportTask(
            iter([pb.ImportTaskRequest(name="imported"), pb.ImportTaskRequest(data=patch)]), metadata=md, timeout=10
        ),
    }


def _reading_calls(stub: pb_grpc.TaskPatchStub) -> dict[str, Callable[[Any], Any]]:
    return {
        "Predict": lambda md: stub.Predict(
            pb.PredictRequest(task="existing", inputs=[pb.Input(text="hi")]), metadata=md, timeout=10
        ),
        "ListTasks": lambda md: stub.ListTasks(pb.ListTasksRequest(), metadata=md, timeout=10),
        "GetTask": lambda md: stub.GetTask(pb.GetTaskRequest(name="existing"), metadata=md, timeout=10),
        "ExportTask": lambda md: stub.ExportTask(pb.ExportTaskRequest(name="existing"), metadata=md, timeout=10),
        "ListJobs": lambda md: stub.ListJobs(pb.ListJobsRequest(), metadata=md, timeout=10),
        "GetJob": lambda md: stub.GetJob(pb.GetJobRequest(job_id="nosuchjob"), metadata=md, timeout=10),
        "WatchJob": lambda md: stub.WatchJob(pb.WatchJobRequest(job_id="nosuchjob"), metadata=md, timeout=10),
    }


def _patch_file(directory: Path) -> bytes:
    from server.store import write_patch_file

    tensors, meta = random_meta_and_tensors("imported", 21)
    path = directory / "patch.safetensors"
    write_patch_file(path, tensors, meta)
    return path.read_bytes()


def _store_with_task(store: Path) -> None:
    from tests.reliability.patches import publish_random

    publish_random(store, ["existing"], versions=2)


NO_TOKEN: tuple[tuple[str, str], ...] = ()
GOOD = (("authorization", f"Bearer {TOKEN}"),)
BAD = (("authorization", f"Bearer {WRONG}"),)
NOT_BEARER = (("authorization", TOKEN),)


def _check_guarded(proc: ServerProcess, tmp_path: Path, *, auth_all: bool) -> None:
    patch = _patch_file(tmp_path)
    with grpc.insecure_channel(proc.addr) as channel:
        stub = pb_grpc.TaskPatchStub(channel)
        mutating, reading = _mutating_calls(stub, patch), _reading_calls(stub)
        for metadata in (NO_TOKEN, BAD, NOT_BEARER):
            refused = {rpc: raw_call_code(lambda call=call, md=metadata: call(md)) for rpc, call in mutating.items()}
            assert refused == dict.fromkeys(mutating, "UNAUTHENTICATED"), (metadata, refused)
            reads = {rpc: raw_call_code(lambda call=call, md=metadata: call(md)) for rpc, call in reading.items()}
            if auth_all:
                assert reads == dict.fromkeys(reading, "UNAUTHENTICATED"), reads
            else:
                assert "UNAUTHENTICATED" not in reads.values(), reads
        # nothing changed meanwhile
        tasks = stub.ListTasks(pb.ListTasksRequest(), metadata=GOOD, timeout=10).tasks
        assert [(t.name, t.version, t.pinned) for t in tasks] == [("existing", 2, False)]
        # health (probes) stays open whatever the setting
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        # with the token, every mutating RPC goes through
        allowed = {rpc: raw_call_code(lambda call=call: call(GOOD)) for rpc, call in mutating.items()}
        assert allowed == {
            "AddTask": "OK",
            "DeleteTask": "OK",
            "RollbackTask": "NOT_FOUND",  # deleted just before (dict order)
            "CancelJob": "NOT_FOUND",
            "PinTask": "NOT_FOUND",
            "ImportTask": "OK",
        }, allowed
    refused_count = proc.scrape().find("taskpatch_rpc_requests_total", code="UNAUTHENTICATED")
    assert sum(value for _, value in refused_count) == 3 * (len(mutating) + (len(reading) if auth_all else 0))


@pytest.mark.parametrize("source", ["file", "env-python-m-server", "file-auth-all"])
def test_token_guards_mutating_rpcs_and_is_never_logged(
    procs: Launcher, exec_procs: Launcher, tmp_path: Path, source: str
) -> None:
    """The env variant runs a real ``python -m server`` with grpc's own logging at DEBUG too."""
    store = tmp_path / "store"
    _store_with_task(store)
    extra = ["--log-level", "DEBUG"]
    env: dict[str, str] = {}
    launcher = procs
    if source.startswith("file"):
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")  # a trailing newline, as editors write it
        extra += ["--auth-token-file", str(token_file)]
    else:
        env = {"TASKPATCH_AUTH_TOKEN": TOKEN, "GRPC_VERBOSITY": "DEBUG"}
        launcher = exec_procs
    if source.endswith("auth-all"):
        extra += ["--auth-all", "true"]
    proc = launcher.start(server_argv(store, *extra), cwd=tmp_path / "cwd", env=env)
    try:
        _check_guarded(proc, tmp_path, auth_all=source.endswith("auth-all"))
    finally:
        proc.kill()
    log = proc.log_text()
    # the log covers the whole run (the server emits no DEBUG records of its own today; the level is set anyway)
    assert "taskpatch serving" in log and "published imported v1" in log, log[-2000:]
    assert TOKEN not in log and TOKEN[3:15] not in log, "the bearer token appears in the server log"
    assert WRONG not in log, "a rejected token appears in the server log"


def test_cli_with_a_wrong_token_does_not_print_it(
    procs: Launcher, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    proc = procs.start(server_argv(tmp_path / "store", "--auth-token-file", str(token_file)), cwd=tmp_path / "cwd")
    wrong_file = tmp_path / "wrong"
    wrong_file.write_text(WRONG)
    try:
        code = cli_run(["--server", proc.addr, "--token-file", str(wrong_file), "rm", "anything"], {})
        assert code == 1
        anonymous = cli_run(["--server", proc.addr, "rm", "anything"], {})
        assert anonymous == 1
        with_env = cli_run(["--server", proc.addr, "rm", "anything"], {"TASKPATCH_TOKEN": TOKEN})
        assert with_env == 1  # authenticated: NOT_FOUND now
    finally:
        proc.kill()
    out = capsys.readouterr()
    text = out.out + out.err
    assert "UNAUTHENTICATED" in text and "NOT_FOUND" in text
    assert WRONG not in text and TOKEN not in text


def test_an_empty_token_file_stops_the_server_from_starting(procs: Launcher, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    proc = procs.start(server_argv(tmp_path / "store", "--auth-token-file", str(token_file)), wait=False)
    assert proc.wait(60) not in (0, None)
    assert f"token file {token_file} is empty" in proc.log_text()
    assert "taskpatch serving" not in proc.log_text()


# ---- TLS ---------------------------------------------------------------------------------------------------------


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (and the cryptography package is not either)")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server(
    procs: Launcher, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    cert, key = _self_signed(directory, "server")
    other_ca, _ = _self_signed(directory, "other")
    token_file = directory / "token"
    token_file.write_text(TOKEN)
    argv = server_argv(
        directory / "store", "--tls-cert", str(cert), "--tls-key", str(key), "--auth-token-file", str(token_file)
    )
    proc = procs.start(argv, cwd=directory / "cwd")
    try:
        yield proc, cert, other_ca
    finally:
        proc.kill()


def test_tls_client_with_the_ca_works(tls_server: tuple[ServerProcess, Path, Path]) -> None:
    proc, cert, _ = tls_server
    with TaskPatchClient(f"localhost:{proc.port}", tls_ca=cert, timeout_s=30, token=TOKEN) as client:
        assert client.list_tasks() == []
        events = list(
            client.add_task(
                "secure", toy_examples(16), toy_examples(4, offset=99), problem_type="classification", labels=LABELS
            )
        )
        assert events[-1].kind == "done"
        assert client.predict("secure", ["over TLS"]).version == 1
    with TaskPatchClient(f"127.0.0.1:{proc.port}", tls_ca=cert, timeout_s=30) as by_ip:  # the SAN has the IP too
        assert [t.name for t in by_ip.list_tasks()] == ["secure"]


def test_plaintext_and_untrusted_clients_fail(tls_server: tuple[ServerProcess, Path, Path]) -> None:
    proc, _, other_ca = tls_server
    with TaskPatchClient(proc.addr, timeout_s=10) as plaintext:
        assert client_code(plaintext.list_tasks) == "UNAVAILABLE"
        assert client_code(lambda: plaintext.delete_task("secure")) == "UNAVAILABLE"
    with TaskPatchClient(f"localhost:{proc.port}", tls_ca=other_ca, timeout_s=10, token=TOKEN) as untrusted:
        assert client_code(untrusted.list_tasks) == "UNAVAILABLE"
    assert proc.alive()


def test_tls_cli(tls_server: tuple[ServerProcess, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    proc, cert, _ = tls_server
    assert cli_run(["--server", f"localhost:{proc.port}", "--tls-ca", str(cert), "tasks"], {}) == 0
    assert cli_run(["--server", f"localhost:{proc.port}", "tasks"], {}) == 1
    captured = capsys.readouterr()
    assert "UNAVAILABLE" in captured.err


# ---- one task-name rule for every RPC ----------------------------------------------------------------------------

NAMES = [
    "../x",
    "..",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "a\x00b",
    "x" * 64,
    "x" * 63,
    "",
    "Upper",
    "b\u0430se",
    "ｂａｓｅ",
    "\u200bx",
    "x\n",
    " x",
    "-x",
    "_x",
    "0",
    "a-b_c",
    "a.b",
    "a b",
    "é",
    "ok-name",
]


def _name_calls(stub: pb_grpc.TaskPatchStub, name: str, patch: bytes) -> dict[str, Callable[[], Any]]:
    spec = pb.TaskSpec(name=name, problem_type=pb.CLASSIFICATION, labels=list(LABELS))
    examples = [pb.Example(text=e.text, label=str(e.label)) for e in toy_examples(8)]
    upload = [
        pb.AddTaskRequest(spec=spec),
        pb.AddTaskRequest(chunk=pb.ExampleChunk(split=pb.TRAIN, examples=examples)),
        pb.AddTaskRequest(chunk=pb.ExampleChunk(split=pb.DEV, examples=examples[:2])),
        pb.AddTaskRequest(end=pb.EndOfUpload()),
    ]
    calls: dict[str, Callable[[], Any]] = {
        "AddTask": lambda: stub.AddTask(iter(upload), timeout=30),
        "Predict": lambda: stub.Predict(pb.PredictRequest(task=name, inputs=[pb.Input(text="hi")]), timeout=10),
        "GetTask": lambda: stub.GetTask(pb.GetTaskRequest(name=name), timeout=10),
        "DeleteTask": lambda: stub.DeleteTask(pb.DeleteTaskRequest(name=name), timeout=10),
        "RollbackTask": lambda: stub.RollbackTask(pb.RollbackTaskRequest(name=name), timeout=10),
        "PinTask": lambda: stub.PinTask(pb.PinTaskRequest(name=name, pinned=True), timeout=10),
        "UnpinTask": lambda: stub.PinTask(pb.PinTaskRequest(name=name, pinned=False), timeout=10),
        "ExportTask": lambda: stub.ExportTask(pb.ExportTaskRequest(name=name), timeout=10),
    }
    if name:  # "" means "the name stored in the patch" for ImportTask
        calls["ImportTask"] = lambda: stub.ImportTask(
            iter([pb.ImportTaskRequest(name=name), pb.ImportTaskRequest(data=b"not a patch")]), timeout=10
        )
    return calls


def test_every_rpc_applies_the_same_name_rule(procs: Launcher, tmp_path: Path) -> None:
    proc = procs.start(server_argv(tmp_path / "store", "--job-queue-size", "64"), cwd=tmp_path / "cwd")
    try:
        with grpc.insecure_channel(proc.addr) as channel:
            stub = pb_grpc.TaskPatchStub(channel)
            for name in NAMES:
                valid = TASK_NAME_PATTERN.fullmatch(name) is not None
                codes = {rpc: raw_call_code(call) for rpc, call in _name_calls(stub, name, b"").items()}
                invalid = {rpc for rpc, code in codes.items() if code == "INVALID_ARGUMENT"}
                if valid:
                    # accepted by the rule; AddTask trains it, ImportTask gets junk bytes
                    assert not invalid, (name, codes)
                else:
                    assert invalid == set(codes), (repr(name), codes)
            tasks = {t.name for t in stub.ListTasks(pb.ListTasksRequest(), timeout=10).tasks}
        assert tasks <= {n for n in NAMES if TASK_NAME_PATTERN.fullmatch(n)}
    finally:
        proc.kill()
    # nothing reached outside the store, whatever the name
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [".lock", "jobs", "tasks"]
    assert list((tmp_path / "cwd").iterdir()) == []
