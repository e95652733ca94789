"""Training jobs: detached submission, watching, cancelling, listing, and jobs outliving their client's stream."""

from __future__ import annotations

import pytest

from tests.integration.helpers import (
    LABELS,
    ServerHandle,
    client_code,
    finish,
    internal_or_unknown,
    scrape,
    start_blocker,
    submit_detached,
    toy_examples,
    train_toy,
)

pytestmark = pytest.mark.integration


def test_detach_returns_once_queued_and_watch_follows_the_job_to_done(server: ServerHandle) -> None:
    client = server.client
    events = list(
        client.add_task(
            "detached",
            toy_examples(120),
            toy_examples(40, offset=10_000),
            problem_type="classification",
            labels=LABELS,
            epochs=1,
            detach=True,
        )
    )
    assert [(e.kind, e.state) for e in events] == [("queued", "queued")]
    assert events[0].queued_position == 0
    job_id = events[0].job_id

    watched = list(client.watch_job(job_id))
    kinds = [e.kind for e in watched]
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "done"
    assert "evaluation" in kinds
    assert watched[-1].version == 1 and watched[-1].state == "succeeded"

    job = client.get_job(job_id)
    assert job.task == "detached" and job.method == "bitfit"
    assert job.state == "succeeded" and job.finished
    assert job.version == 1 and job.error is None
    assert job.metrics == watched[-1].metrics
    assert job.created_unix is not None and job.started_unix is not None and job.finished_unix is not None
    assert job.created_unix <= job.started_unix <= job.finished_unix
    assert client.get_task("detached").version == 1

    # A finished job's stream replays its history and ends.
    assert [e.kind for e in client.watch_job(job_id)] == kinds


def test_cancelling_a_running_job_publishes_nothing(server: ServerHandle) -> None:
    client = server.client
    train_toy(client, "keep")
    before = client.get_task("keep")

    job_id = start_blocker(client, "keep", replace=True)
    assert client.get_job(job_id).state == "running"
    client.cancel_job(job_id)
    last = finish(client, job_id)

    assert last.kind == "cancelled" and last.state == "cancelled"
    job = client.get_job(job_id)
    assert job.state == "cancelled" and job.version is None
    after = client.get_task("keep")
    assert after.versions == (1,) and after.version == 1
    assert after.content_sha256 == before.content_sha256
    assert client.predict("keep", ["hello"]).version == 1
    assert client.cancel_job(job_id).state == "cancelled"  # cancelling a finished job changes nothing

    fresh = start_blocker(client, "fresh")
    client.cancel_job(fresh)
    assert finish(client, fresh).kind == "cancelled"
    assert client_code(lambda: client.get_task("fresh")) == "NOT_FOUND"
    assert [t.name for t in client.list_tasks()] == ["keep"]


def test_list_jobs_shows_each_jobs_state(server: ServerHandle) -> None:
    client = server.client
    done_id = train_toy(client, "first")[0].job_id
    running_id = start_blocker(client, "runner")
    queued_id = submit_detached(client, "waiter")

    jobs = {job.id: job for job in client.list_jobs()}
    assert list(jobs) == [done_id, running_id, queued_id]  # oldest first
    assert {job_id: job.state for job_id, job in jobs.items()} == {
        done_id: "succeeded",
        running_id: "running",
        queued_id: "queued",
    }
    assert jobs[queued_id].queue_position == 0
    assert jobs[running_id].queue_position is None
    assert jobs[done_id].version == 1

    assert client.cancel_job(queued_id).state == "cancelled"  # a queued job is cancelled at once
    assert finish(client, queued_id).kind == "cancelled"
    client.cancel_job(running_id)
    assert finish(client, running_id).kind == "cancelled"

    states = {job.id: job.state for job in client.list_jobs()}
    assert states == {done_id: "succeeded", running_id: "cancelled", queued_id: "cancelled"}
    assert [t.name for t in client.list_tasks()] == ["first"]


def test_a_dropped_add_task_stream_does_not_stop_the_job(server: ServerHandle) -> None:
    client = server.client
    events = client.add_task(
        "dropped",
        toy_examples(1200),
        toy_examples(40, offset=10_000),
        problem_type="classification",
        labels=LABELS,
        epochs=1,
        batch_size=8,
    )
    seen = []
    for event in events:
        seen.append(event.kind)
        if event.kind == "started":
            break
    events.close()  # type: ignore[attr-defined]  # cancels the RPC: the client is gone
    assert seen == ["queued", "started"]
    job_id = client.list_jobs()[0].id

    last = finish(client, job_id)
    assert last.kind == "done" and last.version == 1
    assert client.get_job(job_id).state == "succeeded"
    task = client.get_task("dropped")
    assert task.version == 1
    assert client.predict("dropped", ["hello"]).version == 1
    assert internal_or_unknown(scrape(server.metrics_port)) == []


def test_data_fraction_trains_on_a_share_of_the_train_split(server: ServerHandle) -> None:
    events = train_toy(server.client, "half", n_train=120, data_fraction=0.5)
    assert events[-1].train_examples == 60
    assert server.client.get_task("half").training["data_fraction"] == 0.5
