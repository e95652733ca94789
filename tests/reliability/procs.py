"""Real server processes for the reliability tests: start, signal, kill, restart, inspect (/proc) and scrape.

Two launchers make the same :class:`ServerProcess`:

- :class:`ExecLauncher` runs ``python -m server ...`` as a subprocess (what an operator runs);
- :class:`ForkLauncher` forks the server from :mod:`tests.reliability.forkserver`, which imported it once: the same
  ``server.__main__.main(argv)`` in a process of its own, minus seconds of imports per restart (crash harness).

Every process started here is killed and reaped by its launcher's ``close()``; tests use them through fixtures
that call it, so nothing outlives a test module.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import REPO_ROOT
from tests.integration.helpers import MetricSamples, parse_metrics

PYTHON = sys.executable
SERVING_RE = re.compile(r"taskpatch serving on (\S+):(\d+) \(metrics port (-?\d+)\)")
START_TIMEOUT_S = 120.0  # a cold `python -m server` on a loaded 2-core box takes 5-15 s; this is only a deadline


def server_argv(store_dir: Path, *extra: str, metrics: bool = True) -> list[str]:
    """Flags for a test server: tiny backbone on CPU, one torch thread, free ports, the given store."""
    return [
        "--backbone",
        "tiny",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--train-threads",
        "1",
        "--port",
        "0",
        "--metrics-port",
        "0" if metrics else "-1",
        "--store-dir",
        str(store_dir),
        "--max-wait-ms",
        "2",
        *extra,
    ]


@dataclass
class ServerProcess:
    """One running server process (either launcher)."""

    pid: int
    log_path: Path
    launcher: Launcher
    port: int = 0
    metrics_port: int = -1
    host: str = "127.0.0.1"
    returncode: int | None = None
    _log_offset: int = field(default=0, repr=False)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serving(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until the log says "taskpatch serving on HOST:PORT"; fail with the log if the process died."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = SERVING_RE.search(self.log_text())
            if match:
                self.host, self.port, self.metrics_port = match.group(1), int(match.group(2)), int(match.group(3))
                return
            if self.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.returncode} before serving:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.02)
        raise AssertionError(f"server not serving after {timeout_s} s:\n{self.log_text()[-4000:]}")

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.launcher.reap(self, 0.0)
        return self.returncode

    def wait(self, timeout_s: float) -> int | None:
        """Exit status (negative: killed by that signal), or None if still running after ``timeout_s``."""
        if self.returncode is None:
            self.returncode = self.launcher.reap(self, timeout_s)
        return self.returncode

    def kill(self) -> int | None:
        """SIGKILL and reap (a crash: no handler, no flush, no cleanup)."""
        if self.poll() is None:
            self.signal(signal.SIGKILL)
        return self.wait(30.0)

    def alive(self) -> bool:
        return self.poll() is None

    # ---- /proc ---------------------------------------------------------------------------------------------------
    def proc_status(self) -> dict[str, str]:
        text = Path(f"/proc/{self.pid}/status").read_text()
        return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)

    def rss_bytes(self) -> int:
        return int(self.proc_status()["VmRSS"].split()[0]) * 1024

    def threads(self) -> int:
        return int(self.proc_status()["Threads"].strip())

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    # ---- metrics -------------------------------------------------------------------------------------------------
    def scrape(self) -> MetricSamples:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return parse_metrics(response.read().decode())


class Launcher:
    """Starts server processes; ``close()`` kills and reaps every one still running."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.started: list[ServerProcess] = []
        self._count = 0

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> ServerProcess:
        """Start a server with ``argv`` in ``cwd`` (default: the log directory); wait until it serves."""
        self._count += 1
        log_path = self.logdir / f"server-{self._count}.log"
        workdir = cwd or self.logdir
        workdir.mkdir(parents=True, exist_ok=True)
        proc = self._spawn(list(argv), log_path, workdir, env or {})
        self.started.append(proc)
        if wait:
            proc.wait_serving()
        return proc

    def _spawn(self, argv: list[str], log_path: Path, cwd: Path, env: dict[str, str]) -> ServerProcess:
        raise NotImplementedError

    def reap(self, proc: ServerProcess, timeout_s: float) -> int | None:
        raise NotImplementedError

    def kill_all(self) -> None:
        for proc in self.started:
            proc.kill()

    def close(self) -> None:
        self.kill_all()


