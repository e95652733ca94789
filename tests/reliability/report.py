"""Figures of the reliability checks: one JSON line on stdout (``pytest -s``) and, when the environment variable
``TASKPATCH_RELIABILITY_OUT`` names a directory, ``<dir>/<check>.json`` (what docs/reliability.md was written from).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def report(check: str, figures: dict[str, Any]) -> None:
    line = json.dumps({"check": check, **figures}, sort_keys=True)
    print(line)
    out = os.environ.get("TASKPATCH_RELIABILITY_OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / f"{check}.json").write_text(line + "\n")
