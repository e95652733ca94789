"""PatchStore: versions, pointer moves, crash safety, damaged stores, locking, names, subscribers, import."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from server.errors import BackboneMismatch, FailedPrecondition, InvalidArgument, NotFound, PatchCorrupt
from server.store.format import PatchMeta, content_hash, write_patch_file
from server.store.store import PatchStore, version_filename

from .helpers import FINGERPRINT, OTHER_FINGERPRINT, make_meta, make_tensors

Snapshot = Callable[[Path], dict[str, bytes]]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(root: Path) -> Iterator[PatchStore]:
    with PatchStore(root, FINGERPRINT) as opened:
        yield opened


def _reopen(store: PatchStore, **kwargs: bool) -> PatchStore:
    store.close()
    return PatchStore(store.root, FINGERPRINT, **kwargs)


def _task_dir(root: Path, name: str) -> Path:
    return root / "tasks" / name


def _visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ----------------------------------------------------------------------------------------------- publish etc.
def test_publish_creates_versions_and_moves_current(store: PatchStore, meta: PatchMeta) -> None:
    first = store.publish("sst2", make_tensors(1), meta)
    second = store.publish("sst2", make_tensors(2), meta)
    assert (first.version, second.version) == (1, 2)
    task_dir = _task_dir(store.root, "sst2")
    assert _visible(task_dir) == ["CURRENT", "v000001.safetensors", "v000002.safetensors"]
    assert (task_dir / "CURRENT").read_text() == "2 2\n"  # current, newest committed
    assert second.path == task_dir / "v000002.safetensors" and second.bytes == second.path.stat().st_size
    assert second.meta.content_sha256 == content_hash(make_tensors(2))
    assert store.current("sst2") == second
    record = store.get("sst2")
    assert record.healthy and record.versions == (1, 2) and record.problem == ""
    tensors, version = store.load("sst2")
    assert version.version == 2 and all(torch.equal(tensors[k], v) for k, v in make_tensors(2).items())
    old, old_version = store.load("sst2", 1)
    assert old_version.version == 1 and torch.equal(old["head.weight"], make_tensors(1)["head.weight"])
    assert store.total_bytes() == first.bytes + second.bytes


def test_publish_refuses_other_backbone(store: PatchStore, tensors: dict[str, torch.Tensor]) -> None:
    with pytest.raises(BackboneMismatch, match="patch made for backbone"):
        store.publish("sst2", tensors, make_meta(OTHER_FINGERPRINT))
    assert not store.exists("sst2") and _visible(store.root / "tasks") == []


def test_list_exists_and_not_found(store: PatchStore, tensors: dict[str, torch.Tensor], meta: PatchMeta) -> None:
    for name in ("mnli", "cola", "sst2"):
        store.publish(name, tensors, meta)
    assert [r.name for r in store.list()] == ["cola", "mnli", "sst2"]
    assert store.exists("cola") and not store.exists("qqp")
    for call in (store.get, store.current, store.load, store.delete, store.rollback):
        with pytest.raises(NotFound, match="qqp"):
            call("qqp")
    with pytest.raises(NotFound, match="no version 7"):
        store.load("cola", 7)


# ------------------------------------------------------------------------------------------------- rollback
def test_rollback_to_previous_and_explicit(store: PatchStore, meta: PatchMeta) -> None:
    for seed in (1, 2, 3):
        store.publish("sst2", make_tensors(seed), meta)
    assert store.rollback("sst2").version == 2
    assert store.current("sst2").version == 2
    assert store.rollback("sst2").version == 1
    with pytest.raises(FailedPrecondition, match="no version earlier than v1"):
        store.rollback("sst2")
    assert store.rollback("sst2", 3).version == 3  # forward again: a pointer move, nothing was deleted
    assert (_task_dir(store.root, "sst2") / "CURRENT").read_text() == "3 3\n"
    assert store.get("sst2").versions == (1, 2, 3)
    with pytest.raises(NotFound, match="no version 9"):
        store.rollback("sst2", 9)
    with pytest.raises(InvalidArgument):
        store.rollback("sst2", 0)
    tensors, _ = store.load("sst2")
    assert torch.equal(tensors["head.weight"], make_tensors(3)["head.weight"])


def test_rollback_with_single_version_fails(store: PatchStore, tensors: dict[str, torch.Tensor]) -> None:
    store.publish("sst2", tensors, make_meta())
    with pytest.raises(FailedPrecondition, match="no version earlier"):
        store.rollback("sst2")


def test_rollback_refuses_damaged_target(store: PatchStore, meta: PatchMeta) -> None:
    store.publish("sst2", make_tensors(1), meta)
    store.publish("sst2", make_tensors(2), meta)
    v1 = _task_dir(store.root, "sst2") / version_filename(1)
    data = bytearray(v1.read_bytes())
    data[-1] ^= 0xFF
    v1.write_bytes(bytes(data))
    with pytest.raises(PatchCorrupt, match="cannot roll back task 'sst2' to v1: content hash mismatch"):
        store.rollback("sst2")
    assert store.current("sst2").version == 2


def test_publish_and_rollback_repair_unhealthy_task(store: PatchStore, meta: PatchMeta) -> None:
    store.publish("sst2", make_tensors(1), meta)
    store.publish("sst2", make_tensors(2), meta)
    (_task_dir(store.root, "sst2") / "CURRENT").unlink()
    store = _reopen(store)
    try:
        assert store.get("sst2").problem == "current pointer missing"
        with pytest.raises(FailedPrecondition, match="current pointer missing; name the version"):
            store.rollback("sst2")
        assert store.rollback("sst2", 1).version == 1
        assert store.get("sst2").healthy
        assert store.publish("sst2", make_tensors(3), meta).version == 3
    finally:
        store.close()


# --------------------------------------------------------------------------------------------------- delete
def test_delete(store: PatchStore, tensors: dict[str, torch.Tensor], meta: PatchMeta) -> None:
    store.publish("sst2", tensors, meta)
    store.publish("sst2", tensors, meta)
    store.publish("cola", tensors, meta)
    store.delete("sst2")
    assert not _task_dir(store.root, "sst2").exists()
    assert _visible(store.root / "tasks") == ["cola"]  # no trash left behind
    assert not store.exists("sst2")
    with pytest.raises(NotFound):
        store.get("sst2")
    with pytest.raises(NotFound):
        store.delete("sst2")
    assert [r.name for r in store.list()] == ["cola"]
    # a new task under the old name starts again at v1
    assert store.publish("sst2", tensors, meta).version == 1


# ---------------------------------------------------------------------------------------------------- names
BAD_NAMES = ["../x", "/etc/passwd", "a\x00b", "A" * 200, "ѕtsb", "", "..", ".hidden", "a/b", "Sst2", "x" * 64]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_names_rejected_everywhere(
    tmp_path: Path, store: PatchStore, tensors: dict[str, torch.Tensor], meta: PatchMeta, name: str
) -> None:
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(InvalidArgument, match="invalid task name"):
        store.publish(name, tensors, meta)
    for call in (store.get, store.current, store.load, store.exists, store.delete, store.rollback):
        with pytest.raises(InvalidArgument, match="invalid task name"):
            call(name)
    source = tmp_path / "src.safetensors"
    write_patch_file(source, tensors, meta)
    with pytest.raises(InvalidArgument, match="invalid task name"):
        store.import_file(source, name)
    source.unlink()
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert store.list() == []


# --------------------------------------------------------------------------------------------------- reopen
def test_reopen_sees_same_index(root: Path, meta: PatchMeta) -> None:
    with PatchStore(root, FINGERPRINT) as store:
        store.publish("sst2", make_tensors(1), meta)
        store.publish("sst2", make_tensors(2), meta)
        store.publish("cola", make_tensors(3), meta)
        store.rollback("sst2")
        before = store.list()
        total = store.total_bytes()
    for verify in (True, False):
        with PatchStore(root, FINGERPRINT, verify_on_open=verify) as reopened:
            assert reopened.list() == before
            assert reopened.total_bytes() == total
            assert reopened.current("sst2").version == 1


def test_second_store_on_same_root_is_refused(root: Path) -> None:
    with PatchStore(root, FINGERPRINT), pytest.raises(FailedPrecondition, match="in use by another server"):
        PatchStore(root, FINGERPRINT)
    with PatchStore(root, FINGERPRINT):  # released on close
        pass


def test_closed_store_refuses_calls(root: Path) -> None:
    store = PatchStore(root, FINGERPRINT)
    store.close()
    store.close()  # idempotent
    with pytest.raises(FailedPrecondition, match="closed"):
        store.list()


# --------------------------------------------------------------------------------------------- damaged store
def _damage_truncated(task_dir: Path) -> None:
    path = task_dir / version_filename(2)
    path.write_bytes(path.read_bytes()[:-7])


def _damage_missing_current(task_dir: Path) -> None:
    (task_dir / "CURRENT").unlink()


def _damage_pointer_to_missing(task_dir: Path) -> None:
    (task_dir / "CURRENT").write_text("5\n")


def _damage_pointer_garbage(task_dir: Path) -> None:
    (task_dir / "CURRENT").write_bytes(b"\xffhello\n")


def _damage_other_backbone(task_dir: Path) -> None:
    write_patch_file(task_dir / version_filename(2), make_tensors(), make_meta(OTHER_FINGERPRINT))


def _rewrite_header(path: Path, key: str, value: str | None) -> None:
    with safetensors.safe_open(str(path), framework="pt") as handle:
        header = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    if value is None:
        del header[key]
    else:
        header[key] = value
    path.write_bytes(safetensors.torch.save(tensors, metadata=header))


def _damage_format_version(task_dir: Path) -> None:
    _rewrite_header(task_dir / version_filename(2), "format_version", "99")


def _damage_missing_key(task_dir: Path) -> None:
    _rewrite_header(task_dir / version_filename(2), "head", None)


def _damage_unreadable(task_dir: Path) -> None:
    # chmod 000 does not stop root; a directory where the file should be is unreadable for everyone.
    path = task_dir / version_filename(2)
    path.unlink()
    path.mkdir()
    (path / "keep").write_text("user data")


def _damage_garbage(task_dir: Path) -> None:
    (task_dir / version_filename(2)).write_bytes(b"this is not a patch" * 10)


DAMAGE = {
    "truncated": (_damage_truncated, "v2: truncated or not a safetensors file"),
    "missing-current": (_damage_missing_current, "current pointer missing"),
    "pointer-to-missing": (_damage_pointer_to_missing, "current pointer names v5, which is not on disk"),
    "pointer-garbage": (_damage_pointer_garbage, "current pointer is not a version number: b'\\xffhello\\n'"),
    "other-backbone": (
        _damage_other_backbone,
        f"patch made for backbone {OTHER_FINGERPRINT[:12]}… (tiny-bert) but server runs {FINGERPRINT[:12]}…",
    ),
    "format-version": (_damage_format_version, "v2: unknown format version 99 (this server reads version 1)"),
    "missing-key": (_damage_missing_key, "v2: metadata key(s) missing: head"),
    "unreadable": (_damage_unreadable, "v2: unreadable: is a directory, not a file"),
    "garbage": (_damage_garbage, "v2: truncated or not a safetensors file"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_task_is_reported_not_fatal(
    root: Path, tensors: dict[str, torch.Tensor], meta: PatchMeta, tree_snapshot: Snapshot, case: str
) -> None:
    damage, problem = DAMAGE[case]
    with PatchStore(root, FINGERPRINT) as store:
        store.publish("cola", tensors, meta)
        store.publish("sst2", make_tensors(1), meta)
        store.publish("sst2", make_tensors(2), meta)
        store.publish("zeta", tensors, meta)
    damage(_task_dir(root, "sst2"))
    before = tree_snapshot(root)
    with PatchStore(root, FINGERPRINT) as store:
        record = store.get("sst2")
        assert not record.healthy and record.current is None
        assert record.problem.startswith(problem), record.problem
        assert record.versions == (1, 2)
        assert [(r.name, r.healthy) for r in store.list()] == [("cola", True), ("sst2", False), ("zeta", True)]
        # A foreign patch is a precondition problem (FAILED_PRECONDITION), damage is data loss (DATA_LOSS).
        expected = BackboneMismatch if case == "other-backbone" else PatchCorrupt
        with pytest.raises(expected):
            store.current("sst2")
        with pytest.raises(expected):
            store.load("sst2")
        store.load("sst2", 1)  # an intact older version stays loadable
        store.load("cola")
        store.load("zeta")
    assert tree_snapshot(root) == before  # no user file deleted or changed
    assert _task_dir(root, "sst2").joinpath(version_filename(2)).exists()


def test_damage_found_lazily_without_verify_on_open(root: Path, meta: PatchMeta) -> None:
    with PatchStore(root, FINGERPRINT) as store:
        store.publish("sst2", make_tensors(1), meta)
    _damage_format_version_v1(_task_dir(root, "sst2"))
    with PatchStore(root, FINGERPRINT, verify_on_open=False) as store:
        assert store.exists("sst2")
        assert store.get("sst2").problem.startswith("v1: unknown format version 99")


def _damage_format_version_v1(task_dir: Path) -> None:
    _rewrite_header(task_dir / version_filename(1), "format_version", "99")


def test_flipped_byte_found_on_load_marks_unhealthy(store: PatchStore, meta: PatchMeta) -> None:
    store.publish("sst2", make_tensors(1), meta)
    store.publish("sst2", make_tensors(2), meta)
    path = _task_dir(store.root, "sst2") / version_filename(2)
    data = bytearray(path.read_bytes())
    data[-2] ^= 0x10
    path.write_bytes(bytes(data))
    store = _reopen(store)
    try:
        assert store.get("sst2").healthy  # header check at open cannot see flipped tensor bytes
        with pytest.raises(PatchCorrupt, match="task 'sst2' v2: content hash mismatch"):
            store.load("sst2")
        record = store.get("sst2")
        assert not record.healthy and record.problem.startswith("v2: content hash mismatch")
        with pytest.raises(PatchCorrupt):
            store.current("sst2")
        assert path.exists()
        assert store.rollback("sst2").version == 1  # the way back
        assert store.get("sst2").healthy
    finally:
        store.close()


def test_empty_task_directory_is_unhealthy(root: Path) -> None:
    (root / "tasks" / "empty").mkdir(parents=True)
    with PatchStore(root, FINGERPRINT) as store:
        assert store.get("empty").problem == "no patch versions on disk"


def test_invalid_entries_in_tasks_dir_are_ignored(root: Path, tree_snapshot: Snapshot) -> None:
    (root / "tasks" / "Bad Name").mkdir(parents=True)
    (root / "tasks" / "Bad Name" / "CURRENT").write_text("1\n")
    (root / "tasks" / "afile").write_text("not a task")
    before = tree_snapshot(root)
    with PatchStore(root, FINGERPRINT) as store:
        assert store.list() == []
    assert tree_snapshot(root) == before


# ------------------------------------------------------------------------------------------- crash leftovers
def test_leftover_temp_files_removed_at_open(
    root: Path, tensors: dict[str, torch.Tensor], meta: PatchMeta, caplog: pytest.LogCaptureFixture
) -> None:
    with PatchStore(root, FINGERPRINT) as store:
        store.publish("sst2", tensors, meta)
    task_dir = _task_dir(root, "sst2")
    (task_dir / ".tmp-v000002.safetensors-abc").write_bytes(b"half a patch")
    (task_dir / ".tmp-CURRENT-abc").write_bytes(b"2")
    (root / "tasks" / ".tmp-newtask-abc").mkdir()
    (root / "tasks" / ".tmp-newtask-abc" / "v000001.safetensors").write_bytes(b"half")
    (root / "tasks" / ".trash-gone-abc").mkdir()
    with caplog.at_level(logging.WARNING, logger="server.store.store"), PatchStore(root, FINGERPRINT) as store:
        assert [r.name for r in store.list()] == ["sst2"]
        assert store.get("sst2").versions == (1,)
    assert _visible(task_dir) == ["CURRENT", "v000001.safetensors"]
    assert _visible(root / "tasks") == ["sst2"]
    assert "leftover" in caplog.text


@pytest.mark.parametrize("existing", [False, True], ids=["new-task", "existing-task"])
def test_crash_during_write_leaves_old_state(
    root: Path,
    meta: PatchMeta,
    monkeypatch: pytest.MonkeyPatch,
    tree_snapshot: Snapshot,
    existing: bool,
) -> None:
    store = PatchStore(root, FINGERPRINT)
    if existing:
        store.publish("sst2", make_tensors(1), meta)
    before = tree_snapshot(root)

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        store.publish("sst2", make_tensors(2), meta)
    monkeypatch.undo()
    assert tree_snapshot(root) == before
    assert not any(p.name.startswith(".tmp-") for p in root.rglob("*"))
    assert store.exists("sst2") == existing
    if existing:
        assert store.current("sst2").version == 1
    store = _reopen(store)
    assert store.exists("sst2") == existing
    assert store.publish("sst2", make_tensors(3), meta).version == (2 if existing else 1)
    store.close()


def test_crash_while_moving_pointer_removes_orphan_version(
    store: PatchStore, meta: PatchMeta, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.publish("sst2", make_tensors(1), meta)
    real_replace = os.replace

    def crash_on_pointer(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == "CURRENT":
            raise OSError("simulated crash on pointer")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_pointer)
    with pytest.raises(OSError, match="pointer"):
        store.publish("sst2", make_tensors(2), meta)
    assert _visible(_task_dir(store.root, "sst2")) == ["CURRENT", "v000001.safetensors"]
    assert store.current("sst2").version == 1


# ------------------------------------------------------------------------------------------------- subscribers
def test_subscribers_called_on_changes(store: PatchStore, meta: PatchMeta) -> None:
    seen: list[str] = []
    lock_free: list[bool] = []

    def on_change(name: str) -> None:
        seen.append(name)
        # called outside the store lock: another thread can use the store meanwhile
        probe = threading.Thread(target=lambda: lock_free.append(bool(store.list())))
        probe.start()
        probe.join(timeout=5)

    def broken(name: str) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(broken)  # a failing listener must not break publish or the other listeners
    store.subscribe(on_change)
    store.publish("sst2", make_tensors(1), meta)
    store.publish("sst2", make_tensors(2), meta)
    store.rollback("sst2")
    store.publish("cola", make_tensors(1), meta)
    store.delete("sst2")
    assert seen == ["sst2", "sst2", "sst2", "cola", "sst2"]
    assert len(lock_free) == 5


def test_concurrent_publishes_get_distinct_versions(store: PatchStore, meta: PatchMeta) -> None:
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for _ in range(5):
                store.publish("sst2", make_tensors(seed), meta)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert store.get("sst2").versions == tuple(range(1, 21))
    assert store.current("sst2").version == 20


# ------------------------------------------------------------------------------------------------------ import
def test_import_file_round_trip(tmp_path: Path, store: PatchStore, tensors: dict[str, torch.Tensor]) -> None:
    source = tmp_path / "exported.safetensors"
    written = write_patch_file(source, tensors, make_meta(created="2024-05-06T07:08:09Z"))
    imported = store.import_file(source)  # name from meta.training["task_name"]
    assert imported.name == "sst2" and imported.version == 1
    assert imported.meta == written  # created and hash survive the import
    renamed = store.import_file(source, "copy")
    loaded, version = store.load("copy")
    assert version == renamed
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())


def test_import_file_refusals(tmp_path: Path, store: PatchStore, tensors: dict[str, torch.Tensor]) -> None:
    foreign = tmp_path / "foreign.safetensors"
    write_patch_file(foreign, tensors, make_meta(OTHER_FINGERPRINT))
    with pytest.raises(BackboneMismatch, match=r"cannot import foreign\.safetensors: patch made for backbone"):
        store.import_file(foreign, "sst2")
    nameless = tmp_path / "nameless.safetensors"
    write_patch_file(nameless, tensors, make_meta(training={"lr": 0.1}))
    with pytest.raises(InvalidArgument, match="no task name"):
        store.import_file(nameless)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"junk")
    with pytest.raises(PatchCorrupt, match=r"cannot import broken\.safetensors"):
        store.import_file(broken, "sst2")
    with pytest.raises(NotFound):
        store.import_file(tmp_path / "missing.safetensors", "sst2")
    assert store.list() == []


def test_meta_returned_by_publish_matches_file(store: PatchStore, tensors: dict[str, torch.Tensor]) -> None:
    published = store.publish("sst2", tensors, make_meta())
    assert published.meta.created and published.meta.content_sha256 == content_hash(tensors)
    assert dataclasses.replace(published.meta, created="", content_sha256="") == make_meta()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode; the directory case covers it")
def test_unreadable_file_by_mode(root: Path, meta: PatchMeta) -> None:
    with PatchStore(root, FINGERPRINT) as store:
        store.publish("sst2", make_tensors(1), meta)
    path = _task_dir(root, "sst2") / version_filename(1)
    path.chmod(0)
    try:
        with PatchStore(root, FINGERPRINT) as store:
            assert store.get("sst2").problem.startswith("v1: unreadable")
    finally:
        path.chmod(0o644)
