#!/usr/bin/env python3
"""Run every command in the docs, so the docs cannot rot.

    python scripts/check_docs.py                  # README.md and docs/*.md
    python scripts/check_docs.py docs/gpu.md -v   # one file, printing every block's output
    python scripts/check_docs.py --list           # how each block is classified, without running anything
    python scripts/check_docs.py --config-table   # the configuration table of docs/configuration.md

The convention
==============

Fenced code blocks are classified by their info string (the first word after the opening fence):

    ```bash      RUN with bash (set -euo pipefail), in document order
    ```python    RUN with the project's Python, as a standalone script
    ```text, ```promql, ```json, ```yaml, no info string, ...   SHOWN, never run
    ```sh, ```shell, ```console, ```zsh, ```py, ```python3      REFUSED (an error): write bash or python to have
                 the block run, text to show it; there is no third, silently untested, kind of command

A marker comment on the last non-blank line before the opening fence changes that:

    <!-- docs-check: skip (reason) -->   a bash or python block that is not run: it needs a GPU, Docker, root, the
                                         network, or minutes. The reason is required and printed with the report.
    <!-- docs-check: server -->          a bash block that starts or stops "the" server a document talks to. Not
                                         run: the checker runs its own server for the document (see below). Such a
                                         block must leave TASKPATCH_SERVER and METRICS_URL set for the user, since
                                         the following blocks use them.
    <!-- docs-check: exit N -->          a bash block that is run and must exit with status N (an error example).
                                         It runs in a subshell: its variables do not reach later blocks.
    <!-- docs-check: output -->          a shown block (```text) holding expected output: each of its non-blank
                                         lines must occur, in order, as a substring of a line of the output of the
                                         block just before it (a line "..." stands for anything, and is ignored).

Non-run bash blocks (skip and server) are still linted: each ``taskpatch-server`` / ``python -m server`` command
must parse with the server's own option parser and pass its validation, and each ``client`` / ``taskpatch``
command with the client's parser (synopsis brackets such as ``[--version N]`` are ignored). A renamed or removed
flag therefore fails the check even where the command cannot run here.

How a document runs
-------------------

All run blocks of one document execute in ONE bash process, in order, like a reader typing them into one terminal:
shell variables, functions, ``cd`` and background jobs carry over from block to block. The first failing block
stops that document (the blocks after it depend on it); the other documents still run. Every block has its own
timeout (``--timeout``, default 90 s). When the document ends, every process it left behind is killed.

Environment of every run block:

    working dir         a fresh temporary directory per document (files one block writes are there for the next)
    PATH                the virtual environment of this Python first (taskpatch-server, client, python)
    GLUE_DIR            $GLUE_DIR, else ../shared/data/glue next to the repository (absolute)
    TASKPATCH_SERVER    127.0.0.1:<port> of the document's own server: the checker starts
                        ``taskpatch-server --backbone tiny --port 0 --metrics-port 0 --store-dir <tmp>/store``
                        (random-init tiny BERT, CPU, empty store) before the document's first run block, and stops it
                        after its last one; only for documents whose run blocks call ``client`` / ``taskpatch`` or
                        name TASKPATCH_SERVER, METRICS_URL or TaskPatchClient. Documents share no server or files,
                        so two of them are checked at once (``--jobs``).
    METRICS_URL         http://127.0.0.1:<metrics port>/metrics of that server
    TASKPATCH_BACKBONE=tiny TASKPATCH_DEVICE=cpu TASKPATCH_THREADS=1 TASKPATCH_TRAIN_THREADS=1
                        so a server a document starts itself (e.g. with TLS) loads in seconds
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1   nothing is downloaded
    COLUMNS=120         tables render at one known width

Python blocks see the same exported environment and working directory, but each is its own process.

Relative links in every checked document must point at files that exist.

Exit status: 0 when every document passed, 1 when any block, link or marker failed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DOCS = ("README.md", "docs/*.md")
DEFAULT_TIMEOUT_S = 90.0
SERVER_START_TIMEOUT_S = 120.0

RUN_LANGS = {"bash": "bash", "python": "python"}
REFUSED_LANGS = {"sh", "shell", "console", "shell-session", "bash-session", "sh-session", "zsh", "py", "python3"}

FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\s]*)[^`]*$")
MARKER = re.compile(r"^\s*<!--\s*docs-check:\s*(?P<body>.*?)\s*-->\s*$")
MARKER_BODY = re.compile(r"^(?:(?P<kind>server|output)|skip\s*\((?P<reason>[^)]*\S[^)]*)\)|exit\s+(?P<status>\d+))$")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
_PROCESS_GROUPS: set[int] = set()  # sessions started and not yet ended: killed if the checker is interrupted
SERVER_USE = re.compile(r"(?<![\w-])(?:client|taskpatch)(?![\w-])|TASKPATCH_SERVER|METRICS_URL|TaskPatchClient")
SERVING_LINE = re.compile(r"taskpatch serving on \S+?:(?P<port>\d+) \(metrics port (?P<metrics>-?\d+)\)")


# --- parsing ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Marker:
    kind: str  # skip | server | exit | output
    reason: str = ""
    status: int = 0


@dataclass
class Block:
    doc: Path
    line: int  # 1-based line of the opening fence
    lang: str  # the info string's first word, lower-cased ("" for none)
    text: str
    marker: Marker | None = None

    @property
    def runs(self) -> bool:
        return self.lang in RUN_LANGS and (self.marker is None or self.marker.kind == "exit")

    @property
    def where(self) -> str:
        return f"{display(self.doc)}:{self.line}"


@dataclass
class Document:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "path:line: message"


def display(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(REPO))
    return str(path)


def parse_document(path: Path, text: str | None = None) -> Document:
    """Blocks with their markers, plus convention errors (bad markers, refused info strings, unclosed fences)."""
    text = path.read_text(encoding="utf-8") if text is None else text
    lines = text.splitlines()
    doc = Document(path)

    def error(line: int, message: str) -> None:
        doc.errors.append(f"{display(path)}:{line}: {message}")

    pending: tuple[int, Marker] | None = None  # a marker waiting for its fence
    i = 0
    while i < len(lines):
        line = lines[i]
        match = FENCE.match(line)
        if match is None:
            marker_match = MARKER.match(line)
            if marker_match is not None:
                if pending is not None:
                    error(pending[0], "marker not followed by a code block")
                body = MARKER_BODY.match(marker_match["body"])
                if body is None:
                    error(i + 1, f"bad marker {line.strip()!r}: expected skip (reason), server, exit N or output")
                    pending = None
                else:
                    kind = body["kind"] or ("skip" if body["reason"] is not None else "exit")
                    status = int(body["status"]) if body["status"] is not None else 0
                    pending = (i + 1, Marker(kind, (body["reason"] or "").strip(), status))
            elif "docs-check" in line and line.lstrip().startswith("<!--"):
                error(i + 1, f"malformed marker {line.strip()!r}: write <!-- docs-check: ... --> on one line")
            elif line.strip() and pending is not None:
                error(pending[0], "marker not followed by a code block (it must be the line just before the fence)")
                pending = None
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        lang = match["info"].lower()
        start = i + 1
        body_lines: list[str] = []
        i += 1
        closed = False
        while i < len(lines):
            candidate = lines[i]
            stripped = candidate.strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                closed = True
                i += 1
                break
            body_lines.append(candidate[indent:] if candidate[:indent].strip() == "" else candidate.lstrip())
            i += 1
        if not closed:
            error(start, "code block is never closed")
        block = Block(path, start, lang, "\n".join(body_lines) + "\n", pending[1] if pending else None)
        pending = None
        _check_block(block, doc.blocks[-1] if doc.blocks else None, error)
        doc.blocks.append(block)
    if pending is not None:
        error(pending[0], "marker not followed by a code block")
    return doc


def _check_block(block: Block, previous: Block | None, report: Callable[[int, str], None]) -> None:
    """Convention errors of one block: refused info strings, markers on the wrong kind of block."""
    if block.lang in REFUSED_LANGS:
        report(block.line, f"info string {block.lang!r}: write bash or python (run by the checker) or text (shown)")
    marker = block.marker
    if marker is None:
        return
    if marker.kind == "output":
        if block.lang in RUN_LANGS:
            report(block.line, "an output marker belongs on a shown block (```text), not a run one")
        elif previous is None or not previous.runs:
            report(block.line, "an output marker must follow a block that is run")
    elif block.lang not in RUN_LANGS:
        report(block.line, f"a {marker.kind} marker on a block that is never run ({block.lang or 'no info string'})")
    elif block.lang == "python" and marker.kind in ("server", "exit"):
        report(block.line, f"a {marker.kind} marker applies to bash blocks only")


# --- linting blocks that are not run ------------------------------------------------------------------------------


def _commands(script: str) -> Iterator[tuple[int, list[str]]]:
    """(line offset, words) of each simple command of a bash script, roughly: enough for lines that call our CLIs.

    Continuation lines are joined; a heredoc body is skipped; commands are split at ``|``, ``&``, ``;``, ``&&`` and
    ``||``; redirections and their targets are dropped; synopsis brackets (``[--version N]``) are removed."""
    lines = script.splitlines()
    i = 0
    while i < len(lines):
        start, text = i, lines[i]
        while text.endswith("\\") and i + 1 < len(lines):
            i += 1
            text = text[:-1] + " " + lines[i]
        i += 1
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", text)
        if heredoc:
            while i < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
            i += 1
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:
            continue  # unbalanced quotes: not a line we can judge
        words: list[str] = []
        skip_next = False
        in_brackets = False
        for token in [*tokens, ";"]:
            if skip_next:
                skip_next = False
                continue
            if token and set(token) <= set("|&;()"):
                if words:
                    yield start, words
                words = []
                continue
            if token and set(token) <= set("<>&"):
                if words and words[-1].isdigit():
                    words.pop()
                skip_next = True
                continue
            if token.startswith("["):
                in_brackets = not token.endswith("]")
                continue
            if in_brackets:
                in_brackets = not token.endswith("]")
                continue
            words.append(token)


def lint_block(block: Block) -> list[str]:
    """Problems with the taskpatch commands of a bash block that is not run (see the module docstring)."""
    from client.cli import build_parser as client_parser
    from server.errors import TaskPatchError
    from server.settings import load_settings

    problems = []
    for offset, words in _commands(block.text):
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
            words = words[1:]  # VAR=value prefixes
        if not words:
            continue
        program = Path(words[0]).name
        if program in ("python", "python3") and words[1:3] == ["-m", "server"]:
            program, args = "taskpatch-server", words[3:]
        elif program in ("python", "python3") and words[1:3] == ["-m", "client"]:
            program, args = "client", words[3:]
        else:
            args = words[1:]
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                if program == "taskpatch-server":
                    load_settings(args, {})
                elif program in ("client", "taskpatch"):
                    client_parser(program).parse_args(args)
                else:
                    continue
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                message = stderr.getvalue().strip().splitlines()[-1:] or ["bad arguments"]
                problems.append(f"{display(block.doc)}:{block.line + 1 + offset}: {message[0]}")
        except TaskPatchError as err:
            problems.append(f"{display(block.doc)}:{block.line + 1 + offset}: taskpatch-server: {err}")
    return problems


def _outside_fences(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of the Markdown text outside fenced code blocks."""
    fence = ""
    for number, line in enumerate(text.splitlines(), start=1):
        match = FENCE.match(line)
        if not fence and match is not None:
            fence = match["fence"]
        elif fence and line.strip().startswith(fence) and set(line.strip()) == {fence[0]}:
            fence = ""
        elif not fence:
            yield number, line


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    result = set()
    for _, line in _outside_fences(text):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def check_links(doc: Path, text: str) -> list[str]:
    """Relative links must point at existing files, and anchors into Markdown files at existing headings."""
    problems = []
    for number, line in _outside_fences(text):
        for match in LINK.finditer(re.sub(r"`[^`]*`", "", line)):
            target = match["target"].strip("<>")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto:
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part).resolve() if file_part else doc.resolve()
            if not path.exists():
                problems.append(f"{display(doc)}:{number}: broken link {target!r}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text(encoding="utf-8")):
                problems.append(f"{display(doc)}:{number}: no heading for #{anchor} in {display(path)}")
    return problems


# --- running ------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    block: Block
    status: str  # ok | failed | timeout | not run | skipped | server
    seconds: float = 0.0
    output: str = ""
    detail: str = ""


class CheckerServer:
    """The document's own tiny server; started in the background so its start-up overlaps other work."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.log_path = workdir / "server.log"
        self._log = self.log_path.open("wb")
        command = [
            *_server_command(),
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
            "0",
            "--store-dir",
            str(workdir / "store"),
            "--grace-s",
            "5",
            "--max-wait-ms",
            "2",
        ]
        self.process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True
        )
        _PROCESS_GROUPS.add(self.process.pid)
        self.port: int | None = None
        self.metrics_port: int | None = None

    def wait_ready(self, timeout_s: float = SERVER_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while self.port is None:
            match = SERVING_LINE.search(self.log_path.read_text(errors="replace"))
            if match is not None:
                self.port, self.metrics_port = int(match["port"]), int(match["metrics"])
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"the checker's server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the checker's server did not start in {timeout_s:.0f} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _kill_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
        _PROCESS_GROUPS.discard(self.process.pid)
        self._log.close()


def _server_command() -> list[str]:
    return [sys.executable, "-m", "server"]


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def glue_dir() -> Path:
    return Path(os.environ.get("GLUE_DIR") or REPO.parent / "shared" / "data" / "glue").resolve()


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKPATCH_")}
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        GLUE_DIR=str(glue_dir()),
        TASKPATCH_BACKBONE="tiny",
        TASKPATCH_DEVICE="cpu",
        TASKPATCH_THREADS="1",
        TASKPATCH_TRAIN_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        COLUMNS="120",
        PYTHONUNBUFFERED="1",
    )
    env.pop("VIRTUAL_ENV", None)
    return env


def _script(blocks: Sequence[Block], blocks_dir: Path, outputs: Path, progress: Path) -> str:
    """One bash script for a document: each run block's output goes to its own file; ``progress`` logs which
    block started and which finished, so the checker can time each block and tell which one failed."""
    parts = ["set -euo pipefail"]
    log = shlex.quote(str(progress))
    for index, block in enumerate(blocks):
        out = shlex.quote(str(outputs / str(index)))
        parts.append(f"printf 'start %d\\n' {index} >>{log}")
        if block.lang == "python":
            source = blocks_dir / f"{index}.py"
            source.write_text(block.text)
            parts.append(f"python {shlex.quote(str(source))} >{out} 2>&1 </dev/null")
        elif block.marker is not None and block.marker.kind == "exit":
            expected = block.marker.status
            parts.append(
                f"set +e\n( set -e\n{block.text}\n) >{out} 2>&1 </dev/null\n__docs_rc=$?\nset -e\n"
                f'if [ "$__docs_rc" -ne {expected} ]; then\n'
                f"  printf '\\n[docs-check] expected exit status {expected}, got %d\\n' \"$__docs_rc\" >>{out}\n"
                "  exit 97\nfi"
            )
        else:
            parts.append(f"{{\n{block.text}\n}} >{out} 2>&1 </dev/null")
        parts.append(f"printf 'done %d\\n' {index} >>{log}")
    return "\n".join(parts) + "\n"


def needs_server(doc: Document) -> bool:
    """Whether a document talks to "the" server: a run block calls the client or names its address."""
    return any(block.runs and SERVER_USE.search(block.text) for block in doc.blocks)


def run_document(
    doc: Document,
    workdir: Path,
    env: dict[str, str],
    server: CheckerServer | None,
    timeout_s: float,
) -> list[Outcome]:
    outcomes: dict[int, Outcome] = {}
    run_blocks = [block for block in doc.blocks if block.runs]
    for block in doc.blocks:
        if block.lang in RUN_LANGS and block.marker is not None and block.marker.kind in ("skip", "server"):
            detail = block.marker.reason if block.marker.kind == "skip" else "the checker runs its own server"
            outcomes[id(block)] = Outcome(block, block.marker.kind, detail=detail)
    if not run_blocks:
        return [outcomes[id(b)] for b in doc.blocks if id(b) in outcomes]
    cwd = workdir / "cwd"
    private = workdir / "checker"
    outputs = private / "out"
    for directory in (cwd, private, outputs):
        directory.mkdir(parents=True, exist_ok=True)
    env = dict(env)
    if server is not None:
        try:
            server.wait_ready()
        except RuntimeError as err:
            for block in run_blocks:
                outcomes[id(block)] = Outcome(block, "not run", detail="no server")
            outcomes[id(run_blocks[0])] = Outcome(run_blocks[0], "failed", output=str(err), detail="server")
            return [outcomes[id(b)] for b in doc.blocks if id(b) in outcomes]
        env["TASKPATCH_SERVER"] = f"127.0.0.1:{server.port}"
        env["METRICS_URL"] = f"http://127.0.0.1:{server.metrics_port}/metrics"
    script = private / "document.sh"
    progress = private / "progress"
    progress.touch()
    script.write_text(_script(run_blocks, private, outputs, progress))
    main_log = private / "main.log"
    with main_log.open("wb") as log_file:
        process = subprocess.Popen(
            ["bash", str(script)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _PROCESS_GROUPS.add(process.pid)
        current, started, timed_out = -1, time.monotonic(), False
        starts: dict[int, float] = {}
        ends: dict[int, float] = {}
        while process.poll() is None:
            current, started = _read_progress(progress, starts, ends, current, started)
            if current >= 0 and current not in ends and time.monotonic() - started > timeout_s:
                timed_out = True
                _kill_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    _kill_group(process.pid, signal.SIGKILL)
                    process.wait()
                break
            time.sleep(0.05)
        current, started = _read_progress(progress, starts, ends, current, started)
        _kill_group(process.pid, signal.SIGTERM)  # whatever the document left running in the background
        time.sleep(0.2)
        _kill_group(process.pid, signal.SIGKILL)
        _PROCESS_GROUPS.discard(process.pid)
    for index, block in enumerate(run_blocks):
        out_file = outputs / str(index)
        output = out_file.read_text(errors="replace") if out_file.exists() else ""
        seconds = ends.get(index, time.monotonic()) - starts.get(index, time.monotonic())
        if index in ends:
            outcomes[id(block)] = Outcome(block, "ok", seconds, output)
        elif index in starts:
            status = "timeout" if timed_out else "failed"
            tail = main_log.read_text(errors="replace").strip()
            if timed_out:
                detail = f"timed out after {timeout_s:.0f} s"
            elif process.returncode == 97:
                detail = "wrong exit status"
            else:
                detail = f"exit status {process.returncode}"
            if tail:
                output = (output + "\n" + tail).strip() + "\n"
            outcomes[id(block)] = Outcome(block, status, seconds, output, detail)
        else:
            outcomes[id(block)] = Outcome(block, "not run", detail="an earlier block failed")
    _check_outputs(doc, outcomes)
    return [outcomes[id(b)] for b in doc.blocks if id(b) in outcomes]


def _read_progress(
    progress: Path, starts: dict[int, float], ends: dict[int, float], current: int, started: float
) -> tuple[int, float]:
    now = time.monotonic()
    for line in progress.read_text().splitlines():
        kind, _, number = line.partition(" ")
        if not number.isdigit():
            continue
        index = int(number)
        if kind == "start" and index not in starts:
            starts[index] = now
            current, started = index, now
        elif kind == "done" and index not in ends:
            ends[index] = now
    return current, started


def _check_outputs(doc: Document, outcomes: dict[int, Outcome]) -> None:
    """``output`` markers: the shown block's lines must occur, in order, in the previous block's output."""
    for previous, block in zip(doc.blocks, doc.blocks[1:], strict=False):
        if block.marker is None or block.marker.kind != "output":
            continue
        ran = outcomes.get(id(previous))
        if ran is None or ran.status != "ok":
            continue
        missing = _missing_lines(block.text, ran.output)
        if missing is not None:
            ran.status = "failed"
            ran.detail = f"output differs from {block.where}: no line containing {missing!r}"


def _missing_lines(expected: str, output: str) -> str | None:
    lines = [line.strip() for line in output.splitlines()]
    position = 0
    for want in (line.strip() for line in expected.splitlines()):
        if not want or want == "...":
            continue
        while position < len(lines) and want not in lines[position]:
            position += 1
        if position == len(lines):
            return want
        position += 1
    return None


# --- the configuration table --------------------------------------------------------------------------------------


def config_table() -> str:
    """The server's options as the Markdown table that docs/configuration.md holds (from server.settings)."""
    from server.settings import option_table

    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{flag}` | `{env}` | `{default}` | {text} |" for flag, env, default, text in option_table()]
    return "\n".join(rows) + "\n"


# --- command line -------------------------------------------------------------------------------------------------


def resolve_docs(names: Sequence[str]) -> list[Path]:
    paths: list[Path] = []
    for name in names or DEFAULT_DOCS:
        matches = sorted(REPO.glob(name)) if any(c in name for c in "*?[") else [Path(name)]
        for path in matches:
            path = path if path.is_absolute() else (Path.cwd() / path if path.exists() else REPO / path)
            if path not in paths:
                paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the commands in the docs (convention: see this file).")
    parser.add_argument("docs", nargs="*", help=f"Markdown files (default: {' '.join(DEFAULT_DOCS)})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per block")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="documents checked at once (default 2)")
    parser.add_argument("--list", action="store_true", help="classify the blocks, run nothing")
    parser.add_argument("--config-table", action="store_true", help="print the configuration table and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every run block's output")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories (printed)")
    args = parser.parse_args(argv)
    if args.config_table:
        print(config_table(), end="")
        return 0
    paths = resolve_docs(args.docs)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"no such file: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    docs = [parse_document(path) for path in paths]
    problems: list[str] = []
    for doc in docs:
        problems += doc.errors
        problems += check_links(doc.path, doc.path.read_text(encoding="utf-8"))
        for block in doc.blocks:
            if block.lang == "bash" and block.marker is not None and block.marker.kind in ("skip", "server"):
                problems += lint_block(block)
    if args.list:
        for doc in docs:
            print(display(doc.path))
            for block in doc.blocks:
                kind = "run" if block.runs else (block.marker.kind if block.marker else "shown")
                extra = f" (exit {block.marker.status})" if block.marker and block.marker.kind == "exit" else ""
                reason = f": {block.marker.reason}" if block.marker and block.marker.reason else ""
                print(f"  line {block.line:4d}  {block.lang or '-':8s} {kind}{extra}{reason}")
        for problem in problems:
            print(f"PROBLEM {problem}")
        return 1 if problems else 0
    if not (glue_dir() / "MRPC" / "train.tsv").is_file():
        print(f"warning: no GLUE data at {glue_dir()} (set GLUE_DIR); blocks that add GLUE tasks will fail")
    return _run_all(docs, problems, args)


def _run_all(docs: list[Document], problems: list[str], args: argparse.Namespace) -> int:
    env = base_env()
    root = Path(tempfile.mkdtemp(prefix="taskpatch-docs-"))
    failures: list[Outcome] = []
    counts: dict[str, int] = {}
    started_all = time.monotonic()

    def check(index: int) -> tuple[list[Outcome], float]:
        doc = docs[index]
        began = time.monotonic()
        workdir = root / f"{index:02d}-{doc.path.stem}"
        workdir.mkdir(parents=True)
        server = CheckerServer(workdir, env) if needs_server(doc) else None
        try:
            outcomes = run_document(doc, workdir, env, server, args.timeout)
        finally:
            if server is not None:
                server.stop()
        for outcome in outcomes:
            if outcome.status in ("failed", "timeout") and server is not None and outcome.detail != "server":
                outcome.output += f"\n--- the checker's server log (tail) ---\n{server.log()}"
        return outcomes, time.monotonic() - began

    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            # The longest documents first (by run blocks), so that two workers finish at about the same time.
            order = sorted(range(len(docs)), key=lambda i: -sum(block.runs for block in docs[i].blocks))
            submitted = {index: pool.submit(check, index) for index in order}
            futures = [submitted[index] for index in range(len(docs))]
            for doc, future in zip(docs, futures, strict=True):
                outcomes, seconds = future.result()
                print(f"{display(doc.path)} ({seconds:.1f} s)", flush=True)
                for outcome in outcomes:
                    counts[outcome.status] = counts.get(outcome.status, 0) + 1
                    block = outcome.block
                    label = f"  line {block.line:4d} {block.lang:6s} {outcome.status:7s}"
                    if outcome.status in ("ok", "failed", "timeout"):
                        label += f" {outcome.seconds:5.1f} s"
                    if outcome.detail:
                        label += f"  {outcome.detail}"
                    print(label)
                    if args.verbose and outcome.output.strip():
                        print(_indent(outcome.output))
                    if outcome.status in ("failed", "timeout"):
                        failures.append(outcome)
    finally:
        for pid in list(_PROCESS_GROUPS):
            _kill_group(pid, signal.SIGKILL)  # only after an interruption: documents clean up after themselves
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"\n{len(docs)} documents, {summary or 'no blocks'} in {time.monotonic() - started_all:.0f} s")
    for problem in problems:
        print(f"FAIL {problem}")
    for outcome in failures:
        block = outcome.block
        print(f"\nFAIL {block.where} ({block.lang} block, {outcome.detail})")
        print(_indent(block.text.rstrip(), "  | "))
        print("  output:")
        print(_indent(outcome.output.rstrip()[-6000:] or "(none)"))
    return 1 if problems or failures else 0


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


if __name__ == "__main__":
    sys.exit(main())
