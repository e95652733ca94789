"""Task versions (replace, rollback), pinning, deletion, and moving a patch between servers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.helpers import PROBE_INPUTS, ServerHandle, Servers, client_code, probabilities, train_toy

pytestmark = pytest.mark.integration


def test_replace_then_rollback_serves_the_old_patch_bit_for_bit(server: ServerHandle) -> None:
    client = server.client
    train_toy(client, "task", seed=0)
    v1 = client.predict("task", PROBE_INPUTS)
    assert v1.version == 1

    assert train_toy(client, "task", replace=True, seed=1, learning_rate=0.05)[-1].version == 2
    v2 = client.predict("task", PROBE_INPUTS)
    assert v2.version == 2
    assert probabilities(v2) != probabilities(v1)
    info = client.get_task("task")
    assert info.version == 2 and info.versions == (1, 2)

    rolled = client.rollback_task("task")
    assert rolled.version == 1 and rolled.versions == (1, 2)
    again = client.predict("task", PROBE_INPUTS)
    assert again.version == 1
    assert probabilities(again) == probabilities(v1)
    assert client.get_task("task").version == 1

    assert client.rollback_task("task", 2).version == 2  # forward again, by number
    forward = client.predict("task", PROBE_INPUTS)
    assert forward.version == 2
    assert probabilities(forward) == probabilities(v2)


def test_a_replace_after_a_rollback_gets_a_new_version_number(server: ServerHandle) -> None:
    client = server.client
    train_toy(client, "task")
    train_toy(client, "task", replace=True, seed=1)
    client.rollback_task("task")
    assert train_toy(client, "task", replace=True, seed=2)[-1].version == 3
    info = client.get_task("task")
    assert info.version == 3 and info.versions == (1, 2, 3)
    assert client.predict("task", ["hello"]).version == 3


def test_pin_and_unpin_are_reflected_in_the_task(server: ServerHandle) -> None:
    client = server.client
    train_toy(client, "task")
    assert client.get_task("task").pinned is False

    pinned = client.pin_task("task")
    assert pinned.pinned is True and pinned.resident is True  # pinning loads the patch
    assert client.get_task("task").pinned is True
    assert [t.pinned for t in client.list_tasks()] == [True]
    assert client.predict("task", ["hello"]).version == 1

    assert client.pin_task("task", False).pinned is False
    assert client.get_task("task").pinned is False


def test_a_deleted_task_is_gone(server: ServerHandle) -> None:
    client = server.client
    train_toy(client, "doomed")
    train_toy(client, "kept")
    assert client.predict("doomed", ["hello"]).version == 1  # resident before the delete

    client.delete_task("doomed")
    assert client_code(lambda: client.predict("doomed", ["hello"])) == "NOT_FOUND"
    assert client_code(lambda: client.get_task("doomed")) == "NOT_FOUND"
    assert client_code(lambda: client.delete_task("doomed")) == "NOT_FOUND"
    assert [t.name for t in client.list_tasks()] == ["kept"]
    assert client.predict("kept", ["hello"]).version == 1

    # The name is free again: a new task starts at version 1, not after the deleted one's versions.
    assert train_toy(client, "doomed", seed=3)[-1].version == 1


def test_export_and_import_between_servers_gives_identical_predictions(servers: Servers, tmp_path: Path) -> None:
    source = servers.start()
    target = servers.start()
    train_toy(source.client, "original")
    expected = source.client.predict("original", PROBE_INPUTS)

    patch = tmp_path / "original.safetensors"
    size = source.client.export_task("original", patch)
    assert size == patch.stat().st_size > 0
    assert size == source.client.get_task("original").patch_bytes

    imported = target.client.import_task(patch, "copy")
    assert imported.name == "copy" and imported.version == 1 and imported.healthy
    assert imported.labels == expected.labels
    got = target.client.predict("copy", PROBE_INPUTS)
    assert got.task == "copy" and got.version == 1
    assert probabilities(got) == probabilities(expected)
    assert [p.label for p in got.predictions] == [p.label for p in expected.predictions]

    # Without a name the patch keeps the one it was trained under.
    assert target.client.import_task(patch).name == "original"
    assert probabilities(target.client.predict("original", PROBE_INPUTS)) == probabilities(expected)
    assert sorted(t.name for t in target.client.list_tasks()) == ["copy", "original"]
