"""The docs cannot rot: every command in README.md and docs/*.md runs (scripts/check_docs.py), and the reference
tables in docs/configuration.md match the code. The convention is documented at the top of scripts/check_docs.py."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from server.patches.registry import registered_methods
from server.settings import option_table

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()


def _load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_docs", REPO / "scripts" / "check_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_docs"] = module  # dataclasses look their module up while the class is being built
    spec.loader.exec_module(module)
    return module


check_docs = _load_checker()


# --- the reference tables -----------------------------------------------------------------------------------------


def test_configuration_table_is_the_generated_one() -> None:
    assert check_docs.config_table() in CONFIGURATION, "regenerate: python scripts/check_docs.py --config-table"


def test_configuration_table_lists_every_option_with_its_default() -> None:
    for flag, env, default, help_text in option_table():
        assert f"| `{flag}` | `{env}` | `{default}` | {help_text} |" in CONFIGURATION, flag


def test_method_options_table_matches_the_registered_methods() -> None:
    documented = set(re.findall(r"^\| `(\w+)` \| `(\w+)` \| `([^`]*)` \|", CONFIGURATION, re.M))
    expected = {
        (name, field.name, json.dumps(field.default))
        for name, method in registered_methods().items()
        for field in dataclasses.fields(method.config_class)
    }
    assert documented == expected


# --- the convention -----------------------------------------------------------------------------------------------


def _docs() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def test_every_doc_follows_the_convention_and_links_resolve() -> None:
    problems = []
    for path in _docs():
        doc = check_docs.parse_document(path)
        problems += doc.errors + check_docs.check_links(path, path.read_text())
        for block in doc.blocks:
            if block.lang == "bash" and block.marker is not None and block.marker.kind in ("skip", "server"):
                problems += check_docs.lint_block(block)
    assert not problems, "\n".join(problems)


def test_every_doc_is_in_the_index() -> None:
    index = (DOCS / "README.md").read_text()
    missing = [p.name for p in DOCS.glob("*.md") if p.name != "README.md" and f"]({p.name})" not in index]
    assert not missing, f"add to docs/README.md: {missing}"


def _parse(text: str, tmp_path: Path) -> Any:
    path = tmp_path / "doc.md"
    path.write_text(text)
    return check_docs.parse_document(path)


def test_blocks_are_classified_by_info_string_and_marker(tmp_path: Path) -> None:
    doc = _parse(
        "```bash\necho run\n```\n\n```python\nprint(1)\n```\n\n```text\nshown\n```\n\n```\nshown\n```\n\n"
        "<!-- docs-check: skip (needs a GPU) -->\n```bash\nnvidia-smi\n```\n\n"
        "<!-- docs-check: server -->\n```bash\ntaskpatch-server &\n```\n\n"
        "<!-- docs-check: exit 3 -->\n```bash\nexit 3\n```\n\n"
        "<!-- docs-check: output -->\n```text\nexpected\n```\n",
        tmp_path,
    )
    assert not doc.errors
    summary = [(b.lang, b.runs, b.marker.kind if b.marker else None) for b in doc.blocks]
    assert summary == [
        ("bash", True, None),
        ("python", True, None),
        ("text", False, None),
        ("", False, None),
        ("bash", False, "skip"),
        ("bash", False, "server"),
        ("bash", True, "exit"),
        ("text", False, "output"),
    ]
    assert doc.blocks[4].marker.reason == "needs a GPU"
    assert doc.blocks[6].marker.status == 3
    assert [b.line for b in doc.blocks[:2]] == [1, 5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("```sh\nls\n```\n", "info string 'sh'"),
        ("```console\n$ ls\n```\n", "info string 'console'"),
        ("<!-- docs-check: skip -->\n```bash\nls\n```\n", "bad marker"),
        ("<!-- docs-check: skip () -->\n```bash\nls\n```\n", "bad marker"),
        ("<!-- docs-check: later -->\n```bash\nls\n```\n", "bad marker"),
        ("<!-- docs-check: skip (why) -->\nsome prose\n\n```bash\nls\n```\n", "not followed by a code block"),
        ("<!-- docs-check: skip (why) -->\n```text\nls\n```\n", "never run"),
        ("```text\nx\n```\n<!-- docs-check: output -->\n```text\ny\n```\n", "must follow a block that is run"),
        ("<!-- docs-check: exit 1 -->\n```python\nraise SystemExit(1)\n```\n", "bash blocks only"),
        ("```bash\nls\n", "never closed"),
    ],
)
def test_convention_errors(tmp_path: Path, text: str, message: str) -> None:
    errors = _parse(text, tmp_path).errors
    assert any(message in error for error in errors), errors


def test_lint_catches_bad_flags_in_blocks_that_are_not_run(tmp_path: Path) -> None:
    doc = _parse(
        "<!-- docs-check: skip (needs a GPU) -->\n```bash\n"
        "taskpatch-server --device cuda --dtype bf16 >log 2>&1 &\n"  # fine
        "client tasks | client rollback mrpc [--version N]   # synopsis brackets are ignored\n"
        "client rollback mrpc --versoin 2\n"  # line 5
        "taskpatch-server --max-batch-size 0 \\\n  --port 1\n"  # line 6
        "TASKPATCH_X=1 taskpatch-server --auth-all\n"  # line 8: booleans take a value
        "```\n",
        tmp_path,
    )
    problems = check_docs.lint_block(doc.blocks[0])
    assert len(problems) == 3, problems
    assert ":5: " in problems[0] and "--versoin" in problems[0]
    assert ":6: " in problems[1] and "max_batch_size" in problems[1]
    assert ":8: " in problems[2] and "--auth-all" in problems[2]


def test_links_and_anchors_are_checked(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## A section: with punctuation!\n")
    text = (
        "[ok](other.md) [ok](other.md#a-section-with-punctuation) [web](https://example.com) [here](#top)\n"
        "# Top\n[missing](nope.md) [bad anchor](other.md#nope)\n```text\n[in a block](ignored.md)\n```\n"
    )
    (tmp_path / "doc.md").write_text(text)
    problems = check_docs.check_links(tmp_path / "doc.md", text)
    assert len(problems) == 2, problems
    assert "nope.md" in problems[0] and "#nope" in problems[1]


def test_expected_output_lines_must_appear_in_order() -> None:
    output = "uploading x\nerror: bad thing on row 2\nhint: fix it\n"
    assert check_docs._missing_lines("error: bad thing\n...\nhint: fix it\n", output) is None
    assert check_docs._missing_lines("hint: fix it\nerror: bad thing\n", output) == "error: bad thing"


# --- running ------------------------------------------------------------------------------------------------------


def _run_checker(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "check_docs.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_runner_shares_shell_state_checks_exit_status_and_reports_the_failing_block(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        '```bash\nNAME=world\ncd "$(mktemp -d)"\necho made >file\n```\n\n'
        '```bash\ntest "$NAME" = world && cat file\n```\n\n'
        "<!-- docs-check: output -->\n```text\nmade\n```\n\n"
        "<!-- docs-check: exit 2 -->\n```bash\necho about to fail\nexit 2\n```\n\n"
        '```python\nimport os\nprint("in", os.path.basename(os.getcwd()))\n```\n\n'
        "```bash\necho before\nfalse\necho never\n```\n\n"
        "```bash\necho not run\n```\n"
    )
    result = _run_checker(str(doc), timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert re.search(r"line\s+1 bash\s+ok", out) and re.search(r"line\s+7 bash\s+ok", out)  # NAME, cd, file
    assert re.search(r"line\s+17 bash\s+ok", out), out  # the expected exit status 2
    assert re.search(r"line\s+22 python ok", out)
    assert re.search(r"line\s+27 bash\s+failed", out) and re.search(r"line\s+33 bash\s+not run", out)
    assert f"FAIL {doc}:27" in out and "before" in out and "never" not in out.split("FAIL")[-1].split("output:")[1]


def test_runner_fails_on_wrong_output_and_wrong_exit_status(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "```bash\necho actual\n```\n\n<!-- docs-check: output -->\n```text\nexpected\n```\n\n"
        "<!-- docs-check: exit 1 -->\n```bash\ntrue\n```\n"
    )
    result = _run_checker(str(doc), "--timeout", "20", timeout=60)
    assert result.returncode == 1
    assert "no line containing 'expected'" in result.stdout
    assert "expected exit status 1, got 0" in result.stdout


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_every_command_in_the_docs_runs(glue_data_dir: Path) -> None:
    """README.md and docs/*.md against tiny-backbone servers; under 2 minutes on 2 cores."""
    result = _run_checker()
    assert result.returncode == 0, result.stdout[-20000:] + result.stderr[-5000:]
