"""Lint, format and types, as CI runs them: ruff (configured in pyproject.toml) and mypy on services/ and trainer/.

mypy reads the package under its import name, ``rewardline.*``, which exists only through pyproject's
package-dir mapping (an import hook in the editable install, which mypy does not follow). So it is given a
folder of links that lays the directories out as they install: rewardline/{services,trainer,v1}.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = ["services", "trainer", "tests", "bench", "deploy", "proto/generate.py"]


def tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is installed by `bash deploy/install.sh --test` (the test extra)")
    return str(path)


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900, **kwargs)


def test_ruff_check_is_clean():
    result = run([tool("ruff"), "check", "--no-cache", *SOURCES])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_every_file_as_it_is():
    result = run([tool("ruff"), "format", "--check", "--no-cache", *SOURCES])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_no_type_errors(tmp_path: Path):
    package = tmp_path / "rewardline"
    package.mkdir()
    for name, target in (("services", "services"), ("trainer", "trainer"), ("v1", "proto/rewardline/v1")):
        (package / name).symlink_to(REPO / target, target_is_directory=True)
    env = {**os.environ, "MYPYPATH": str(tmp_path)}
    cache = REPO / ".cache" / "mypy"
    command = [tool("mypy"), "--config-file", "pyproject.toml", "--cache-dir", str(cache)]
    result = run([*command, "-p", "rewardline.services", "-p", "rewardline.trainer"], env=env)
    assert result.returncode == 0, result.stdout.replace(str(tmp_path / "rewardline"), "") + result.stderr


def test_no_type_ignore_without_a_reason():
    """A ``# type: ignore[code]`` must say on its line why the checker is wrong there."""
    bare = []
    for root in ("services", "trainer"):
        for path in (REPO / root).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if "# type: ignore" in line:
                    reason = line.split("# type: ignore", 1)[1].partition("]")[2].strip()
                    if not reason.startswith("#") or len(reason) < 10:
                        bare.append(f"{path.relative_to(REPO)}:{number}")
    assert not bare, f"type: ignore without a reason: {bare}"
