"""Versioned, crash-safe patch store: one directory per task, one file per version, a CURRENT pointer.

Layout (see ``docs/patch-format.md``)::

    <root>/.lock                                  advisory lock: one server per store
    <root>/tasks/<name>/v000001.safetensors       immutable once written
    <root>/tasks/<name>/CURRENT                   text "1\\n", replaced atomically

Why this shape: versions are never rewritten, so rollback is a pointer move and a reader can never see a file
change under it; every write goes through :func:`~server.store.atomic.atomic_write_bytes`, so a crash leaves the
old state or the new one. Paths are built only from names that passed
:func:`~server.names.validate_task_name` and from integers, so no request can reach outside ``root``.

A damaged task never stops the store from opening: it becomes an unhealthy :class:`TaskRecord` whose ``problem``
says what is wrong, and the user's files are left exactly as they were for them to inspect.
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import torch

from server.errors import (
    BackboneMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PatchCorrupt,
    ResourceExhausted,
)
from server.names import validate_task_name
from server.store.atomic import TMP_PREFIX, atomic_write_bytes, fsync_dir
from server.store.format import (
    FORMAT_VERSION,
    PatchMeta,
    fingerprint_mismatch_message,
    read_patch_file,
    read_patch_meta,
    write_patch_file,
)

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
TASKS_DIR = "tasks"
CURRENT_NAME = "CURRENT"
#: A deleted task is first renamed to this prefix (the atomic commit point), then removed.
TRASH_PREFIX = ".trash-"
_VERSION_RE = re.compile(r"v([0-9]{6,})\.safetensors")


def version_filename(version: int) -> str:
    """``v000003.safetensors``: zero-padded so a plain ``ls`` lists versions in order."""
    return f"v{version:06d}.safetensors"


@dataclass(frozen=True)
class PatchVersion:
    """One stored version of a task's patch (header only; tensors come from :meth:`PatchStore.load`)."""

    name: str
    version: int
    path: Path
    bytes: int
    meta: PatchMeta


@dataclass(frozen=True)
class TaskRecord:
    """What the store knows about one task; ``problem`` explains why ``current`` is ``None``."""

    name: str
    current: PatchVersion | None  # None when unhealthy
    versions: tuple[int, ...]  # all versions on disk, ascending
    problem: str = ""  # "" when healthy, else a precise reason
    wrong_backbone: bool = False  # the problem is a patch made for another backbone (not damage)

    @property
    def healthy(self) -> bool:
        """True when the task has a current version that can be served."""
        return not self.problem and self.current is not None


def _unhealthy_error(record: TaskRecord) -> PatchCorrupt | BackboneMismatch:
    """A foreign patch is a precondition problem (FAILED_PRECONDITION), damage is data loss (DATA_LOSS)."""
    if record.wrong_backbone:
        return BackboneMismatch(f"task {record.name!r} cannot be served: {record.problem}")
    return PatchCorrupt(f"task {record.name!r} is unhealthy: {record.problem}")


@dataclass(frozen=True)
class _Task:
    record: TaskRecord
    disk_bytes: int  # all version files of the task, for total_bytes()


def _check_version_arg(version: object) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidArgument(f"version must be a positive integer, got {version!r}")
    return version


