"""Serving keeps running while other tasks train, and a served task's outputs never move by a single bit."""

from __future__ import annotations

import threading

import pytest

from tests.integration.helpers import (
    LABELS,
    PROBE_INPUTS,
    ServerHandle,
    Servers,
    probabilities,
    scrape,
    toy_examples,
    train_toy,
)

pytestmark = pytest.mark.integration

OTHER_TASKS = ("b", "c")


def test_predictions_are_bit_identical_before_during_and_after_training_other_tasks(server: ServerHandle) -> None:
    client = server.client
    train_toy(client, "a")
    first = client.predict("a", PROBE_INPUTS)
    reference = probabilities(first)
    assert first.version == 1 and len(reference) == len(PROBE_INPUTS)
    before = [probabilities(client.predict("a", PROBE_INPUTS)) for _ in range(3)]

    job_ids: list[str] = []
    outcomes: dict[str, str] = {}
    failures: list[BaseException] = []

    def train_others() -> None:
        try:
            with server.connect() as trainer:
                for name in OTHER_TASKS:
                    # Big enough that the main thread gets many predictions in while it runs (hundreds of steps).
                    events = trainer.add_task(
                        name,
                        toy_examples(600),
                        toy_examples(50, offset=10_000),
                        problem_type="classification",
                        labels=LABELS,
                        epochs=1,
                        batch_size=8,
                        seed=7,
                        detach=False,
                    )
                    for event in events:
                        if event.kind == "queued":
                            job_ids.append(event.job_id)
                        if event.terminal:
                            outcomes[name] = event.kind
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    thread = threading.Thread(target=train_others, name="train-others")
    thread.start()
    during: list[list[tuple[float, ...]]] = []
    predicted_while_running = 0
    try:
        while thread.is_alive():
            known = list(job_ids)
            running_before = {job for job in known if client.get_job(job).state == "running"}
            result = client.predict("a", PROBE_INPUTS)
            running_after = {job for job in known if client.get_job(job).state == "running"}
            assert result.version == 1
            during.append(probabilities(result))
            if running_before & running_after:
                predicted_while_running += 1
    finally:
        thread.join()
    after = [probabilities(client.predict("a", PROBE_INPUTS)) for _ in range(3)]

    assert not failures, failures
    assert outcomes == dict.fromkeys(OTHER_TASKS, "done")
    assert len(job_ids) == len(OTHER_TASKS)
    assert predicted_while_running > 0, "no prediction overlapped a RUNNING training job"
    for rows in [*before, *during, *after]:
        assert rows == reference  # exact float equality, row by row
    assert {t.name for t in client.list_tasks()} == {"a", *OTHER_TASKS}
    assert client.predict("a", PROBE_INPUTS).version == 1


def test_concurrent_requests_for_different_tasks_share_batches_without_mixing_patches(servers: Servers) -> None:
    # A long batching window, so that requests sent together are served by one forward pass.
    handle = servers.start(max_wait_ms=100)
    client = handle.client
    tasks = ("x", "y", "z")
    for seed, name in enumerate(tasks):
        train_toy(client, name, seed=seed, learning_rate=0.05)
    solo = {name: probabilities(client.predict(name, PROBE_INPUTS)) for name in tasks}
    assert solo["x"] != solo["y"] != solo["z"]

    def burst() -> dict[str, list[tuple[float, ...]]]:
        barrier = threading.Barrier(len(tasks))
        results: dict[str, list[tuple[float, ...]]] = {}

        def predict(name: str) -> None:
            with handle.connect() as own:
                barrier.wait()
                results[name] = probabilities(own.predict(name, PROBE_INPUTS))

        threads = [threading.Thread(target=predict, args=(name,)) for name in tasks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return results

    def mixed_batches() -> float:
        m = scrape(handle.metrics_port)
        return m.value("taskpatch_batch_tasks_count") - m.value("taskpatch_batch_tasks_bucket", le="1.0")

    bursts = 0
    while mixed_batches() == 0:
        assert bursts < 20, "no forward pass ever served two tasks at once"
        results = burst()
        bursts += 1
        assert set(results) == set(tasks)
        for name in tasks:  # each row used its own task's patch: equal to the solo run up to float rounding
            for got, want in zip(results[name], solo[name], strict=True):
                assert got == pytest.approx(want, abs=1e-5)


def test_evicted_patches_reload_and_serve_the_same_outputs(servers: Servers) -> None:
    handle = servers.start(max_resident=2)  # three tasks take turns in a table of two
    client = handle.client
    tasks = ("p", "q", "r")
    for seed, name in enumerate(tasks):
        train_toy(client, name, seed=seed)
    first = {name: probabilities(client.predict(name, PROBE_INPUTS)) for name in tasks}
    for _ in range(3):
        for name in tasks:
            assert probabilities(client.predict(name, PROBE_INPUTS)) == first[name]

    m = scrape(handle.metrics_port)
    assert m.value("taskpatch_resident_patches") <= 2
    assert sum(value for _, value in m.find("taskpatch_patch_evictions_total")) > 0
    assert m.value("taskpatch_patch_loads_total") > len(tasks)
