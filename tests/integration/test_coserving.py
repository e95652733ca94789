"""Serving keeps running while other tasks train, and a served task's outputs never move by a single bit."""

from __future__ import annotations

import threading

import pytest

from tests.integration.helpers import (
    LABELS,
    PROBE_INPUTS,
    ServerHandle,
    probabilities,
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
    print("OVERLAP", predicted_while_running, len(during))
    assert predicted_while_running > 0, "no prediction overlapped a RUNNING training job"
    for rows in [*before, *during, *after]:
        assert rows == reference  # exact float equality, row by row
    assert {t.name for t in client.list_tasks()} == {"a", *OTHER_TASKS}
    assert client.predict("a", PROBE_INPUTS).version == 1