@contextlib.contextmanager
def _disk_errors() -> Iterator[None]:
    """A full disk is a bounded resource running out, which the caller can act on; say so instead of INTERNAL."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(f"patch store disk is full: {exc.strerror}") from exc
        raise


class PatchStore:
    """Thread-safe store of task patches under ``root``, bound to one backbone fingerprint.

    One ``threading.RLock`` guards the in-memory index and every write (simplicity over concurrency: writes are
    rare and small). Subscribers are called outside the lock, after the change is durable.
    """

    def __init__(self, root: Path, backbone_fingerprint: str, *, verify_on_open: bool = True) -> None:
        """Open (creating if needed) the store and index every task.

        ``verify_on_open=True`` reads each task's current header now (cheap) and checks format version and
        fingerprint, so ``list()`` is accurate from the start. ``False`` defers that per-task check to the first
        access of the task, for a fast start with many tasks. Content hashes are always verified on ``load()``.
        Raises :class:`FailedPrecondition` if another process (or another ``PatchStore``) holds the store.
        """
        if not backbone_fingerprint:
            raise ValueError("backbone_fingerprint must be non-empty")
        self._root = Path(root)
        self._fingerprint = backbone_fingerprint
        self._verify_on_open = verify_on_open
        self._lock = threading.RLock()
        self._subscribers: builtins.list[Callable[[str], None]] = []
        # None = task directory seen but not examined yet (verify_on_open=False).
        self._tasks: dict[str, _Task | None] = {}
        self._root.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = self._acquire_lock()
        try:
            self._tasks_dir.mkdir(exist_ok=True)
            self._open_scan()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------------------------------------- lifecycle
    @property
    def root(self) -> Path:
        """The store directory."""
        return self._root

    @property
    def backbone_fingerprint(self) -> str:
        """The fingerprint every stored patch must carry."""
        return self._fingerprint

    def close(self) -> None:
        """Release the store lock; idempotent. The store cannot be used afterwards."""
        with self._lock:
            if self._lock_fd is None:
                return
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    def __enter__(self) -> PatchStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _acquire_lock(self) -> int:
        """Exclusive ``flock`` on ``root/.lock``: two servers writing one store would race on version numbers."""
        lock_path = self._root / LOCK_NAME
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip() or "unknown"
            os.close(fd)
            raise FailedPrecondition(
                f"patch store {self._root} is in use by another server (lock {lock_path} held, pid {holder})"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The pid is only a hint for the error above; the flock itself is what excludes.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return fd

    def _check_open(self) -> None:
        if self._lock_fd is None:
            raise FailedPrecondition("patch store is closed")

    # -------------------------------------------------------------------------------------------------- paths
    @property
    def _tasks_dir(self) -> Path:
        return self._root / TASKS_DIR

    def _task_dir(self, name: str) -> Path:
        # validate again here: this is the one place paths are made from names.
        return self._tasks_dir / validate_task_name(name)

    # --------------------------------------------------------------------------------------------------- scan
    def _open_scan(self) -> None:
        """Index every task directory and clear what a crash can leave behind (it was never visible)."""
        for entry in sorted(self._tasks_dir.iterdir()):
            if entry.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
                # .tmp-<name>-*: a task being created; .trash-<name>-*: a task whose delete had committed.
                logger.warning("patch store: removing leftover %s from an interrupted write or delete", entry)
                self._remove_path(entry)
                continue
            if entry.name.startswith("."):
                continue
            try:
                validate_task_name(entry.name)
            except InvalidArgument:
                logger.warning("patch store: ignoring %s: not a valid task name", entry)
                continue
            if not entry.is_dir():
                logger.warning("patch store: ignoring %s: not a directory", entry)
                continue
            self._remove_leftover_temps(entry)
            self._tasks[entry.name] = self._scan_task(entry.name) if self._verify_on_open else None
        unhealthy = [task.record for task in self._tasks.values() if task is not None and not task.record.healthy]
        for record in unhealthy:
            logger.warning("patch store: task %r is unhealthy: %s", record.name, record.problem)
        logger.info(
            "patch store %s opened: %d tasks, %d unhealthy%s",
            self._root,
            len(self._tasks),
            len(unhealthy),
            "" if self._verify_on_open else " (headers checked on first access)",
        )

    @staticmethod
    def _remove_path(path: Path) -> None:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            logger.warning("patch store: could not remove %s: %s", path, exc)

    def _remove_leftover_temps(self, task_dir: Path) -> None:
        try:
            leftovers = [entry for entry in task_dir.iterdir() if entry.name.startswith(TMP_PREFIX)]
        except OSError:
            return  # the scan reports the unreadable directory
        for entry in leftovers:
            logger.warning("patch store: removing leftover temporary file %s from an interrupted write", entry)
            self._remove_path(entry)

    @staticmethod
    def _versions_on_disk(task_dir: Path) -> tuple[builtins.list[int], int]:
        """Ascending version numbers and their total size. Only canonical names count, so two names can never
        mean the same version; anything named like a version counts even if unreadable (the scan reports it)."""
        versions: builtins.list[int] = []
        size = 0
        for entry in os.scandir(task_dir):
            match = _VERSION_RE.fullmatch(entry.name)
            if match is None or version_filename(int(match.group(1))) != entry.name:
                continue
            versions.append(int(match.group(1)))
            with contextlib.suppress(OSError):
                if entry.is_file(follow_symlinks=False):
                    size += entry.stat(follow_symlinks=False).st_size
        versions.sort()
        return versions, size

    @staticmethod
    def _read_pointer(task_dir: Path) -> tuple[int | None, str, int | None]:
        """(current version, "", newest committed version) from CURRENT, or ``(None, reason, None)``.

        CURRENT holds ``"<current> <committed>\n"``. ``committed`` is the newest version whose publish completed;
        a version file above it was written by a publish that crashed before moving CURRENT, and nobody was ever
        told it exists. A one-number CURRENT (format of the first release) commits every version on disk."""
        try:
            raw = (task_dir / CURRENT_NAME).read_bytes()
        except FileNotFoundError:
            return None, "current pointer missing", None
        except OSError as exc:
            return None, f"current pointer unreadable: {exc.strerror or exc}", None
        parts = raw.decode("ascii", errors="replace").split()
        valid = len(raw) <= 64 and 1 <= len(parts) <= 2 and all(p.isascii() and p.isdigit() for p in parts)
        if not valid or int(parts[0]) < 1 or (len(parts) == 2 and int(parts[1]) < int(parts[0])):
            return None, f"current pointer is not a version number: {raw[:32]!r}", None
        return int(parts[0]), "", (int(parts[1]) if len(parts) == 2 else None)

    def _scan_task(self, name: str) -> _Task:
        """Build a task's record from disk alone; never raises for damage, which becomes ``problem``."""
        task_dir = self._task_dir(name)
        try:
            versions, size = self._versions_on_disk(task_dir)
        except OSError as exc:
            return _Task(TaskRecord(name, None, (), f"task directory unreadable: {exc.strerror or exc}"), 0)

        def unhealthy(problem: str) -> _Task:
            return _Task(TaskRecord(name, None, tuple(versions), problem), size)

        pointer, problem, committed = self._read_pointer(task_dir)
        if committed is not None and versions and versions[-1] > committed:
            for version in [v for v in versions if v > committed]:
                logger.warning(
                    "patch store: removing %s v%d, written by a publish that never completed", name, version
                )
                self._remove_path(task_dir / version_filename(version))
            versions = [v for v in versions if v <= committed]
        if pointer is None:
            if not versions and problem == "current pointer missing":
                problem = "no patch versions on disk"
            return unhealthy(problem)
        if pointer not in versions:
            return unhealthy(f"current pointer names v{pointer}, which is not on disk")
        path = task_dir / version_filename(pointer)
        try:
            meta = read_patch_meta(path)
            file_bytes = path.stat().st_size
        except PatchCorrupt as exc:
            return unhealthy(f"v{pointer}: {exc}")
        except OSError as exc:
            return unhealthy(f"v{pointer}: unreadable: {exc.strerror or exc}")
        if meta.backbone_fingerprint != self._fingerprint:
            message = fingerprint_mismatch_message(meta.backbone_fingerprint, self._fingerprint, meta.backbone_id)
            return _Task(TaskRecord(name, None, tuple(versions), message, wrong_backbone=True), size)
        current = PatchVersion(name=name, version=pointer, path=path, bytes=file_bytes, meta=meta)
        return _Task(TaskRecord(name, current, tuple(versions)), size)

    def _entry(self, name: str) -> _Task:
        """The indexed task (examined now if deferred); :class:`NotFound` if there is none. Caller holds the lock."""
        self._check_open()
        validate_task_name(name)
        if name not in self._tasks:
            raise NotFound(f"no task named {name!r}")
        task = self._tasks[name]
        if task is None:
            task = self._tasks[name] = self._scan_task(name)
            if not task.record.healthy:
                logger.warning("patch store: task %r is unhealthy: %s", name, task.record.problem)
        return task

    def _mark_unhealthy(
        self, name: str, seen: TaskRecord, version: int, problem: str, wrong_backbone: bool = False
    ) -> None:
        """After a failed full read of the current version: stop serving it until a publish or rollback.

        ``seen`` is the record the read started from; if the task changed meanwhile (publish, rollback, delete and
        re-create) the failure says nothing about what is current now.
        """
        task = self._tasks.get(name)
        if task is None or task.record is not seen or seen.current is None or seen.current.version != version:
            return  # an older version is damaged, or the task moved on meanwhile: the current one is unaffected
        logger.error("patch store: task %r is now unhealthy: %s", name, problem)
        record = dataclasses.replace(task.record, current=None, problem=problem, wrong_backbone=wrong_backbone)
        self._tasks[name] = dataclasses.replace(task, record=record)

    # -------------------------------------------------------------------------------------------------- reads
    def get(self, name: str) -> TaskRecord:
        """The task's record, healthy or not; :class:`NotFound` if there is no such task."""
        with self._lock:
            return self._entry(name).record

    def current(self, name: str) -> PatchVersion:
        """The version being served; :class:`NotFound` if no such task, :class:`PatchCorrupt` if unhealthy."""
        with self._lock:
            record = self._entry(name).record
            if record.current is None:
                raise _unhealthy_error(record)
            return record.current

    def list(self) -> builtins.list[TaskRecord]:
        """Every task sorted by name, unhealthy ones included (so the operator sees them)."""
        with self._lock:
            self._check_open()
            return [self._entry(name).record for name in sorted(self._tasks)]

    def exists(self, name: str) -> bool:
        """Whether a task of that name is stored (healthy or not); invalid names raise :class:`InvalidArgument`."""
        with self._lock:
            self._check_open()
            return validate_task_name(name) in self._tasks

    def total_bytes(self) -> int:
        """Bytes of every version file of every task (what the store costs on disk)."""
        with self._lock:
            self._check_open()
            return sum(self._entry(name).disk_bytes for name in self._tasks)

    def load(self, name: str, version: int | None = None) -> tuple[dict[str, torch.Tensor], PatchVersion]:
        """Read and fully verify a version (default: current), returning CPU tensors.

        The file is read outside the lock, so a large load does not stall other callers; versions are immutable,
        so nothing can change it meanwhile. If the *current* version turns out damaged, the task is marked
        unhealthy in the index (serving stops until a publish or rollback) and :class:`PatchCorrupt` is raised;
        a damaged older version raises without touching the task's health.
        """
        with self._lock:
            record = self._entry(name).record
            if version is None:
                if record.current is None:
                    raise _unhealthy_error(record)
                version = record.current.version
            elif _check_version_arg(version) not in record.versions:
                raise NotFound(f"task {name!r} has no version {version} (on disk: {list(record.versions)})")
            path = self._task_dir(name) / version_filename(version)
        try:
            tensors, meta = read_patch_file(path, expected_fingerprint=self._fingerprint)
            file_bytes = path.stat().st_size
        except (PatchCorrupt, BackboneMismatch, OSError) as exc:
            reason = str(exc) if not isinstance(exc, OSError) else f"unreadable: {exc.strerror or exc}"
            problem = reason if isinstance(exc, BackboneMismatch) else f"v{version}: {reason}"
            with self._lock:
                if name not in self._tasks:
                    raise NotFound(f"no task named {name!r} (deleted while loading)") from exc
                self._mark_unhealthy(name, record, version, problem, isinstance(exc, BackboneMismatch))
            self._notify(name)  # listeners (serving cache, health gauges) learn of the damage now
            if isinstance(exc, BackboneMismatch):
                raise BackboneMismatch(f"task {name!r}: {problem}") from exc
            raise PatchCorrupt(f"task {name!r} {problem}") from exc
        return tensors, PatchVersion(name=name, version=version, path=path, bytes=file_bytes, meta=meta)

    # ------------------------------------------------------------------------------------------------- writes
    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(task_name)`` after every publish, rollback and delete (outside the lock), so a serving
        cache can drop entries for that task."""
        with self._lock:
            self._subscribers.append(callback)

    def _notify(self, name: str) -> None:
        with self._lock:
            subscribers = builtins.list(self._subscribers)
        for callback in subscribers:
            try:
                callback(name)
            except Exception:
                # The change is already durable; a failing listener must not make it look failed to the caller.
                logger.exception("patch store: subscriber %r failed for task %r", callback, name)

    def _write_pointer(self, task_dir: Path, version: int, committed: int) -> None:
        atomic_write_bytes(task_dir / CURRENT_NAME, f"{version} {committed}\n".encode("ascii"))

    def publish(self, name: str, tensors: Mapping[str, torch.Tensor], meta: PatchMeta) -> PatchVersion:
        """Store ``tensors`` as the task's next version and make it current.

        Order matters for crash safety: the version file is complete and durable before CURRENT moves to it. A
        new task is assembled in a ``.tmp-`` directory and renamed into place, so it appears whole or not at all.
        """
        validate_task_name(name)
        if not isinstance(meta, PatchMeta):
            raise InvalidArgument(f"meta must be a PatchMeta, got {type(meta).__name__}")
        if meta.format_version != FORMAT_VERSION:
            raise InvalidArgument(
                f"cannot write format version {meta.format_version} (this server writes {FORMAT_VERSION})"
            )
        if meta.backbone_fingerprint != self._fingerprint:
            raise BackboneMismatch(
                fingerprint_mismatch_message(meta.backbone_fingerprint, self._fingerprint, meta.backbone_id)
            )
        with self._lock:
            self._check_open()
            task_dir = self._task_dir(name)
            with _disk_errors():
                if task_dir.is_dir():
                    versions, _ = self._versions_on_disk(task_dir)
                    version = max(versions, default=0) + 1
                    path = task_dir / version_filename(version)
                    written = write_patch_file(path, tensors, meta)
                    try:
                        self._write_pointer(task_dir, version, version)
                    except BaseException:
                        # CURRENT still names the old version; remove the orphan so the next publish reuses
                        # its number and nobody mistakes it for a published version.
                        with contextlib.suppress(OSError):
                            path.unlink()
                        raise
                elif task_dir.exists() or task_dir.is_symlink():
                    raise FailedPrecondition(f"cannot publish {name!r}: {task_dir} exists and is not a directory")
                else:
                    version = 1
                    path = task_dir / version_filename(version)
                    written = self._create_task(name, tensors, meta)
            self._tasks[name] = self._scan_task(name)
            published = PatchVersion(name=name, version=version, path=path, bytes=path.stat().st_size, meta=written)
        logger.info("patch store: published %s v%d (%s, %d bytes)", name, version, written.method, published.bytes)
        self._notify(name)
        return published

    def _create_task(self, name: str, tensors: Mapping[str, torch.Tensor], meta: PatchMeta) -> PatchMeta:
        staging = self._tasks_dir / f"{TMP_PREFIX}{name}-{secrets.token_hex(6)}"
        staging.mkdir()
        try:
            written = write_patch_file(staging / version_filename(1), tensors, meta)
            self._write_pointer(staging, 1, 1)
            os.rename(staging, self._task_dir(name))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fsync_dir(self._tasks_dir)
        return written

    def rollback(self, name: str, version: int | None = None) -> PatchVersion:
        """Point CURRENT at ``version``, or at the newest version older than the current one.

        The target is fully verified first, so a rollback never makes a task serve a damaged or foreign patch.
        With no ``version`` and an unreadable CURRENT, the caller must name the version (we cannot tell what
        "previous" means). Works on unhealthy tasks: it is how an operator repairs one.
        """
        with self._lock:
            self._entry(name)
            task_dir = self._task_dir(name)
            versions = self._scan_task(name).record.versions  # fresh from disk, not the cached index
            if version is None:
                pointer, problem, _ = self._read_pointer(task_dir)
                if pointer is None:
                    raise FailedPrecondition(f"cannot roll back task {name!r}: {problem}; name the version to use")
                earlier = [v for v in versions if v < pointer]
                if not earlier:
                    raise FailedPrecondition(f"task {name!r} has no version earlier than v{pointer} to roll back to")
                target = earlier[-1]
            else:
                target = _check_version_arg(version)
                if target not in versions:
                    raise NotFound(f"task {name!r} has no version {target} (on disk: {list(versions)})")
            path = task_dir / version_filename(target)
            try:
                _, meta = read_patch_file(path, expected_fingerprint=self._fingerprint)
            except BackboneMismatch as exc:
                raise BackboneMismatch(f"cannot roll back task {name!r} to v{target}: {exc}") from exc
            except PatchCorrupt as exc:
                raise PatchCorrupt(f"cannot roll back task {name!r} to v{target}: {exc}") from exc
            with _disk_errors():
                self._write_pointer(task_dir, target, max(versions))
            self._tasks[name] = self._scan_task(name)
            result = PatchVersion(name=name, version=target, path=path, bytes=path.stat().st_size, meta=meta)
        logger.info("patch store: task %r now serves v%d (rollback)", name, target)
        self._notify(name)
        return result

    def delete(self, name: str) -> None:
        """Remove the task and all its versions.

        The rename to ``.trash-*`` is the commit point (atomic, so the task is gone or intact); the slow
        ``rmtree`` follows, and a leftover trash directory from a crash is finished off at the next open.
        """
        with self._lock:
            self._entry(name)
            trash = self._tasks_dir / f"{TRASH_PREFIX}{name}-{secrets.token_hex(6)}"
            os.rename(self._task_dir(name), trash)
            fsync_dir(self._tasks_dir)
            del self._tasks[name]
            try:
                shutil.rmtree(trash)
            except OSError as exc:
                logger.warning(
                    "patch store: task %r deleted, but removing %s failed (%s); retried at next open", name, trash, exc
                )
        logger.info("patch store: deleted task %r", name)
        self._notify(name)

    def import_file(self, src_path: Path, name: str | None = None) -> PatchVersion:
        """Verify a patch file from elsewhere and publish it as ``name`` (default: its ``training.task_name``).

        Full verification first (hash and fingerprint), so a bad upload is refused before anything is written.
        """
        self._check_open()
        if name is not None:
            validate_task_name(name)  # before reading anything: a bad name is the caller's error, whatever the file
        src = Path(src_path)
        if not src.exists():
            raise NotFound(f"no file {src}")
        try:
            tensors, meta = read_patch_file(src, expected_fingerprint=self._fingerprint)
        except BackboneMismatch as exc:
            raise BackboneMismatch(f"cannot import {src.name}: {exc}") from exc
        except PatchCorrupt as exc:
            raise PatchCorrupt(f"cannot import {src.name}: {exc}") from exc
        target = name if name is not None else meta.training.get("task_name")
        if target is None or target == "":
            raise InvalidArgument(f"cannot import {src.name}: no task name given and the patch records none")
        return self.publish(validate_task_name(target), tensors, meta)
