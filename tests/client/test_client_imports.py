"""The client runs on machines without torch: importing it must not pull in torch, the server, or (for start-up
speed) the tasks package, which loads numpy, scipy and scikit-learn and is only needed by add-task."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_client_imports_stay_light() -> None:
    code = (
        "import sys, client, client.api, client.cli, client.render\n"
        "heavy = {'torch', 'server', 'tasks', 'transformers', 'datasets'}\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_python_dash_m_client() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "client", "--help"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0
    assert result.stdout.startswith("usage: client ")
