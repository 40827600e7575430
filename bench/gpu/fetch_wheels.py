"""Fetch, on this machine, the wheels the GPU machine lacks, into an ignored folder small enough to carry.

    .venv/bin/python bench/gpu/fetch_wheels.py                       # cp312 manylinux x86-64, bench/gpu/wheels
    .venv/bin/python bench/gpu/fetch_wheels.py --python-version 3.11 --dest /tmp/w   # for a rehearsal here

The GPU machine has no package registry; its python3 (3.12) comes with CUDA torch, transformers, tokenizers,
safetensors, grpcio, protobuf, prometheus-client, peft, pyyaml, jinja2, matplotlib and tqdm
(bench/gpu/README.md). What rewardline needs besides is found by walking the requirements that pyproject.toml
declares (plus pytest, to run the `gpu`-marked tests there) through the metadata of this virtual environment, so
a dependency added to pyproject is fetched without editing this file. The walk stops at the large binary packages
the GPU machine is known to have (NOT_CARRIED): carrying CUDA torch is impossible, and shadowing its numpy would
be a risk for nothing. The small packages it has (grpcio, protobuf, ...) are still fetched, as fallbacks:
install_wheels.py installs a wheel there only when the machine's own version does not satisfy the requirement
(the generated gRPC stubs need grpcio >= 1.81.1 and protobuf >= 6.33.5; an older image would fail to import
them).

The local models travel too (``.cache/models``, ~11 MB, carried rather than rebuilt there: gpu_models.py), so
this script also makes sure they are the current checkout's build (``ensure_models``: nothing to do when they
are, a rebuild of minutes here when the builder changed) and reports their size (``--no-models``: skip).

Each wheel is the version installed here (the one the tests pass with), downloaded with pip for the target's
Python and platform (``--only-binary :all: --no-deps``); rewardline's own wheel is built from this checkout
(``pip wheel --no-deps --no-build-isolation .``): on the GPU machine it supplies the package metadata and entry
points, while install_wheels.py points its packages at the carried working tree, so a fix made after fetching
needs no new wheel. Every wheel's tags are checked against the target, and the total against ``--limit-mib``
(the carry limit is 64 MiB for everything a run takes along, working tree and models included).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[2]
# Tested here with pytest; pytest-timeout reads pyproject's `timeout` setting.
TEST_TOOLS = ("pytest", "pytest-timeout")
# Large binaries the GPU machine has and that must never be shadowed there (numpy: every one of them needs it).
NOT_CARRIED = frozenset(
    canonicalize_name(n)
    for n in ("torch", "transformers", "tokenizers", "safetensors", "peft", "matplotlib", "numpy", "triton")
)
# manylinux2014 is manylinux_2_17; pip needs both spellings to accept either kind of wheel.
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64")


def target_environment(python_version: str) -> dict[str, str]:
    """What requirement markers see on the target machine."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "extra": "",
    }


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in [*project["dependencies"], *TEST_TOOLS]]


def closure(roots: list[Requirement], env: dict[str, str]) -> dict[str, str]:
    """name -> version installed here, for every requirement reachable from ``roots`` outside NOT_CARRIED."""
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in NOT_CARRIED or name in found or (req.marker and not req.marker.evaluate(env)):
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{req.name} is required but not installed here: install the project first") from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise SystemExit(f"{req.name} {dist.version} here does not satisfy {req}")
        found[name] = dist.version
        todo += [Requirement(r) for r in dist.requires or []]
    return found


def download(pins: dict[str, str], python_version: str, dest: Path) -> None:
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:"]
    command += ["--python-version", python_version, "--implementation", "cp", *platforms, "--dest", str(dest)]
    subprocess.run([*command, *(f"{n}=={v}" for n, v in sorted(pins.items()))], check=True)


def build_own_wheel(dest: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dest)]
    subprocess.run([*command, str(REPO)], check=True, cwd=REPO)


def supported_tags(python_version: str) -> set[Tag]:
    """The tags pip accepts on CPython ``python_version`` on manylinux_2_17 x86-64 (and anything older)."""
    major, minor = (int(x) for x in python_version.split("."))
    platforms = [f"manylinux_2_{m}_x86_64" for m in range(17, 4, -1)] + ["manylinux2014_x86_64", "linux_x86_64"]
    platforms += ["manylinux2010_x86_64", "manylinux1_x86_64"]
    tags = set(cpython_tags((major, minor), platforms=platforms))
    return tags | set(compatible_tags((major, minor), f"cp{major}{minor}", platforms=platforms))


def pyproject_digest() -> str:
    return hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python-version", default="3.12", help="the target machine's Python (major.minor)")
    parser.add_argument("--dest", type=Path, default=REPO / "bench" / "gpu" / "wheels")
    parser.add_argument("--limit-mib", type=float, default=24.0, help="refuse a wheel set larger than this")
    parser.add_argument("--no-models", dest="models", action="store_false", help="leave .cache/models alone")
    args = parser.parse_args()

    env = target_environment(args.python_version)
    pins = closure(project_requirements(), env)
    if args.dest.exists():
        shutil.rmtree(args.dest)
    args.dest.mkdir(parents=True)
    download(pins, args.python_version, args.dest)
    build_own_wheel(args.dest)

    supported = supported_tags(args.python_version)
    rows, problems = [], []
    for wheel in sorted(args.dest.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(wheel.name)
        if not tags & supported:
            problems.append(f"{wheel.name} does not install on CPython {args.python_version} manylinux x86-64")
        rows.append({"file": wheel.name, "name": str(name), "version": str(version), "bytes": wheel.stat().st_size})
    missing = set(pins) - {r["name"] for r in rows}
    problems += [f"no wheel downloaded for {n}" for n in sorted(missing)]
    total = sum(r["bytes"] for r in rows)
    if total > args.limit_mib * 2**20:
        problems.append(f"{total / 2**20:.1f} MiB of wheels is over the {args.limit_mib} MiB limit")
    manifest = {
        "python_version": args.python_version,
        "platforms": list(PLATFORMS),
        "pyproject_sha256": pyproject_digest(),
        "not_carried": sorted(NOT_CARRIED),
        "total_bytes": total,
        "wheels": rows,
    }
    (args.dest / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    for r in rows:
        print(f"{r['bytes'] / 2**20:8.2f} MiB  {r['file']}")
    print(f"{total / 2**20:8.2f} MiB  in {len(rows)} wheels -> {args.dest}")
    if args.models:
        from rewardline.trainer.local_models.build import ensure_models

        models = ensure_models(REPO / ".cache" / "models")
        size = sum(f.stat().st_size for f in models.rglob("*") if f.is_file())
        print(f"{size / 2**20:8.2f} MiB  local models, current -> {models} (carry it with the wheels)")
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
