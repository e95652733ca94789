"""The client imports ``tasks``: it must stay free of torch, the server and heavy lazy-only dependencies."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tasks_imports_without_torch_or_server() -> None:
    code = (
        "import sys, tasks\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'server', 'datasets', 'transformers'})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
