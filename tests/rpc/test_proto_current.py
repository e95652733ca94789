"""The committed generated code must match protos/taskpatch.proto (regenerate with `make proto`)."""

from __future__ import annotations

import shutil
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("taskpatch_pb2.py", "taskpatch_pb2.pyi", "taskpatch_pb2_grpc.py")


def test_generated_code_is_current(tmp_path: Path) -> None:
    (tmp_path / "protos").mkdir()
    shutil.copy(REPO / "protos" / "taskpatch.proto", tmp_path / "protos" / "taskpatch.proto")
    args = ["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}"]
    args += [f"--grpc_python_out={tmp_path}", str(tmp_path / "protos" / "taskpatch.proto")]
    assert protoc.main(args) == 0
    for name in GENERATED:
        fresh = (tmp_path / "protos" / name).read_text()
        committed = (REPO / "protos" / name).read_text()
        assert fresh == committed, f"protos/{name} is stale: run `make proto` and commit the result"
