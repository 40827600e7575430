"""Regenerates the Python stubs from proto/ (``python services/api/generate.py``).

The stubs are committed so that an install needs no protoc; tests/test_proto.py regenerates them into a
temporary folder and fails when the committed ones are stale. protoc writes imports as the proto's own
package path (``from rewardline.v1 import ...``); they are rewritten to live under ``services.api``, because
``services`` and ``trainer`` are this project's only import packages.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
OUT_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("rewardline/v1/reward.proto", "rewardline/v1/trainer.proto")


def generate(out_root: Path = OUT_ROOT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Writes ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under ``out_root/rewardline/v1``."""
    from grpc_tools import protoc  # a test/dev dependency only
    import grpc_tools

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    files = [f for f in PROTO_FILES if (proto_root / f).exists()]
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = []
    for path in sorted((out_root / "rewardline" / "v1").glob("*_pb2*.py*")):
        text = path.read_text()
        text = re.sub(r"^from rewardline\.v1 import", "from services.api.rewardline.v1 import", text, flags=re.M)
        path.write_text(text)
        written.append(path)
    for pkg in (out_root / "rewardline", out_root / "rewardline" / "v1"):
        (pkg / "__init__.py").touch()
    return written


if __name__ == "__main__":
    for p in generate():
        print(p.relative_to(Path.cwd()) if p.is_relative_to(Path.cwd()) else p)
    sys.exit(0)
