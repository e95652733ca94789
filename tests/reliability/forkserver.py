"""A fork server for the crash harness: pays the server's imports once, then forks a fresh server per restart.

``python -m server`` spends seconds importing torch/transformers before it serves (10+ s on a busy 2-core box), so
50 crash/restart cycles of a plain subprocess would take 5-10 minutes of imports alone. This process imports
``server.__main__`` and ``server.app`` once; each ``spawn`` forks a child that runs exactly what ``python -m server``
runs (``server.__main__.main(argv)``) with stdout/stderr sent to a log file. The child is an ordinary process with
its own pid: the harness sends it SIGKILL/SIGTERM directly, like any server. Nothing is started in this process
before forking (no threads, no gRPC channel or server, no torch op), which is what makes forking safe.

Protocol (one JSON object per line on stdin, one reply per line on stdout):
``{"op": "spawn", "argv": [...], "log": PATH, "cwd": DIR, "env": {...}}`` (env: added to the child's) ->
``{"pid": N}``;
``{"op": "reap", "pid": N, "timeout_s": T}`` -> ``{"status": exit status or null if still running}``;
``{"op": "exit"}`` -> ``{"bye": true}``; the fork server kills (SIGKILL) and reaps every child still running,
then exits.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import time


def _spawn(argv: list[str], log: str, cwd: str, env: dict[str, str]) -> int:
    pid = os.fork()
    if pid:
        return pid
    # Child: never return into the fork server's loop, whatever happens.
    code = 1
    try:
        os.chdir(cwd)
        os.environ.update(env)  # e.g. TASKPATCH_AUTH_TOKEN: read by the server's settings, after the fork
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.close(null)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        from server.__main__ import main

        code = main(argv)
    except BaseException as exc:  # report, then leave through _exit: the fork server's state must not run on
        with contextlib.suppress(OSError):
            os.write(2, f"fork server child failed: {exc!r}\n".encode())
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)
    return 0  # unreachable


def _reap(pid: int, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return -1
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


def main() -> int:
    # The heavy imports, once. Nothing here may start a thread: the children are forked from this process.
    for module in ("server.__main__", "server.app"):
        importlib.import_module(module)

    children: set[int] = set()
    print(json.dumps({"ready": os.getpid()}), flush=True)
    try:
        for line in sys.stdin:
            request = json.loads(line)
            op = request["op"]
            if op == "spawn":
                pid = _spawn(request["argv"], request["log"], request["cwd"], request.get("env") or {})
                children.add(pid)
                reply: dict[str, object] = {"pid": pid}
            elif op == "reap":
                status = _reap(int(request["pid"]), float(request.get("timeout_s", 10.0)))
                if status is not None:
                    children.discard(int(request["pid"]))
                reply = {"status": status}
            elif op == "exit":
                print(json.dumps({"bye": True}), flush=True)
                break
            else:
                reply = {"error": f"unknown op {op!r}"}
            print(json.dumps(reply), flush=True)
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid, 10.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
