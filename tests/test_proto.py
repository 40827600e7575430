"""The proto is the source of truth: committed stubs must match it, and it must pass buf lint."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_committed_stubs_are_generated_from_the_current_proto(tmp_path):
    subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--out", str(tmp_path)], check=True, capture_output=True
    )
    committed = REPO / "proto" / "rewardline" / "v1"
    fresh = tmp_path / "rewardline" / "v1"
    names = sorted(p.name for p in fresh.glob("*_pb2*"))
    assert names, "protoc wrote nothing"
    stale = [
        n for n in names if not (committed / n).exists() or not filecmp.cmp(committed / n, fresh / n, shallow=False)
    ]
    assert not stale, f"stale stubs {stale}: run `python proto/generate.py` and commit"


def test_stubs_import_under_the_package_name():
    """protoc's own imports (``from rewardline.v1 import ...``) resolve: no rewriting of its output."""
    from rewardline.v1 import reward_pb2_grpc, trainer_pb2_grpc

    assert (
        "from rewardline.v1 import reward_pb2"
        in (REPO / "proto" / "rewardline" / "v1" / "reward_pb2_grpc.py").read_text()
    )
    assert reward_pb2_grpc.RewardServiceStub and trainer_pb2_grpc.TrainerServiceStub


def buf_binary() -> str:
    local = REPO / ".cache" / "tools" / "node_modules" / ".bin" / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    assert found, "buf is installed by `bash deploy/install.sh --test` (npm @bufbuild/buf)"
    return found


def test_buf_lint_is_clean():
    result = subprocess.run([buf_binary(), "lint", "proto"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
