"""A server restarted on the same store serves the same tasks bit for bit, and reports jobs it cut short."""

from __future__ import annotations

from pathlib import Path

import pytest

from client.types import JobEvent
from server.errors import FailedPrecondition
from tests.integration.helpers import (
    LABELS,
    PROBE_INPUTS,
    ServerHandle,
    Servers,
    client_code,
    finish,
    probabilities,
    start_blocker,
    submit_detached,
    toy_examples,
    toy_regression,
    train_toy,
)

pytestmark = pytest.mark.integration


def test_tasks_and_predictions_survive_a_restart(servers: Servers, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = servers.start(store_dir=store)
    client = first.client
    train_toy(client, "a")
    train_toy(client, "a", replace=True, seed=1)
    client.rollback_task("a")  # the current-version pointer must survive too
    events = list(
        client.add_task(
            "score",
            toy_regression(80),
            toy_regression(20, offset=100),
            problem_type="regression",
            epochs=1,
        )
    )
    assert events[-1].kind == "done"
    expected_a = probabilities(client.predict("a", PROBE_INPUTS))
    expected_score = [p.value for p in client.predict("score", PROBE_INPUTS).predictions]
    tasks_before = {t.name: (t.version, t.versions, t.content_sha256) for t in client.list_tasks()}
    jobs_before = {j.id: j.state for j in client.list_jobs()}
    servers.stop(first)

    second = servers.start(store_dir=store)
    client = second.client
    assert {t.name: (t.version, t.versions, t.content_sha256) for t in client.list_tasks()} == tasks_before
    assert tasks_before["a"][:2] == (1, (1, 2))
    a = client.predict("a", PROBE_INPUTS)
    assert a.version == 1
    assert probabilities(a) == expected_a
    assert [p.value for p in client.predict("score", PROBE_INPUTS).predictions] == expected_score
    assert {j.id: j.state for j in client.list_jobs()} == jobs_before == dict.fromkeys(jobs_before, "succeeded")


def test_stopping_during_training_leaves_the_job_interrupted_and_unpublished(servers: Servers, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = servers.start(store_dir=store)
    client = first.client
    train_toy(client, "keep")
    expected = probabilities(client.predict("keep", PROBE_INPUTS))
    running = start_blocker(client, "keep", replace=True)
    queued = submit_detached(client, "later")
    assert client.get_job(running).state == "running"
    assert client.get_job(queued).state == "queued"

    first.server.stop(grace_s=5)  # what SIGTERM does
    servers.stop(first)

    second = servers.start(store_dir=store)
    client = second.client
    jobs = {job.id: job for job in client.list_jobs()}
    assert {job_id: job.state for job_id, job in jobs.items() if job_id in (running, queued)} == {
        running: "interrupted",
        queued: "interrupted",
    }
    for job_id in (running, queued):
        assert jobs[job_id].version is None
        assert jobs[job_id].error
        assert finish(client, job_id).state == "interrupted"
    keep = client.get_task("keep")
    assert keep.versions == (1,) and keep.version == 1
    assert client_code(lambda: client.get_task("later")) == "NOT_FOUND"
    assert probabilities(client.predict("keep", PROBE_INPUTS)) == expected

    # The store is usable: the interrupted job can be resubmitted and publishes version 2.
    assert train_toy(client, "keep", replace=True, seed=5)[-1].version == 2


def test_a_client_following_a_job_sees_it_interrupted_at_shutdown(servers: Servers, tmp_path: Path) -> None:
    handle = servers.start(store_dir=tmp_path / "store")
    events = handle.client.add_task(
        "followed",
        toy_examples(600),
        toy_examples(20, offset=10_000),
        problem_type="classification",
        labels=LABELS,
        epochs=200,
        batch_size=4,
        time_budget_s=120.0,
    )
    seen = []
    for event in events:
        seen.append(event)
        if event.kind == "started":
            handle.server.stop(grace_s=5)  # the open stream must end with the job's last event, not an error
    assert [e.kind for e in seen[:2]] == ["queued", "started"]
    assert seen[-1].terminal and seen[-1].state == "interrupted"


@pytest.fixture
def finished_jobs_then_restart(servers: Servers, tmp_path: Path) -> tuple[ServerHandle, dict[str, JobEvent]]:
    """A succeeded job and a cancelled job, their last events as first seen, and a server restarted after them."""
    store = tmp_path / "store"
    first = servers.start(store_dir=store)
    done_id = train_toy(first.client, "a")[0].job_id
    cancelled_id = start_blocker(first.client, "b")
    first.client.cancel_job(cancelled_id)
    live = {job_id: finish(first.client, job_id) for job_id in (done_id, cancelled_id)}
    assert [live[done_id].kind, live[cancelled_id].kind] == ["done", "cancelled"]
    servers.stop(first)
    return servers.start(store_dir=store), live


def test_restart_keeps_finished_jobs(finished_jobs_then_restart: tuple[ServerHandle, dict[str, JobEvent]]) -> None:
    second, live = finished_jobs_then_restart
    done_id, cancelled_id = live
    job = second.client.get_job(done_id)
    assert job.state == "succeeded" and job.version == 1 and job.metrics == live[done_id].metrics
    cancelled = second.client.get_job(cancelled_id)
    assert cancelled.state == "cancelled" and cancelled.version is None
    assert [j.id for j in second.client.list_jobs()] == [done_id, cancelled_id]


def test_restart_replays_a_succeeded_jobs_done_event(
    finished_jobs_then_restart: tuple[ServerHandle, dict[str, JobEvent]],
) -> None:
    second, live = finished_jobs_then_restart
    done_id = next(iter(live))
    replayed = finish(second.client, done_id)
    assert (replayed.kind, replayed.state) == ("done", "succeeded")
    assert replayed.version == live[done_id].version == 1
    assert replayed.metrics == live[done_id].metrics


def test_restart_replays_a_cancelled_jobs_cancelled_event(
    finished_jobs_then_restart: tuple[ServerHandle, dict[str, JobEvent]],
) -> None:
    second, live = finished_jobs_then_restart
    cancelled_id = list(live)[1]
    replayed = finish(second.client, cancelled_id)
    assert (replayed.kind, replayed.state) == ("cancelled", "cancelled")


def test_pinned_tasks_are_loaded_at_start(servers: Servers, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = servers.start(store_dir=store)
    train_toy(first.client, "hot")
    train_toy(first.client, "cold")
    servers.stop(first)

    second = servers.start(store_dir=store, pinned=("hot",))
    tasks = {t.name: (t.pinned, t.resident) for t in second.client.list_tasks()}
    assert tasks == {"hot": (True, True), "cold": (False, False)}


def test_a_store_in_use_refuses_a_second_server(servers: Servers, tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = servers.start(store_dir=store)
    train_toy(first.client, "a")
    with pytest.raises(FailedPrecondition, match="in use by another server"):
        servers.start(store_dir=store)
    assert first.client.predict("a", ["hello"]).version == 1
