"""Crash safety: SIGKILL the server at random moments under write traffic, then check the store and the API.

Each "life" of the server runs random traffic from three client threads (two trainers running AddTask with replace,
so tasks gather many versions; one mutator rolling versions back, deleting and importing tasks, predicting and
listing) and is killed with SIGKILL ``uniform(0.05, 1.5)`` s after the traffic starts. A client-side ledger records
every acknowledged effect (a ``done`` event, a rollback/delete/import answer) and the one operation per task that
was in flight at the kill. After every kill:

- offline, on the store directory: every visible version file loads with its recorded content hash
  (``read_patch_file``: parses, re-hashes the tensors, checks the fingerprint); every acknowledged version is there,
  produced by the job that reported it (``training.job_id``), with the reported size and hash; every CURRENT names
  a version on disk; a task acknowledged as deleted is gone;
- after the restart, through the API: the listing matches the ledger (allowing only what the in-flight operation
  may or may not have done), every task is healthy and predicts with its current version, no ``.tmp-``/``.trash-``
  name is listed or left in the task tree, and no job is QUEUED/RUNNING, none SUCCEEDED without a published version,
  and every job whose ``done`` event arrived is SUCCEEDED with that version.

Configuration (environment): ``TASKPATCH_CRASH_KILLS`` (default 50, the CI figure), ``TASKPATCH_CRASH_SEED``
(default: random, printed), ``TASKPATCH_CRASH_LAUNCHER`` (``fork``, default: servers forked from a process that
imported the server once, see ``forkserver.py``; ``exec``: a fresh ``python -m server`` per life, ~10 s each here).
The figures go to stdout as one JSON line (``pytest -s``) and to ``$TASKPATCH_RELIABILITY_OUT/crash.json`` if set.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from client.api import TaskPatchClient
from client.errors import TaskPatchError
from server.store import read_patch_file
from server.store.store import CURRENT_NAME, version_filename
from tests.integration.helpers import LABELS, PROBE_INPUTS, toy_examples
from tests.reliability.procs import ExecLauncher, Launcher, ServerProcess, server_argv
from tests.reliability.report import report

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("TASKPATCH_CRASH_KILLS", "50"))
LAUNCHER = os.environ.get("TASKPATCH_CRASH_LAUNCHER", "fork")
KEEP_TASKS = ("keep-0", "keep-1", "keep-2")  # never deleted: their versions must all survive every crash
CHURN_TASKS = ("churn-0", "churn-1", "churn-2")  # created, replaced, imported into, rolled back and deleted
KILL_DELAY_S = (0.05, 1.5)
ROOT_NAMES = {".lock", "tasks", "jobs"}


# ---- the ledger: what the clients were told ----------------------------------------------------------------------


@dataclass
class Version:
    job_id: str | None = None  # the training job that reported it (None: import, or found on disk after a crash)
    patch_bytes: int | None = None
    sha: str | None = None  # content_sha256 the server reported for it
    acked: bool = True  # False: found after a crash, never acknowledged to a client


@dataclass
class Pending:
    """The one operation on a task that was in flight when the server died (its effect is unknown)."""

    kind: str  # "train" | "rollback" | "delete" | "import"
    job_id: str | None = None
    target: int | None = None


@dataclass
class TaskState:
    name: str
    churn: bool
    lock: threading.Lock = field(default_factory=threading.Lock)
    generation: int = 0  # bumped by each (possible) delete
    exists: bool = False
    versions: dict[int, Version] = field(default_factory=dict)
    current: int | None = None
    pending: Pending | None = None

    def reset(self) -> None:
        self.generation += 1
        self.exists, self.versions, self.current = False, {}, None


@dataclass
class JobRecord:
    task: str
    generation: int
    done_version: int | None = None
    checked: bool = False  # seen after a restart already (figures count each job once)


class Failure(Exception):
    """An invariant broken while the server was up (not an effect of the kill)."""


class Harness:
    def __init__(self, launcher: Launcher, store: Path, cwd: Path, fingerprint: str, rng: random.Random) -> None:
        self.launcher = launcher
        self.store = store
        self.cwd = cwd
        self.fingerprint = fingerprint
        self.rng = rng
        self.tasks = {n: TaskState(n, churn=n in CHURN_TASKS) for n in (*KEEP_TASKS, *CHURN_TASKS)}
        self.jobs: dict[str, JobRecord] = {}
        self.figures: Counter[str] = Counter()
        self.kill_delays: list[float] = []
        self.exports = cwd.parent / "exports"
        self.exports.mkdir(parents=True, exist_ok=True)
        self._stats_lock = threading.Lock()

    def count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.figures[key] += n

    # ---- one life ------------------------------------------------------------------------------------------------
    def start(self) -> ServerProcess:
        return self.launcher.start(server_argv(self.store, metrics=False), cwd=self.cwd)

    def life(self, proc: ServerProcess, delay_s: float) -> None:
        """Run traffic against ``proc`` and SIGKILL it ``delay_s`` after the traffic started."""
        killed = threading.Event()
        errors: list[str] = []
        client = TaskPatchClient(proc.addr, timeout_s=30)

        def worker(body: Callable[[TaskPatchClient, threading.Event, random.Random], None], seed: int) -> None:
            rng = random.Random(seed)
            try:
                while not killed.is_set():
                    body(client, killed, rng)
            except TaskPatchError as err:
                if not killed.is_set():
                    errors.append(f"{body.__name__}: {err.code}: {err.message}")
            except Failure as err:
                errors.append(f"{body.__name__}: {err}")
            except Exception as err:  # a harness bug must fail the test, not hang it
                errors.append(f"{body.__name__}: {err!r}")

        threads = [
            threading.Thread(target=worker, args=(self.train_once, self.rng.random()), daemon=True),
            threading.Thread(target=worker, args=(self.train_once, self.rng.random()), daemon=True),
            threading.Thread(target=worker, args=(self.mutate_once, self.rng.random()), daemon=True),
        ]
        for thread in threads:
            thread.start()
        time.sleep(delay_s)
        killed.set()
        status = proc.kill()
        assert status == -9, f"server was not killed by SIGKILL (status {status}):\n{proc.log_text()[-3000:]}"
        self.kill_delays.append(delay_s)
        for thread in threads:
            thread.join(60)
            assert not thread.is_alive(), "a client thread hung after the kill"
        client.close()
        assert not errors, f"errors while the server was up: {errors}\n{proc.log_text()[-3000:]}"

    # ---- traffic (each op holds its task's lock, so the ledger is exact except for the op cut by the kill) --------
    def _pick(self, rng: random.Random, names: tuple[str, ...], want: Callable[[TaskState], bool]) -> TaskState | None:
        for name in rng.sample(names, len(names)):
            state = self.tasks[name]
            if state.lock.acquire(blocking=False):
                if want(state):
                    return state
                state.lock.release()
        return None

    def train_once(self, client: TaskPatchClient, killed: threading.Event, rng: random.Random) -> None:
        state = self._pick(rng, (*KEEP_TASKS, *CHURN_TASKS), lambda s: True)
        if state is None:
            time.sleep(0.01)
            return
        try:
            size = rng.choice(("small", "small", "medium"))
            n_train, epochs, batch = (24, 1, 8) if size == "small" else (96, 2, 4)
            state.pending = Pending("train")
            events = client.add_task(
                state.name,
                toy_examples(n_train, offset=rng.randrange(1000)),
                toy_examples(8, offset=10_000),
                problem_type="classification",
                labels=LABELS,
                epochs=epochs,
                batch_size=batch,
                seed=rng.randrange(1000),
                replace=True,
            )
            for event in events:
                if event.kind == "queued":
                    state.pending.job_id = event.job_id
                    self.jobs[event.job_id] = JobRecord(state.name, state.generation)
                    self.count("jobs_submitted")
                elif event.kind == "done":
                    assert event.version is not None
                    if event.version in state.versions:
                        raise Failure(f"{state.name}: done reports v{event.version}, which already existed")
                    self.jobs[event.job_id].done_version = event.version
                    state.versions[event.version] = Version(event.job_id, event.patch_bytes)
                    state.exists, state.current, state.pending = True, event.version, None
                    self.count("done_acknowledged")
                elif event.terminal:
                    raise Failure(f"{state.name}: job {event.job_id} ended {event.kind}: {event.reason}")
            if state.pending is not None:
                if killed.is_set():
                    return
                raise Failure(f"{state.name}: the AddTask stream ended without a done event")
            info = client.get_task(state.name)  # the content hash of the version just reported
            state.versions[info.version].sha = info.content_sha256
        finally:
            state.lock.release()

    def mutate_once(self, client: TaskPatchClient, killed: threading.Event, rng: random.Random) -> None:
        time.sleep(rng.uniform(0.005, 0.05))
        op = rng.choice(("rollback", "rollback", "delete", "import", "predict", "list"))
        if op == "list":
            self.check_listing(client.list_tasks(), during_traffic=True)
            self.count("lists_checked")
            return
        names = CHURN_TASKS if op in ("delete", "import") else (*KEEP_TASKS, *CHURN_TASKS)
        want: Callable[[TaskState], bool] = {
            "rollback": lambda s: s.exists and len(s.versions) >= 2,
            "delete": lambda s: s.exists,
            "import": lambda s: True,
            "predict": lambda s: s.exists,
        }[op]
        state = self._pick(rng, names, want)
        if state is None:
            return
        try:
            getattr(self, f"_{op}")(client, state, rng)
        finally:
            state.lock.release()

    def _rollback(self, client: TaskPatchClient, state: TaskState, rng: random.Random) -> None:
        assert state.current is not None
        earlier = [v for v in state.versions if v < state.current]
        if earlier and rng.random() < 0.3:
            requested, target = 0, max(earlier)  # "the previous version"
        else:
            target = rng.choice([v for v in state.versions if v != state.current])
            requested = target
        state.pending = Pending("rollback", target=target)
        info = client.rollback_task(state.name, requested)
        if info.version != target:
            raise Failure(f"{state.name}: rollback({requested}) serves v{info.version}, expected v{target}")
        self._check_sha(state, target, info.content_sha256)
        state.current, state.pending = target, None
        self.count("rollbacks_acknowledged")

    def _delete(self, client: TaskPatchClient, state: TaskState, rng: random.Random) -> None:
        state.pending = Pending("delete")
        client.delete_task(state.name)
        state.reset()
        state.pending = None
        self.count("deletes_acknowledged")

    def _import(self, client: TaskPatchClient, state: TaskState, rng: random.Random) -> None:
        source = self.tasks[rng.choice(KEEP_TASKS)]
        # Exporting a keep task needs its lock too (its current version must be the one we think).
        if not source.lock.acquire(timeout=0.2):
            return
        try:
            if not source.exists or source.current is None:
                return
            path = self.exports / f"{source.name}-{rng.randrange(10**9)}.safetensors"
            client.export_task(source.name, path)
            tensors_meta = read_patch_file(path, self.fingerprint)[1]
            self._check_sha(source, source.current, tensors_meta.content_sha256)
        finally:
            source.lock.release()
        state.pending = Pending("import")
        info = client.import_task(path, state.name)
        path.unlink()
        if info.version in state.versions:
            raise Failure(f"{state.name}: import reports v{info.version}, which already existed")
        if info.content_sha256 != tensors_meta.content_sha256:
            raise Failure(f"{state.name}: imported v{info.version} has another content hash than the file sent")
        state.versions[info.version] = Version(None, info.patch_bytes, info.content_sha256)
        state.exists, state.current, state.pending = True, info.version, None
        self.count("imports_acknowledged")

    def _predict(self, client: TaskPatchClient, state: TaskState, rng: random.Random) -> None:
        result = client.predict(state.name, list(PROBE_INPUTS[:3]))
        if result.version != state.current:
            raise Failure(f"{state.name}: predict served v{result.version}, the ledger says v{state.current}")
        self.count("predicts_ok")

    def _check_sha(self, state: TaskState, version: int, sha: str) -> None:
        known = state.versions[version]
        if known.sha is None:
            known.sha = sha
        elif known.sha != sha:
            raise Failure(f"{state.name} v{version}: content hash changed from {known.sha[:12]} to {sha[:12]}")

    def check_listing(self, tasks: list[Any], *, during_traffic: bool) -> None:
        for task in tasks:
            if task.name.startswith(".") or "tmp" in task.name or "trash" in task.name:
                raise Failure(f"a private store name is listed as a task: {task.name!r}")
            if task.name not in self.tasks:
                raise Failure(f"unexpected task listed: {task.name!r}")
            if not task.healthy:
                raise Failure(f"task {task.name!r} listed unhealthy: {task.problem}")
            if not task.versions or task.version not in task.versions:
                raise Failure(f"task {task.name!r}: current v{task.version} not among versions {task.versions}")

    # ---- after the kill: the store directory, offline -------------------------------------------------------------
    def check_disk(self) -> None:
        tasks_dir = self.store / "tasks"
        leftovers = [e.name for e in tasks_dir.iterdir() if e.name.startswith((".tmp-", ".trash-"))]
        self.count("leftover_task_dirs_at_kill", len(leftovers))
        for entry in sorted(tasks_dir.iterdir()):
            if entry.name.startswith("."):
                continue
            assert entry.name in self.tasks, f"unexpected entry {entry}"
            self.count("leftover_temp_files_at_kill", sum(1 for e in entry.iterdir() if e.name.startswith(".tmp-")))
            on_disk = sorted(int(e.name[1:7]) for e in entry.iterdir() if e.name.endswith(".safetensors"))
            assert all((entry / version_filename(v)).is_file() for v in on_disk)
            for version in on_disk:
                # Every version file under a visible name is complete: parses, hashes, right backbone.
                _, meta = read_patch_file(entry / version_filename(version), self.fingerprint)
                self.count("version_files_verified")
                known = self.tasks[entry.name].versions.get(version)
                if known is not None:  # acknowledged (or seen after an earlier restart): the very same patch
                    if known.job_id is not None:
                        assert meta.training.get("job_id") == known.job_id, (entry.name, version, meta.training)
                    if known.patch_bytes is not None:
                        assert (entry / version_filename(version)).stat().st_size == known.patch_bytes
                    if known.sha is not None:
                        assert meta.content_sha256 == known.sha, (entry.name, version)
                    self.count("acknowledged_versions_verified")
            pointer = (entry / CURRENT_NAME).read_text().strip()
            parts = pointer.split()  # "<current> <newest committed>"
            valid = len(parts) == 2 and all(p.isdigit() for p in parts) and int(parts[0]) in on_disk
            assert valid, f"{entry.name}: CURRENT {pointer!r} vs {on_disk}"
        for state in self.tasks.values():
            exists = (tasks_dir / state.name).is_dir()
            pending = state.pending.kind if state.pending else None
            if state.exists and pending != "delete":
                assert exists, f"{state.name}: acknowledged task missing after the kill"
                on_disk = {int(e.name[1:7]) for e in (tasks_dir / state.name).glob("v*.safetensors")}
                missing = set(state.versions) - on_disk
                assert not missing, f"{state.name}: acknowledged versions {sorted(missing)} lost in the kill"
            if not state.exists and pending not in ("train", "import"):
                assert not exists, f"{state.name}: deleted (acknowledged) but still on disk after the kill"

    # ---- after the restart: the API and the cleaned store ---------------------------------------------------------
    def check_restart(self, proc: ServerProcess) -> None:
        tasks_dir = self.store / "tasks"
        assert not [e.name for e in tasks_dir.iterdir() if e.name.startswith(".")], "leftovers not cleaned at open"
        for entry in tasks_dir.iterdir():
            assert not [e.name for e in entry.iterdir() if e.name.startswith(".tmp-")], entry
        extra = {e.name for e in self.store.iterdir()} - ROOT_NAMES
        assert not extra, extra  # ImportTask stages under tasks/, which the store cleans at open
        self.figures["root_temp_files_after_restart"] = len(extra)
        # Temp files of the job journal are not cleaned at open either (see test_journal_temp_file_...).
        self.figures["journal_temp_files_after_restart"] = sum(
            1 for e in (self.store / "jobs").iterdir() if e.name.startswith(".tmp-")
        )
        with TaskPatchClient(proc.addr, timeout_s=30) as client:
            listed = {t.name: t for t in client.list_tasks()}
            self.check_listing(list(listed.values()), during_traffic=False)
            for state in self.tasks.values():
                self.reconcile(state, listed.get(state.name))
            for name, task in listed.items():
                result = client.predict(name, list(PROBE_INPUTS[:2]))
                assert result.version == task.version, (name, result.version, task.version)
                self.count("predicts_after_restart")
            self.check_jobs(client.list_jobs(), listed)

    def reconcile(self, state: TaskState, task: Any | None) -> None:
        pending = state.pending
        kind = pending.kind if pending else None
        if task is None:
            assert not state.exists or kind == "delete", f"{state.name}: acknowledged task gone after restart"
            if state.exists:
                self.count("deletes_committed_unacknowledged")
            state.reset()
            state.pending = None
            return
        assert state.exists or kind in ("train", "import"), f"{state.name}: deleted task is back after restart"
        if not state.exists and kind is not None:
            self.count("creates_committed_unacknowledged")
        versions = set(task.versions)
        missing = set(state.versions) - versions
        assert not missing, f"{state.name}: acknowledged versions {sorted(missing)} missing after restart"
        new = versions - set(state.versions)
        if new:
            # Only the publish cut by the kill can add a version: one, numbered after the known ones.
            assert kind in ("train", "import") and len(new) == 1, (state.name, kind, sorted(new))
            assert min(new) > max(state.versions, default=0), (state.name, sorted(new))
        allowed = {state.current} | new
        if kind == "rollback" and pending is not None:
            allowed.add(pending.target)
        assert task.version in allowed, f"{state.name}: serves v{task.version}, allowed {allowed}"
        if new and task.version not in new:
            self.count("orphan_versions")  # written, CURRENT not moved (see test_uncommitted_version_...)
        elif new:
            self.count("publishes_committed_unacknowledged")
        if kind == "rollback" and task.version != state.current:
            self.count("rollbacks_committed_unacknowledged")
        for version in new:
            state.versions[version] = Version(acked=False)
        if state.versions[task.version].sha is not None:
            assert state.versions[task.version].sha == task.content_sha256, (state.name, task.version)
        state.versions[task.version].sha = task.content_sha256
        state.exists, state.current, state.pending = True, task.version, None

    def check_jobs(self, jobs: list[Any], listed: dict[str, Any]) -> None:
        for job in jobs:
            assert job.state not in ("queued", "running"), f"job {job.id} is {job.state} after a restart"
            if job.state == "succeeded":
                assert job.version, f"job {job.id} succeeded without a published version"
            record = self.jobs.get(job.id)
            if record is None:
                continue  # cut during its upload: the server may have queued it before the client heard
            first_check, record.checked = not record.checked, True
            if record.done_version is not None:
                assert job.state == "succeeded" and job.version == record.done_version, (job, record)
            elif job.state == "succeeded":
                if first_check:  # its publish committed, the done event was cut by the kill
                    self.count("jobs_succeeded_unacknowledged")
            else:
                assert job.state in ("interrupted", "failed"), (job.id, job.state, job.error)
            state = self.tasks[record.task]
            if job.state == "succeeded" and record.generation == state.generation and record.task in listed:
                assert job.version in state.versions, f"job {job.id}: v{job.version} not on disk"
        states = Counter(job.state for job in jobs)
        self.figures["jobs_interrupted"] = states["interrupted"]
        self.figures["jobs_succeeded"] = states["succeeded"]
        self.figures["jobs_total"] = len(jobs)


def run_harness(launcher: Launcher, workdir: Path, kills: int, fingerprint: str) -> dict[str, Any]:
    seed = int(os.environ.get("TASKPATCH_CRASH_SEED") or random.randrange(2**32))
    print(f"crash harness: seed {seed} (set TASKPATCH_CRASH_SEED to replay), {kills} kills")
    rng = random.Random(seed)
    harness = Harness(launcher, workdir / "store", workdir / "cwd", fingerprint, rng)
    started = time.monotonic()
    proc = harness.start()
    try:
        for _ in range(kills):
            harness.life(proc, rng.uniform(*KILL_DELAY_S))
            harness.check_disk()
            proc = harness.start()
            harness.check_restart(proc)
            harness.count("kills_survived")
    except AssertionError as err:
        raise AssertionError(f"seed {seed}: {err}") from err
    finally:
        proc.kill()
    assert sorted(os.listdir(workdir / "cwd")) == [], "the server wrote into its working directory"
    figures: dict[str, Any] = dict(harness.figures)
    figures.update(
        seed=seed,
        launcher="exec" if isinstance(getattr(launcher, "base", launcher), ExecLauncher) else "fork",
        versions_on_disk=sum(len(s.versions) for s in harness.tasks.values()),
        kill_delay_s_min=round(min(harness.kill_delays), 3),
        kill_delay_s_max=round(max(harness.kill_delays), 3),
        wall_s=round(time.monotonic() - started, 1),
    )
    return figures


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_acknowledged(
    procs: Launcher, exec_procs: Launcher, tmp_path: Path, tiny_fingerprint: str
) -> None:
    launcher = exec_procs if LAUNCHER == "exec" else procs
    figures = run_harness(launcher, tmp_path, KILLS, tiny_fingerprint)
    report("crash", figures)
    assert figures["kills_survived"] == KILLS
    assert figures["done_acknowledged"] > 0 and figures["acknowledged_versions_verified"] > 0
    assert figures["rollbacks_acknowledged"] > 0 and figures["deletes_acknowledged"] > 0


@pytest.mark.slow
def test_sigkill_of_python_m_server(exec_procs: Launcher, tmp_path: Path, tiny_fingerprint: str) -> None:
    """The same harness, two kills, on real ``python -m server`` processes (the fork server changes nothing)."""
    assert isinstance(exec_procs, ExecLauncher)
    figures = run_harness(exec_procs, tmp_path, 2, tiny_fingerprint)
    report("crash-exec", figures)
    assert figures["kills_survived"] == 2


# ---- what a crash leaves behind, reproduced deterministically ---------------------------------------------------


def _train_small(client: TaskPatchClient, name: str, *, replace: bool = False) -> int:
    events = list(
        client.add_task(
            name,
            toy_examples(24),
            toy_examples(8, offset=10_000),
            problem_type="classification",
            labels=LABELS,
            epochs=1,
            replace=replace,
        )
    )
    assert events[-1].kind == "done", events[-1]
    assert events[-1].version is not None
    return events[-1].version


def test_import_temp_file_left_by_a_crash_is_removed_at_restart(procs: Launcher, tmp_path: Path) -> None:
    import grpc

    from protos import taskpatch_pb2 as pb
    from protos import taskpatch_pb2_grpc as pb_grpc

    store = tmp_path / "store"
    proc = procs.start(server_argv(store, metrics=False), cwd=tmp_path / "cwd")
    release = threading.Event()

    def requests() -> Any:
        yield pb.ImportTaskRequest(name="stalled")
        yield pb.ImportTaskRequest(data=b"\0" * 4096)
        release.wait(30)  # the upload stalls half-way: the server holds its temp file open

    channel = grpc.insecure_channel(proc.addr)
    future = pb_grpc.TaskPatchStub(channel).ImportTask.future(requests(), timeout=60)
    try:
        deadline = time.monotonic() + 30
        while not [e for e in (store / "tasks").iterdir() if e.name.startswith(".tmp-import-")]:
            assert time.monotonic() < deadline, "the server never created its import temp file"
            time.sleep(0.02)
        assert proc.kill() == -9
    finally:
        release.set()
        future.cancel()
        channel.close()
    procs.start(server_argv(store, metrics=False), cwd=tmp_path / "cwd").kill()
    assert sorted(e.name for e in store.iterdir()) == sorted(ROOT_NAMES)
    assert not [e.name for e in (store / "tasks").iterdir() if e.name.startswith(".tmp-")]


def test_journal_temp_file_left_by_a_crash_is_removed_at_restart(procs: Launcher, tmp_path: Path) -> None:
    store = tmp_path / "store"
    procs.start(server_argv(store, metrics=False), cwd=tmp_path / "cwd").kill()
    # What SIGKILL between the write and the rename of atomic_write_bytes leaves (the crash harness meets it too).
    leftover = store / "jobs" / ".tmp-0123456789ab.json-a1b2c3d4e5f6"
    leftover.write_bytes(b'{"id": "0123456789ab", "state": "run')
    procs.start(server_argv(store, metrics=False), cwd=tmp_path / "cwd").kill()
    assert not leftover.exists()


def test_uncommitted_version_left_by_a_crash_is_not_a_version(
    procs: Launcher, tmp_path: Path, tiny_fingerprint: str
) -> None:
    import dataclasses

    from server.store import write_patch_file

    store = tmp_path / "store"
    proc = procs.start(server_argv(store, metrics=False), cwd=tmp_path / "cwd")
    with TaskPatchClient(proc.addr, timeout_s=30) as client:
        assert _train_small(client, "task") == 1
    proc.kill()
    # Step 1 of a publish of v2 completed (the file is complete and durable), step 2 (CURRENT -> 2) did not: the
    # job is INTERRUPTED and nobody was told about v2. The crash harness reaches this state by itself.
    task_dir = store / "tasks" / "task"
    tensors, meta = read_patch_file(task_dir / version_filename(1), tiny_fingerprint)
    training = {**meta.training, "job_id": "interrupted"}
    write_patch_file(task_dir / version_filename(2), tensors, dataclasses.replace(meta, training=training))
    proc = procs.start(server_argv(store, metrics=False), cwd=tmp_path / "cwd")
    with TaskPatchClient(proc.addr, timeout_s=30) as client:
        info = client.get_task("task")
        assert info.version == 1
        assert info.versions == (1,), "the uncommitted v2 is listed as a version of the task"
    proc.kill()
