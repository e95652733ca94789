"""A damaged store: the server starts, says precisely what is wrong with which task, and serves the rest.

One store holds healthy tasks and one task per kind of damage (each made the way the damage happens: a cut copy,
flipped bits, a hand-edited header, a file from another server, a lost pointer, a file from a newer writer, an
unreadable entry). A ``python -m server`` process (forked, see ``procs.py``) opens it; the checks go through the
API, the ``client tasks`` CLI and /metrics, and finally compare every file with what was there before the start.
"""

from __future__ import annotations

import dataclasses
import json
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch

from client.api import TaskPatchClient
from client.cli import run as cli_run
from client.errors import TaskPatchError
from server.store import read_patch_file, write_patch_file
from server.store.store import CURRENT_NAME, version_filename
from tests.integration.helpers import PROBE_INPUTS, client_code, internal_or_unknown
from tests.reliability.patches import publish_random, random_meta_and_tensors
from tests.reliability.procs import Launcher, ServerProcess, server_argv

pytestmark = pytest.mark.integration

HEALTHY = tuple(f"good-{i}" for i in range(4))


@dataclass(frozen=True)
class Damage:
    name: str
    problem: str  # regex the reported problem must match
    predict_code: str  # the status Predict must answer
    at_open: bool = True  # False: only a full load (hash check) can see it


DAMAGES = (
    Damage("truncated", r"^v2: truncated or not a safetensors file \(.+\)$", "DATA_LOSS"),
    Damage(
        "flipped-header", r"^v2: (truncated or not a safetensors file|metadata key .* not valid JSON)", "DATA_LOSS"
    ),
    Damage(
        "flipped-data", r"^v2: content hash mismatch \(header says [0-9a-f]{12}…, tensors hash to", "DATA_LOSS", False
    ),
    Damage("wrong-metadata", r"^v2: metadata key\(s\) missing: head$", "DATA_LOSS"),
    Damage("bad-metric", r"^v2: metric 'accuracy' is not a number: 'high'$", "DATA_LOSS"),
    Damage(
        "other-backbone",
        r"^patch made for backbone [0-9a-f]{12}… \(tiny-random-bert:1\) but server runs [0-9a-f]{12}…$",
        "FAILED_PRECONDITION",
    ),
    Damage("no-current", r"^current pointer missing$", "DATA_LOSS"),
    Damage("current-garbage", r"^current pointer is not a version number: b'two\\n'$", "DATA_LOSS"),
    Damage("current-dangling", r"^current pointer names v7, which is not on disk$", "DATA_LOSS"),
    Damage("format-v2", r"^v2: unknown format version 2 \(this server reads version 1\)$", "DATA_LOSS"),
    Damage("unreadable", r"^v2: unreadable: is a directory, not a file$", "DATA_LOSS"),
    Damage("empty-dir", r"^no patch versions on disk$", "DATA_LOSS"),
)
AT_OPEN = [d for d in DAMAGES if d.at_open]
OLD_VERSION_DAMAGED = "old-damaged"  # v1 truncated, v2 (current) fine: healthy, but v1 cannot be rolled back to


