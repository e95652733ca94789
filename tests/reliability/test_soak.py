"""The soak benchmark (``bench/soak.py``) as a test: 120 s of 16 concurrent clients on the tiny backbone.

Zero failed requests, RSS growth under 5% between the warm-up and the end, no thread or descriptor leak (no growth
from the first half of the run to the second). Override with ``TASKPATCH_SOAK_S`` / ``TASKPATCH_SOAK_CLIENTS``; the
long run on the real backbone is ``python -m bench.soak --duration-s 600 --backbone default``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.soak import FD_SLACK, THREAD_SLACK, build_parser, run
from tests.reliability.report import report

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_soak_has_no_failures_and_no_drift(tmp_path: Path) -> None:
    duration = os.environ.get("TASKPATCH_SOAK_S", "120")
    clients = os.environ.get("TASKPATCH_SOAK_CLIENTS", "16")
    args = build_parser().parse_args(
        ["--duration-s", duration, "--clients", clients, "--backbone", "tiny", "--work-dir", str(tmp_path)]
    )
    result = run(args)
    report("soak", result)
    assert result["failed_requests"] == 0, result["failure_examples"]
    assert result["requests"] > 0 and result["requests_by_rpc"].get("DeleteTask", 0) > 0
    assert result["rss_growth_pct"] < 5.0, result
    # A leak grows on; the thread pool filling up to its bound after the warm-up does not (bench/soak.py).
    assert result["threads_second_half_max"] <= result["threads_first_half_max"] + THREAD_SLACK, result
    assert result["fds_second_half_max"] <= result["fds_first_half_max"] + FD_SLACK, result
    assert result["server_exit_code"] == 0
    assert result["ok"], result["problems"]
