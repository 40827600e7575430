"""Regenerates the Python stubs beside the protos (``python proto/generate.py``).

protoc writes ``proto/rewardline/v1/*_pb2.py`` importing each other as ``rewardline.v1``, which is the import
name the package gives them (pyproject.toml maps ``rewardline.v1`` to ``proto/rewardline/v1``), so protoc's
output is used exactly as written. The stubs are committed so that an install needs no protoc;
tests/test_proto.py regenerates them into a temporary folder and fails when the committed ones are stale.
"""

from __future__ import annotations

import argparse
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("rewardline/v1/reward.proto", "rewardline/v1/trainer.proto")


def generate(out_root: Path = PROTO_ROOT, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Writes ``*_pb2.py``, ``*_pb2.pyi`` and ``*_pb2_grpc.py`` under ``out_root/rewardline/v1``."""
    import grpc_tools  # a test/dev dependency only
    from grpc_tools import protoc

    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    (out_root / "rewardline" / "v1" / "__init__.py").touch()
    return sorted((out_root / "rewardline" / "v1").glob("*_pb2*.py*"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT, help="root to write rewardline/v1/ under")
    for path in generate(parser.parse_args().out):
        print(path)