def _rewrite_header(path: Path, edit: dict[str, str | None]) -> None:
    """Re-save the patch with its ``__metadata__`` edited (value None: key removed); the tensors stay the same."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + header_len])["__metadata__"]
    for key, value in edit.items():
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    tensors = safetensors.torch.load(data)
    path.write_bytes(safetensors.torch.save(tensors, metadata=metadata))


def damage_store(store: Path) -> None:
    """Publish every task (two versions each), then damage version 2 / the pointer the way each case says."""
    names = [*HEALTHY, *(d.name for d in DAMAGES), OLD_VERSION_DAMAGED]
    publish_random(store, names, versions=2)
    tasks = store / "tasks"

    def v2(name: str) -> Path:
        return tasks / name / version_filename(2)

    data = v2("truncated").read_bytes()
    v2("truncated").write_bytes(data[: len(data) // 2])
    data = bytearray(v2("flipped-header").read_bytes())
    data[8 + data[8:].index(b"__metadata__") - 1] ^= 0x01  # the quote before the key: the header is not JSON now
    v2("flipped-header").write_bytes(bytes(data))
    data = bytearray(v2("flipped-data").read_bytes())
    data[-3] ^= 0x10  # inside the last tensor: only the content hash can tell
    v2("flipped-data").write_bytes(bytes(data))
    _rewrite_header(v2("wrong-metadata"), {"head": None})
    _rewrite_header(v2("bad-metric"), {"metrics": json.dumps({"accuracy": "high"})})
    tensors, meta = random_meta_and_tensors("other-backbone", 7, backbone="tiny:1")
    v2("other-backbone").unlink()
    write_patch_file(v2("other-backbone"), tensors, meta)
    (tasks / "no-current" / CURRENT_NAME).unlink()
    (tasks / "current-garbage" / CURRENT_NAME).write_bytes(b"two\n")
    (tasks / "current-dangling" / CURRENT_NAME).write_bytes(b"7\n")
    _rewrite_header(v2("format-v2"), {"format_version": "2"})
    v2("unreadable").unlink()
    v2("unreadable").mkdir()  # as root every file is readable: a directory is what the server cannot read
    (v2("unreadable") / "keep").write_text("an operator's note\n")
    for entry in (tasks / "empty-dir").iterdir():
        entry.unlink()
    old = tasks / OLD_VERSION_DAMAGED / version_filename(1)
    old.write_bytes(old.read_bytes()[:100])
    # Entries the store must ignore and leave alone.
    (tasks / "Not A Task").mkdir()
    (tasks / "stray-file").write_text("not a directory\n")


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every entry under ``root`` (directories as None) with its content, the lock and journal aside."""
    return {
        str(path.relative_to(root)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(root.rglob("*"))
        if path.name != ".lock" and "jobs" not in path.relative_to(root).parts
    }


@dataclass
class Damaged:
    proc: ServerProcess
    client: TaskPatchClient
    store: Path
    before: dict[str, bytes | None]


@pytest.fixture(scope="module")
def damaged(procs: Launcher, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Damaged]:
    base = tmp_path_factory.mktemp("damaged")
    store = base / "store"
    damage_store(store)
    before = snapshot(store)
    proc = procs.start(server_argv(store), cwd=base / "cwd")
    client = TaskPatchClient(proc.addr, timeout_s=30)
    try:
        yield Damaged(proc, client, store, before)
    finally:
        client.close()
        proc.kill()


def test_server_starts_and_reports_each_damage_precisely(damaged: Damaged) -> None:
    assert damaged.proc.alive()
    tasks = {t.name: t for t in damaged.client.list_tasks()}
    assert "Not A Task" not in tasks and "stray-file" not in tasks
    for name in (*HEALTHY, OLD_VERSION_DAMAGED):
        assert tasks[name].healthy and tasks[name].version == 2, tasks[name]
    for damage in AT_OPEN:
        task = tasks[damage.name]
        assert not task.healthy, damage.name
        assert task.problem and re.search(damage.problem, task.problem), (damage.name, task.problem)
        assert task.version in (0, None) or not task.healthy
    # the server log names each unhealthy task with its reason (what an operator sees first)
    log = damaged.proc.log_text()
    for damage in AT_OPEN:
        assert f"task '{damage.name}' is unhealthy" in log, damage.name


def test_healthy_tasks_keep_serving(damaged: Damaged) -> None:
    for name in (*HEALTHY, OLD_VERSION_DAMAGED):
        result = damaged.client.predict(name, list(PROBE_INPUTS))
        assert result.version == 2 and len(result.predictions) == len(PROBE_INPUTS)


def test_predict_on_a_damaged_task_gets_a_clear_status(damaged: Damaged) -> None:
    for damage in DAMAGES:
        try:
            damaged.client.predict(damage.name, ["hello"])
        except TaskPatchError as err:
            # (the foreign patch answers DATA_LOSS today: see test_predict_on_a_foreign_patch_is_failed_precondition)
            assert err.code in (damage.predict_code, "DATA_LOSS"), (damage.name, err.code, err.message)
            assert damage.name in err.message, err.message
            assert re.search(damage.problem.lstrip("^"), err.message), (damage.name, err.message)
        else:
            raise AssertionError(f"predict on {damage.name} succeeded")
    # the hash check of the first load found the flipped bits: now the task is listed unhealthy too
    flipped = damaged.client.get_task("flipped-data")
    assert not flipped.healthy and flipped.problem
    assert re.search(DAMAGES[2].problem, flipped.problem), flipped.problem


def test_predict_on_a_foreign_patch_is_failed_precondition(damaged: Damaged) -> None:
    assert client_code(lambda: damaged.client.predict("other-backbone", ["hello"])) == "FAILED_PRECONDITION"


def test_other_rpcs_on_damaged_tasks_are_not_internal(damaged: Damaged, tmp_path: Path) -> None:
    client = damaged.client
    for damage in DAMAGES:
        name = damage.name
        codes = {
            "get": client_code(lambda name=name: client.get_task(name)),
            "pin": client_code(lambda name=name: client.pin_task(name)),
            "export": client_code(lambda name=name: client.export_task(name, tmp_path / "out.safetensors")),
            "rollback-to-missing": client_code(lambda name=name: client.rollback_task(name, 99)),
        }
        assert codes["get"] == "OK", (name, codes)
        allowed = {"DATA_LOSS", "FAILED_PRECONDITION", "NOT_FOUND"}
        assert {k: v for k, v in codes.items() if k != "get" and v not in allowed} == {}, (name, codes)
    assert not (tmp_path / "out.safetensors").exists(), "a damaged patch was exported"
    err = client_code(lambda: client.rollback_task(OLD_VERSION_DAMAGED, 1))
    assert err == "DATA_LOSS"
    assert client.get_task(OLD_VERSION_DAMAGED).version == 2  # still serving v2


def test_cli_tasks_shows_the_unhealthy_tasks(
    damaged: Damaged, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # one row per task: rich wraps cells to the terminal width
    assert cli_run(["--server", damaged.proc.addr, "tasks"], {}) == 0
    out = capsys.readouterr().out
    names = {*HEALTHY, *(d.name for d in DAMAGES)}
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and line.split()[0] in names}
    assert rows.keys() == names, out
    for name in HEALTHY:
        assert re.search(r"\shealthy\s", rows[name]), rows[name]
    for damage in AT_OPEN:
        row = rows[damage.name]
        shown = re.sub(r"\s+", " ", row)
        # the problem text itself, not just a flag (its first words: the cell may be cut at the far right)
        words = damaged.client.get_task(damage.name).problem.split()[:4]  # type: ignore[union-attr]
        assert " ".join(words) in shown, (damage.name, shown)


def test_unhealthy_metric_counts_the_damaged_tasks(damaged: Damaged) -> None:
    metrics = damaged.proc.scrape()
    assert metrics.value("taskpatch_tasks_stored") == len(HEALTHY) + len(DAMAGES) + 1
    unhealthy = metrics.value("taskpatch_tasks_unhealthy")
    listed = sum(1 for t in damaged.client.list_tasks() if not t.healthy)
    # at open the header check finds all but the flipped data bits; the hash check of a load finds those later
    assert unhealthy >= len(AT_OPEN)
    assert unhealthy <= listed


def test_unhealthy_metric_counts_damage_found_by_a_load(damaged: Damaged) -> None:
    damaged.client.predict(HEALTHY[0], ["warm"])
    assert client_code(lambda: damaged.client.predict("flipped-data", ["x"])) == "DATA_LOSS"
    listed = sum(1 for t in damaged.client.list_tasks() if not t.healthy)
    assert damaged.proc.scrape().value("taskpatch_tasks_unhealthy") == listed


def test_nothing_was_deleted_or_changed(damaged: Damaged) -> None:
    after = snapshot(damaged.store)
    assert after.keys() == damaged.before.keys(), set(after) ^ set(damaged.before)
    changed = [path for path, content in after.items() if content != damaged.before[path]]
    assert changed == []


def test_no_internal_errors_and_still_alive(damaged: Damaged) -> None:
    assert damaged.proc.alive()
    assert internal_or_unknown(damaged.proc.scrape()) == []


def test_repair_by_rollback_and_by_publish(damaged: Damaged, tmp_path: Path) -> None:
    """Last (it changes the store): an operator repairs damaged tasks with the API; nothing else moves."""
    client = damaged.client
    info = client.rollback_task("truncated", 1)
    assert info.healthy and info.version == 1
    assert client.predict("truncated", ["hello"]).version == 1
    # a good patch imported under the name of the task with another backbone's version is a new version
    good = tmp_path / "good.safetensors"
    client.export_task(HEALTHY[0], good)
    info = client.import_task(good, "other-backbone")
    assert info.healthy and info.version == 3
    assert client.predict("other-backbone", ["hello"]).version == 3
    # the damaged files are still there for inspection
    assert (damaged.store / "tasks" / "truncated" / version_filename(2)).is_file()
    assert (damaged.store / "tasks" / "other-backbone" / version_filename(2)).is_file()
    _, meta = read_patch_file(damaged.store / "tasks" / "other-backbone" / version_filename(3))
    assert meta.content_sha256 == client.get_task(HEALTHY[0]).content_sha256
    assert dataclasses.asdict(meta)["backbone_fingerprint"] == client.get_task(HEALTHY[0]).backbone_fingerprint
