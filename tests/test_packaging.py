"""The package as users install it: one top-level name, and an import graph whose arrows point one way.

Users import rewardline's client and adapters into their own training code, so the project must put exactly one
name, ``rewardline``, into their environment (generic names like ``services`` or ``trainer`` would collide with
their own folders). Inside, the serving side never imports the trainer, and no two modules import each other
through any chain: each part can then be read, tested and changed from the bottom up.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def package_dirs() -> dict[str, Path]:
    """Import name -> directory, from pyproject's package-dir mapping and package list."""
    setuptools = pyproject()["tool"]["setuptools"]
    roots = {name: REPO / path for name, path in setuptools["package-dir"].items()}
    out = {}
    for package in setuptools["packages"]:
        root = max((r for r in roots if package == r or package.startswith(r + ".")), key=len)
        out[package] = roots[root].joinpath(*package[len(root) :].split(".")[1:])
    return out


def project_modules() -> dict[str, Path]:
    """Every module of the installed package, by import name."""
    modules = {}
    for package, directory in package_dirs().items():
        for path in directory.glob("*.py"):
            modules[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return modules


def imports_of(path: Path, module: str, is_package: bool) -> set[str]:
    """Every module name an import statement in ``path`` names, at module level or inside functions."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name that is a package's attribute resolves to the package)."""
    modules = project_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for name in imports_of(path, module, path.name == "__init__.py"):
            if name in modules and name != module:
                graph[module].add(name)
        graph.setdefault(module, set())
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_package_directory_is_installed():
    """A folder with an __init__.py that pyproject does not list would be missing from the wheel."""
    listed = {path.resolve() for path in package_dirs().values()}
    on_disk = {p.parent.resolve() for root in ("services", "trainer") for p in (REPO / root).rglob("__init__.py")}
    assert on_disk <= listed, f"not in pyproject's [tool.setuptools] packages: {sorted(map(str, on_disk - listed))}"


def test_the_serving_side_never_imports_the_trainer():
    graph = import_graph()
    upward = {m: sorted(d for d in deps if d.startswith("rewardline.trainer")) for m, deps in graph.items()}
    upward = {m: deps for m, deps in upward.items() if m.startswith("rewardline.services") and deps}
    assert not upward, f"services/ imports trainer/: {upward}"


def test_no_module_imports_itself_through_others():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_graph_sees_real_imports():
    """The checks above are only as good as the graph: it must see a known import of each kind."""
    graph = import_graph()
    assert "rewardline.services.api" in graph["rewardline.services.client"]  # module level, from-import
    assert "rewardline.services.server" in graph["rewardline.services.cli"]  # inside a function
    assert "rewardline.v1.reward_pb2" in graph["rewardline.services.api"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(REPO)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (found,) = out.glob("rewardline-*.whl")
    return found


def test_the_wheel_puts_one_name_into_site_packages(wheel: Path):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/RECORD"))
        top_level = archive.read(f"{info}/top_level.txt").decode().split()
    assert top_level == ["rewardline"]
    assert {n.split("/")[0] for n in names} == {"rewardline", info}
    for expected in project_modules().values():
        installed = expected.relative_to(REPO)
        assert any(n.endswith(installed.name) for n in names), f"{installed} is missing from the wheel"
    assert "rewardline/services/judge/templates/verify.jinja" in names
    assert "rewardline/v1/reward.proto" in names


def test_the_wheel_imports_from_outside_the_checkout(wheel: Path, tmp_path: Path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    code = "import rewardline.services.client, rewardline.trainer.train, rewardline.services as s;print(s.__file__)"
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith(str(target)), f"imported from {result.stdout.strip()}, not the wheel"
