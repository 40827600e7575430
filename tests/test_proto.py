"""The proto is the source of truth: committed stubs must match it, and it must pass buf lint."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
from pathlib import Path

from services.api import generate

REPO = Path(__file__).resolve().parents[1]


def test_committed_stubs_are_generated_from_the_current_proto(tmp_path):
    generate.generate(out_root=tmp_path)
    committed = REPO / "services" / "api" / "rewardline" / "v1"
    fresh = tmp_path / "rewardline" / "v1"
    names = sorted(p.name for p in fresh.glob("*_pb2*"))
    assert names, "protoc wrote nothing"
    stale = [n for n in names if not (committed / n).exists() or not filecmp.cmp(committed / n, fresh / n, shallow=False)]
    assert not stale, f"stale stubs {stale}: run `python services/api/generate.py` and commit"


def buf_binary() -> str:
    local = REPO / ".cache" / "tools" / "node_modules" / ".bin" / "buf"
    found = str(local) if local.exists() else shutil.which("buf")
    assert found, "buf is installed by `bash deploy/install.sh --test` (npm @bufbuild/buf)"
    return found


def test_buf_lint_is_clean():
    result = subprocess.run([buf_binary(), "lint", "proto"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
