"""Install, on the GPU machine, the carried wheels its Python lacks, into a target directory put on PYTHONPATH.

    python3 bench/gpu/install_wheels.py WHEELS TARGET        (run_all.sh does this)

Only the standard library is needed to start: ``packaging`` (to read requirements) is imported from the machine
or, failing that, straight from its carried wheel (a wheel of pure Python is a zip Python can import from).

Resolution, from rewardline's own requirements (the carried rewardline wheel's metadata) plus pytest's:
a requirement the machine already satisfies is left alone, so its CUDA torch, transformers and numpy are never
shadowed; one it does not satisfy is taken from the carried wheels (its own requirements are then resolved the
same way); one neither can satisfy is reported, not fatal: the run goes on and the step that needs it fails
with its own message. The chosen wheels are installed with ``pip install --no-index --no-deps --target`` (or
unpacked, where the machine has no pip). Last, rewardline's packages in the target are replaced by links to the
working tree (services/, trainer/, proto/rewardline/v1), as an editable install would do, so the code that runs
is the code carried with this run, not the code of the day the wheel was built.

Writes TARGET/install.json: what was installed, what the machine had, what could not be satisfied.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TEST_TOOLS = ("pytest", "pytest-timeout")
# rewardline's import packages and the directories of the working tree they install from (pyproject's package-dir)
LINKS = {"services": "services", "trainer": "trainer", "v1": "proto/rewardline/v1"}


def import_packaging(wheels: Path) -> tuple[Any, Any, Any]:
    try:
        import packaging.requirements  # noqa: F401
    except ImportError:
        carried = sorted(wheels.glob("packaging-*.whl"))
        if not carried:
            raise
        sys.path.insert(0, str(carried[-1]))
    from packaging import requirements, utils, version

    return requirements, utils, version


def installed_version(name: str, search: list[str]) -> str | None:
    found = next(iter(metadata.Distribution.discover(name=name, path=search)), None)
    return found.version if found is not None else None


def wheel_requires(path: Path) -> list[str]:
    """Requires-Dist of a wheel, read from its METADATA."""
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = z.read(name).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def main() -> int:
    wheels, target = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    requirements, utils, version = import_packaging(wheels)
    env = {"extra": ""}
    carried: dict[str, list[tuple[Any, Path]]] = {}
    for path in wheels.glob("*.whl"):
        name, ver, _, _ = utils.parse_wheel_filename(path.name)
        carried.setdefault(name, []).append((ver, path))
    own = carried.get("rewardline")
    if not own:
        print(f"no rewardline wheel in {wheels}: run bench/gpu/fetch_wheels.py first", file=sys.stderr)
        return 2
    own_wheel = max(own, key=lambda x: x[0])[1]
    # what the machine has, without what an earlier run installed into the target (on PYTHONPATH by now)
    search = [p for p in sys.path if p and not Path(p).resolve().is_relative_to(target)]
    todo = [requirements.Requirement(r) for r in [*wheel_requires(own_wheel), *TEST_TOOLS]]
    chosen: dict[str, Path] = {"rewardline": own_wheel}
    present: dict[str, str] = {}
    unsatisfied: list[str] = []
    seen: set[str] = set()
    while todo:
        req = todo.pop(0)
        if req.marker and not req.marker.evaluate(env):
            continue
        name = utils.canonicalize_name(req.name)
        key = f"{name}{req.specifier}"
        if key in seen:
            continue
        seen.add(key)
        if name in chosen:
            continue
        have = installed_version(req.name, search)
        if have is not None and req.specifier.contains(have, prereleases=True):
            present[name] = have
            continue
        options = [(v, p) for v, p in carried.get(name, []) if req.specifier.contains(v, prereleases=True)]
        if not options:
            unsatisfied.append(f"{req} (machine: {have or 'absent'}, carried: none that fits)")
            continue
        chosen[name] = max(options, key=lambda x: x[0])[1]
        present.pop(name, None)
        todo += [requirements.Requirement(r) for r in wheel_requires(chosen[name])]

    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    files = sorted(str(p) for p in chosen.values())
    pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True)
    if pip.returncode == 0:
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target"]
        subprocess.run([*command, str(target), *files], check=True)
        how = "pip"
    else:  # no pip: a wheel is a zip laid out as site-packages (its .data scripts are not needed here)
        for f in files:
            zipfile.ZipFile(f).extractall(target)
        how = "unzip (no pip on this machine)"
    package = target / "rewardline"
    for name, source in LINKS.items():
        installed = package / name
        if installed.is_dir() and not installed.is_symlink():
            shutil.rmtree(installed)
        installed.symlink_to(REPO / source, target_is_directory=True)

    report = {
        "python": sys.version.split()[0],
        "installed_with": how,
        "installed": {n: Path(p).name for n, p in sorted(chosen.items())},
        "machine_had": dict(sorted(present.items())),
        "unsatisfied": unsatisfied,
        "rewardline_links": {n: str(REPO / s) for n, s in LINKS.items()},
    }
    (target / "install.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"installed into {target} ({how}): {', '.join(sorted(chosen))}")
    print(f"the machine's own: {', '.join(f'{n} {v}' for n, v in sorted(present.items()))}")
    for line in unsatisfied:
        print(f"UNSATISFIED: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
