"""Graceful shutdown with real signals: SIGTERM (and SIGINT) to a server process while it serves and while it trains.

In-flight predictions finish with OK after the signal, new calls are refused, the running and queued training jobs
end INTERRUPTED without publishing, the process exits 0 within its grace period, and a restart on the same store
serves every finished task with the very same outputs. (``tests/integration/test_restart.py`` checks the same
in-process via ``server.stop()``; here the signal handler of ``serve()`` is part of the test.)
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from client.api import TaskPatchClient
from client.errors import TaskPatchError
from tests.integration.helpers import (
    LABELS,
    PROBE_INPUTS,
    probabilities,
    start_blocker,
    submit_detached,
    toy_examples,
    train_toy,
)
from tests.reliability.procs import Launcher, ServerProcess, server_argv
from tests.reliability.report import report

pytestmark = pytest.mark.integration

GRACE_S = 20
LONG_TEXT = " ".join(["the film was long but the ending was lovely and the cast superb"] * 12)


def _start(launcher: Launcher, store: Path, cwd: Path, *extra: str) -> ServerProcess:
    return launcher.start(server_argv(store, "--grace-s", str(GRACE_S), *extra), cwd=cwd)


def _snapshot(client: TaskPatchClient, names: list[str]) -> dict[str, tuple[int, list[tuple[float, ...]]]]:
    out = {}
    for name in names:
        result = client.predict(name, list(PROBE_INPUTS))
        out[name] = (result.version, probabilities(result))
    return out


def test_sigterm_while_serving_lets_in_flight_predicts_finish(procs: Launcher, tmp_path: Path) -> None:
    store, cwd = tmp_path / "store", tmp_path / "cwd"
    # Small batches and long inputs: each request is many forward passes, so requests are still queued at the signal.
    proc = _start(procs, store, cwd, "--max-batch-size", "8", "--max-inputs-per-request", "256")
    names = ["serve-a", "serve-b", "serve-c"]
    with TaskPatchClient(proc.addr, timeout_s=60) as client:
        for name in names:
            train_toy(client, name, n_train=40, n_dev=10)
        expected = _snapshot(client, names)

    n_requests, inputs_per_request = 8, 256
    items_per_request = inputs_per_request // 8  # the engine queues one item per max_batch_size rows
    results: list[tuple[str, float]] = []
    lock = threading.Lock()
    go = threading.Barrier(n_requests + 1)

    def one(i: int) -> None:
        with TaskPatchClient(proc.addr, timeout_s=120) as client:
            go.wait()
            try:
                result = client.predict(names[i % len(names)], [f"{LONG_TEXT} {i} {j}" for j in range(256)])
                code = "OK" if len(result.predictions) == inputs_per_request else "SHORT"
            except TaskPatchError as err:
                code = err.code
            with lock:
                results.append((code, time.monotonic()))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n_requests)]
    for thread in threads:
        thread.start()
    go.wait()
    # Wait until every request is inside the engine: queued items + forward passes done cover all of them.
    deadline = time.monotonic() + 60
    while True:
        metrics = proc.scrape()
        seen = metrics.value("taskpatch_queue_depth_requests") + metrics.value("taskpatch_batch_size_examples_count")
        if seen >= n_requests * items_per_request - 1:
            break
        assert time.monotonic() < deadline, f"requests never reached the engine ({seen})"
        time.sleep(0.005)
    signalled = time.monotonic()
    proc.signal(signal.SIGTERM)
    with TaskPatchClient(proc.addr, timeout_s=10) as late:
        time.sleep(0.05)
        try:
            late.predict(names[0], ["after the signal"])
            late_code = "OK"
        except TaskPatchError as err:
            late_code = err.code
    for thread in threads:
        thread.join(120)
    status = proc.wait(GRACE_S + 30)

    codes = [code for code, _ in results]
    assert codes == ["OK"] * n_requests, codes
    finished_after = sum(1 for _, done in results if done > signalled)
    assert finished_after >= 1, "every prediction ended before the signal: the test proved nothing"
    assert late_code in ("UNAVAILABLE", "OK"), late_code  # a new call is refused (or slipped in before the stop)
    assert status == 0, proc.log_text()[-3000:]
    assert "received SIGTERM, shutting down" in proc.log_text() and "taskpatch stopped" in proc.log_text()
    last_done = max(done for _, done in results)
    report(
        "shutdown-serving",
        {
            "in_flight_predicts": n_requests,
            "ok": codes.count("OK"),
            "finished_after_sigterm": finished_after,
            "late_call": late_code,
            "exit_status": status,
            "last_finished_s_after_sigterm": round(last_done - signalled, 3),
        },
    )

    restarted = _start(procs, store, cwd)
    try:
        with TaskPatchClient(restarted.addr, timeout_s=60) as client:
            assert _snapshot(client, names) == expected
    finally:
        restarted.kill()


def test_sigterm_while_training_interrupts_the_jobs_and_restart_serves_the_rest(
    exec_procs: Launcher, tmp_path: Path
) -> None:
    """On a real ``python -m server``: a running and a queued job at SIGTERM end INTERRUPTED, unpublished."""
    store, cwd = tmp_path / "store", tmp_path / "cwd"
    proc = _start(exec_procs, store, cwd)
    with TaskPatchClient(proc.addr, timeout_s=60) as client:
        train_toy(client, "done-1", n_train=40, n_dev=10)
        train_toy(client, "done-2", n_train=40, n_dev=10)
        expected = _snapshot(client, ["done-1", "done-2"])
        running = start_blocker(client, "done-1", replace=True)  # a new version of a served task, cut short
        queued = submit_detached(client, "never-started")
        assert client.get_job(queued).state == "queued"

        # a client following the running job sees it end, and never as done
        followed: list[str] = []

        def follow() -> None:
            try:
                for event in client.watch_job(running):
                    followed.append(f"{event.kind}:{event.state}")
            except TaskPatchError as err:
                followed.append(err.code)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        time.sleep(0.2)
        started = time.monotonic()
        proc.signal(signal.SIGTERM)
        status = proc.wait(GRACE_S + 30)
        stopped_in = time.monotonic() - started
        follower.join(30)
    assert status == 0, proc.log_text()[-3000:]
    assert stopped_in < GRACE_S, f"shutdown took {stopped_in:.1f} s"
    assert followed and not any(e.startswith("done") for e in followed), followed
    report(
        "shutdown-training",
        {"stopped_in_s": round(stopped_in, 2), "follower_saw": followed[-1], "exit_status": status},
    )

    restarted = _start(exec_procs, store, cwd)
    try:
        with TaskPatchClient(restarted.addr, timeout_s=60) as client:
            jobs = {job.id: job for job in client.list_jobs()}
            assert jobs[running].state == "interrupted" and not jobs[running].version, jobs[running]
            assert jobs[queued].state == "interrupted" and not jobs[queued].version, jobs[queued]
            assert all(job.state in ("succeeded", "interrupted") for job in jobs.values()), jobs
            tasks = {t.name: t for t in client.list_tasks()}
            assert set(tasks) == {"done-1", "done-2"}, "a job cut by the shutdown published something"
            assert tasks["done-1"].versions == (1,)
            assert _snapshot(client, ["done-1", "done-2"]) == expected
            # and the server trains again after the restart
            events = list(
                client.add_task(
                    "after", toy_examples(24), toy_examples(8, offset=99), problem_type="classification", labels=LABELS
                )
            )
            assert events[-1].kind == "done"
    finally:
        restarted.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_idle_server_stops_promptly_on_a_signal(procs: Launcher, tmp_path: Path, sig: signal.Signals) -> None:
    proc = _start(procs, tmp_path / "store", tmp_path / "cwd")
    started = time.monotonic()
    proc.signal(sig)
    assert proc.wait(GRACE_S + 30) == 0
    assert time.monotonic() - started < 5
    assert f"received {sig.name}, shutting down" in proc.log_text()
    # the store lock was released: a new server opens the same store at once
    again = _start(procs, tmp_path / "store", tmp_path / "cwd")
    again.kill()