class Pool(Launcher):
    """A view on another launcher whose ``close()`` kills only the servers started through it (module fixtures
    share one session fork server)."""

    def __init__(self, base: Launcher, logdir: Path) -> None:
        super().__init__(logdir)
        self.base = base

    def _spawn(self, argv: list[str], log_path: Path, cwd: Path, env: dict[str, str]) -> ServerProcess:
        proc = self.base._spawn(argv, log_path, cwd, env)
        self.base.started.append(proc)
        return proc

    def reap(self, proc: ServerProcess, timeout_s: float) -> int | None:
        return self.base.reap(proc, timeout_s)


def _server_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPATCH_")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


class ExecLauncher(Launcher):
    """``python -m server`` subprocesses, run in ``workdir`` (so a stray relative write would land there)."""

    def __init__(self, logdir: Path) -> None:
        super().__init__(logdir)
        self._popen: dict[int, subprocess.Popen[bytes]] = {}

    def _spawn(self, argv: list[str], log_path: Path, cwd: Path, env: dict[str, str]) -> ServerProcess:
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [PYTHON, "-m", "server", *argv],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_env(env),
            )
        self._popen[popen.pid] = popen
        return ServerProcess(popen.pid, log_path, self)

    def reap(self, proc: ServerProcess, timeout_s: float) -> int | None:
        popen = self._popen[proc.pid]
        try:
            return popen.wait(timeout=timeout_s) if timeout_s > 0 else popen.poll()
        except subprocess.TimeoutExpired:
            return None


class ForkLauncher(Launcher):
    """Servers forked from one fork server process (see :mod:`tests.reliability.forkserver`)."""

    def __init__(self, logdir: Path) -> None:
        super().__init__(logdir)
        self._zygote = subprocess.Popen(
            [PYTHON, "-m", "tests.reliability.forkserver"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(logdir / "forkserver.log").open("wb"),
            env=_server_env(None),
            text=True,
        )
        self._lock = threading.Lock()
        ready = self._read_reply(timeout_s=START_TIMEOUT_S)
        assert "ready" in ready, ready

    def _read_reply(self, timeout_s: float) -> dict[str, Any]:
        assert self._zygote.stdout is not None
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self._zygote.stdout.readline()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(timeout_s)
        if not result or not result[0]:
            raise AssertionError(f"fork server did not answer within {timeout_s} s (exit {self._zygote.poll()})")
        return json.loads(result[0])

    def _request(self, request: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
        with self._lock:
            assert self._zygote.stdin is not None
            self._zygote.stdin.write(json.dumps(request) + "\n")
            self._zygote.stdin.flush()
            return self._read_reply(timeout_s)

    def _spawn(self, argv: list[str], log_path: Path, cwd: Path, env: dict[str, str]) -> ServerProcess:
        request = {"op": "spawn", "argv": argv, "log": str(log_path), "cwd": str(cwd), "env": env}
        reply = self._request(request)
        return ServerProcess(int(reply["pid"]), log_path, self)

    def reap(self, proc: ServerProcess, timeout_s: float) -> int | None:
        reply = self._request({"op": "reap", "pid": proc.pid, "timeout_s": timeout_s}, timeout_s=timeout_s + 30)
        status = reply["status"]
        return None if status is None else int(status)

    def close(self) -> None:
        try:
            self.kill_all()
        finally:
            with contextlib.suppress(OSError, ValueError):
                self._request({"op": "exit"}, timeout_s=30)
            with contextlib.suppress(OSError, ValueError):
                assert self._zygote.stdin is not None
                self._zygote.stdin.close()
            try:
                self._zygote.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._zygote.kill()
                self._zygote.wait(timeout=30)


@contextlib.contextmanager
def launcher(kind: str, logdir: Path) -> Iterator[Launcher]:
    """``kind``: "exec" or "fork"."""
    chosen: Launcher = ExecLauncher(logdir) if kind == "exec" else ForkLauncher(logdir)
    try:
        yield chosen
    finally:
        chosen.close()
