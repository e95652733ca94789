"""/metrics, scraped over HTTP from a fresh server, accounts exactly for the traffic the test sent."""

from __future__ import annotations

import pytest

from tests.integration.helpers import PROBE_INPUTS, ServerHandle, client_code, scrape, train_toy, wait_until

pytestmark = pytest.mark.integration

CALLS = {"a": 3, "b": 2}  # Predict calls per task
INPUTS_PER_CALL = 5


def test_metrics_account_for_the_traffic_sent(server: ServerHandle) -> None:
    client = server.client
    before = scrape(server.metrics_port)
    assert before.value("taskpatch_tasks_stored") == 0
    assert before.value("taskpatch_rpc_requests_total", rpc="Predict", code="OK") == 0

    for name in CALLS:
        train_toy(client, name)
    inputs = list(PROBE_INPUTS[:INPUTS_PER_CALL])
    for name, calls in CALLS.items():
        for _ in range(calls):
            assert len(client.predict(name, inputs).predictions) == INPUTS_PER_CALL
    assert client_code(lambda: client.predict("nosuchtask", inputs)) == "NOT_FOUND"
    assert client_code(lambda: client.get_task("nosuchtask")) == "NOT_FOUND"
    assert client_code(lambda: client.predict("a", [])) == "INVALID_ARGUMENT"

    m = scrape(server.metrics_port)
    predict_calls = sum(CALLS.values())
    assert m.value("taskpatch_rpc_requests_total", rpc="Predict", code="OK") == predict_calls
    assert m.value("taskpatch_rpc_requests_total", rpc="Predict", code="NOT_FOUND") == 1
    assert m.value("taskpatch_rpc_requests_total", rpc="Predict", code="INVALID_ARGUMENT") == 1
    assert m.value("taskpatch_rpc_requests_total", rpc="GetTask", code="NOT_FOUND") == 1
    assert m.value("taskpatch_rpc_requests_total", rpc="AddTask", code="OK") == len(CALLS)
    assert m.value("taskpatch_rpc_latency_seconds_count", rpc="Predict") == predict_calls + 2
    assert m.value("taskpatch_predict_examples_total", method="bitfit") == predict_calls * INPUTS_PER_CALL

    assert m.value("taskpatch_training_jobs_finished_total", state="succeeded") == len(CALLS)
    assert m.value("taskpatch_training_jobs_finished_total", state="failed") == 0
    assert m.value("taskpatch_training_jobs", state="succeeded") == len(CALLS)
    assert m.value("taskpatch_training_jobs", state="running") == 0
    assert m.value("taskpatch_training_examples_total", method="bitfit") > 0

    assert m.value("taskpatch_tasks_stored") == len(CALLS)
    assert m.value("taskpatch_tasks_unhealthy") == 0
    assert m.value("taskpatch_store_bytes") > 0
    assert m.value("taskpatch_resident_patches") == len(CALLS)
    assert m.value("taskpatch_patch_loads_total") == len(CALLS)
    assert m.value("taskpatch_queue_depth_requests") == 0

    # Every predicted example went through exactly one serving forward pass.
    assert m.value("taskpatch_batch_size_examples_count") > 0
    assert m.value("taskpatch_batch_size_examples_sum") == predict_calls * INPUTS_PER_CALL
    assert m.value("taskpatch_forward_latency_seconds_count") == m.value("taskpatch_batch_size_examples_count")

    (info,) = m.find("taskpatch_backbone_info")
    assert info[0]["backbone_id"] == "tiny-random-bert:0"
    assert info[0]["pooling"] == "mean"
    assert info[1] == 1
    assert m.value("taskpatch_backbone_parameters") > 0

    client.delete_task("b")
    after = scrape(server.metrics_port)
    assert after.value("taskpatch_tasks_stored") == len(CALLS) - 1
    assert after.value("taskpatch_rpc_requests_total", rpc="DeleteTask", code="OK") == 1
    # The engine drops a deleted task's patch when its worker hears of the change (asynchronously).
    wait_until(lambda: scrape(server.metrics_port).value("taskpatch_resident_patches") == len(CALLS) - 1)
