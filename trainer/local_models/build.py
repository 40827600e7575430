"""`rewardline models build`: runs the steps of steps.py into one directory, cached and written atomically.

- Cached: `ensure_models` does nothing when `DIR/build.json` carries the key of the current code and config.
  Otherwise each step whose own key is unchanged is copied from the previous build instead of rerun. A step's key
  covers the source of every project module its `run` function reaches through imports, found by reading the
  imports (module-level and inside functions) rather than listed by hand, and the data files (templates) of their
  packages: a hand-kept list missed the helpers a step imports indirectly and left stale models in place.
- Atomic: the build happens in a sibling `DIR.tmp-XXXX` that replaces DIR by renames only when every step has
  finished, so an interrupted build never leaves a directory that looks complete.
- Serialised: a lock file beside DIR makes concurrent builders (parallel test sessions) wait for one another.
- Deterministic: each step seeds random, numpy and torch from the build seed and its own name, so its output
  does not depend on which other steps ran or were reused, nor on whether it ran in this process or a worker.
- Parallel: steps that do not need each other (the policy beside the judge, then the reward model and its
  uncertainty heads) run at once in `workers` worker processes, each with `threads` torch threads; on 2 cores
  this cuts the build by a third.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from types import ModuleType

import huggingface_hub.constants
import tokenizers
import torch
import transformers
from transformers.utils import logging as hf_logging

from rewardline.trainer.local_models.config import ModelsBuildConfig
from rewardline.trainer.local_models.steps import STEPS, BuildStep, describe

log = logging.getLogger(__name__)
MANIFEST = "build.json"
PROJECT = "rewardline"
NOT_DATA = {".py", ".pyc", ".pyi", ".md"}  # modules count when imported; stubs and documentation change no output


def library_versions() -> dict[str, str]:
    """Part of every key: a new torch or transformers may train or save differently."""
    return {"torch": torch.__version__, "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def step_seed(config: ModelsBuildConfig, step: BuildStep) -> int:
    return zlib.crc32(f"{config.seed}:{step.name}".encode())


def step_keys(config: ModelsBuildConfig) -> dict[str, str]:
    keys: dict[str, str] = {}
    versions = json.dumps(library_versions(), sort_keys=True)
    modules = ModuleIndex()
    for step in STEPS:
        sources = step_sources(step.run, modules)
        parts = [step.name, str(step_seed(config, step)), describe(config, step), versions]
        parts += [f"{name}\n{text}" for name, text in sorted(sources.items())]
        parts += [keys[n] for n in step.needs]
        keys[step.name] = _sha256(parts)
    return keys


def step_sources(run: Callable[..., object], modules: ModuleIndex | None = None) -> dict[str, str]:
    """Everything a step's output depends on as code, by name: its `run` function and the functions of its own
    module that it calls, every project module they reach through imports, and their packages' data files."""
    modules = modules or ModuleIndex()
    functions, roots = entry_points(run)
    sources = {f"{f.__module__}.{f.__qualname__}": inspect.getsource(f) for f in functions}
    for name in modules.closure(roots):
        path = modules.path(name)
        if path is not None:
            sources[name] = _read(path)
            sources |= modules.data_files(name)
    return sources


def entry_points(run: Callable[..., object]) -> tuple[list[Callable[..., object]], set[str]]:
    """(`run` and the functions of its module it calls, transitively; the project modules they use).

    Starting from what the function uses rather than from its whole module keeps one step's key apart from the
    others': steps.py imports what every step needs. A module-level name counts when the body reads it (a
    module, or anything defined in a project module); the annotations do not run and are left out."""
    home = sys.modules[run.__module__]
    functions: list[Callable[..., object]] = []
    modules: set[str] = set()
    todo = [run]
    while todo:
        function = todo.pop()
        if function in functions:
            continue
        functions.append(function)
        definition = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
        assert isinstance(definition, ast.FunctionDef)
        body = ast.Module(body=definition.body, type_ignores=[])
        modules |= imported_modules(body, home.__package__ or "")
        for name in {node.id for node in ast.walk(body) if isinstance(node, ast.Name)}:
            value = vars(home).get(name)
            if inspect.isfunction(value) and value.__module__ == home.__name__:
                todo.append(value)
            elif isinstance(value, ModuleType):
                modules.add(value.__name__)
            elif isinstance(getattr(value, "__module__", None), str):
                modules.add(value.__module__)
    return functions, {m for m in modules if _in_project(m)}


def imported_modules(tree: ast.AST, package: str) -> set[str]:
    """The modules an import statement anywhere in `tree` may load: `import a.b` -> a.b; `from a import b` -> a,
    and a.b too (b may be a submodule; `ModuleIndex` drops it when it is not). `package` resolves relative ones."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            out |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return out


class ModuleIndex:
    """Project modules resolved to files (importlib.util.find_spec), each read and parsed once per key."""

    def __init__(self) -> None:
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}
        self._imports: dict[str, set[str]] = {}

    def spec(self, name: str) -> importlib.machinery.ModuleSpec | None:
        """None for what is not a project module: also for a name imported from a module (`from m import f` gives
        m.f), which is refused by looking at m's spec, as asking for m.f's would import m."""
        if name not in self._specs:
            parent = name.rpartition(".")[0]
            parent_spec = self.spec(parent) if _in_project(parent) else None
            if not _in_project(name) or (parent_spec is not None and parent_spec.submodule_search_locations is None):
                self._specs[name] = None
            else:
                self._specs[name] = importlib.util.find_spec(name)
        return self._specs[name]

    def path(self, name: str) -> Path | None:
        """The module's source file; None for a namespace package (`rewardline` itself) and what is no module."""
        spec = self.spec(name)
        if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
            return None
        return Path(spec.origin)

    def closure(self, roots: Iterable[str]) -> list[str]:
        """`roots`, the packages above them (importing a module runs their __init__) and every project module any
        of these imports, at module level or inside a function, transitively; sorted."""
        seen: set[str] = set()
        todo = list(roots)
        while todo:
            name = todo.pop()
            if name in seen or not _in_project(name):
                continue
            seen.add(name)
            todo += [name.rpartition(".")[0]] if "." in name else []
            path = self.path(name)
            if path is not None:
                if name not in self._imports:
                    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                    self._imports[name] = imported_modules(ast.parse(_read(path)), package)
                todo += self._imports[name] - seen
        return sorted(n for n in seen if self.path(n) is not None)

    def data_files(self, name: str) -> dict[str, str]:
        """The non-Python files of a package module's directory (the judge's .jinja templates), by name; not
        those of its subpackages, which count when they are imported themselves."""
        path = self.path(name)
        if path is None or path.name != "__init__.py":
            return {}
        out: dict[str, str] = {}
        for directory, subdirectories, files in os.walk(path.parent):
            subdirectories[:] = [
                d for d in subdirectories if d != "__pycache__" and not Path(directory, d, "__init__.py").exists()
            ]
            for file in (Path(directory, f) for f in files if Path(f).suffix not in NOT_DATA):
                out[f"{name}/{file.relative_to(path.parent).as_posix()}"] = _read(file)
        return out


def _in_project(name: str) -> bool:
    return name == PROJECT or name.startswith(PROJECT + ".")


def _read(path: Path) -> str:
    """Any file's bytes, losslessly as text (surrogate escapes), so a data file need not be UTF-8."""
    return path.read_bytes().decode("utf-8", "surrogateescape")


def build_key(config: ModelsBuildConfig) -> str:
    """Covers every step's key and this file's source (which writes the manifest)."""
    return _sha256([*step_keys(config).values(), inspect.getsource(sys.modules[__name__])])


def _sha256(parts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8", "surrogateescape"))
        digest.update(b"\0")
    return digest.hexdigest()


def read_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_current(out: Path, config: ModelsBuildConfig) -> bool:
    manifest = read_manifest(out)
    return manifest is not None and manifest.get("key") == build_key(config)


def ensure_models(out: Path, config: ModelsBuildConfig | None = None) -> Path:
    """The built directory, building (or updating) it first only if its key differs from the current one."""
    config = config or ModelsBuildConfig()
    if not is_current(out, config):
        with _locked(out):
            if not is_current(out, config):  # another process may have built it while this one waited
                _build(out, config, reuse=True)
    return out


def build_models(out: Path, config: ModelsBuildConfig | None = None, *, force: bool = False) -> dict:
    """Builds into `out`, reusing unchanged steps of a previous build unless `force`; returns the manifest."""
    with _locked(out):
        return _build(out, config or ModelsBuildConfig(), reuse=not force)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _build_settings(threads: int) -> Iterator[None]:
    """Threads, determinism and transformers' load/save progress bars set for the build, and given back after
    (the caller may be a test session with settings of its own)."""
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), hf_logging.is_progress_bar_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1])
        if before[2]:
            hf_logging.enable_progress_bar()


def _build(out: Path, config: ModelsBuildConfig, reuse: bool) -> dict:
    if out.exists() and read_manifest(out) is None and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not a models build; refusing to replace it")
    for stale in [*out.parent.glob(f"{out.name}.tmp-*"), *out.parent.glob(f"{out.name}.old-*")]:
        shutil.rmtree(stale)  # left by a build that was killed; none is running, as this one holds the lock
    previous = read_manifest(out) if reuse else None
    keys = step_keys(config)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would become the finished directory's mode
    try:
        steps = _run_steps(config, keys, tmp, out, previous)
        manifest = {
            "key": build_key(config),
            "seed": config.seed,
            "config": config.model_dump(mode="json"),
            "versions": library_versions(),
            "seconds": round(time.perf_counter() - started, 2),
            "steps": steps,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _replace(out, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("models built in %s (%.0f s)", out, manifest["seconds"], extra={"out": str(out), "key": manifest["key"]})
    return manifest


def _run_steps(
    config: ModelsBuildConfig, keys: dict[str, str], root: Path, out: Path, previous: dict | None
) -> dict[str, dict]:
    """Every step's manifest entry, in STEPS order. A step starts once the steps it needs are done: here when
    `workers` is 1, else in a process of its own (`_StepProcesses`), so that independent steps train at once.

    Some steps run here even with workers: a light one (under a second; a step process costs an interpreter and
    torch's import, 4-5 s on 2 cores), and one that would run alone (nothing running, nothing else ready), as
    nothing could run beside it anyway."""
    if config.workers == 1:
        with _build_settings(config.threads):
            return {step.name: _run_step(step, keys[step.name], config, root, out, previous) for step in STEPS}
    done: dict[str, dict] = {}
    pending = list(STEPS)
    running: dict[Future[dict], str] = {}

    def ready(step: BuildStep) -> bool:
        return all(n in done for n in step.needs)

    with _StepProcesses(config, root) as processes:
        while pending or running:
            for step in [s for s in pending if ready(s)]:
                pending.remove(step)
                reused = _reused(step, keys[step.name], root, out, previous)
                if reused is not None:
                    done[step.name] = reused
                elif step.light or (not running and not any(ready(s) for s in pending)):
                    with _build_settings(config.threads):
                        done[step.name] = _execute(step, keys[step.name], config, root)
                else:
                    running[processes.submit(step.name, keys[step.name])] = step.name
            if not running:
                if pending and not any(ready(s) for s in pending):
                    raise ValueError(f"build steps {[s.name for s in pending]} need steps that never run")
                continue
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                done[running.pop(future)] = future.result()  # a failed step fails the build here
    return {step.name: done[step.name] for step in STEPS}


class _StepProcesses:
    """Runs build steps as `python -m rewardline.trainer.local_models.build_step` processes, `workers` at once.

    Fresh interpreters rather than multiprocessing's: a spawned worker re-imports the caller's main script, which
    breaks any script that builds without a `__main__` guard, and a forked one inherits torch's thread pools. On
    leaving (a step failed, or the build was interrupted) the steps still running are stopped.
    """

    def __init__(self, config: ModelsBuildConfig, root: Path) -> None:
        self.config, self.root = config, root
        self.threads = ThreadPoolExecutor(config.workers, thread_name_prefix="build-step")
        self.processes: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def __enter__(self) -> _StepProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping = True
        for process in list(self.processes):
            process.kill()
        self.threads.shutdown(wait=True, cancel_futures=True)

    def submit(self, name: str, key: str) -> Future[dict]:
        return self.threads.submit(self._run, name, key)

    def _run(self, name: str, key: str) -> dict:
        with tempfile.TemporaryDirectory(prefix=f"step-{name}-") as scratch:
            result = Path(scratch) / "result.json"
            request = {
                "step": name,
                "key": key,
                "root": str(self.root),
                "result": str(result),
                "config": self.config.model_dump(mode="json"),
                "log_level": logging.getLogger().getEffectiveLevel(),
            }
            command = [sys.executable, "-m", "rewardline.trainer.local_models.build_step"]
            # the Hub's offline flag as this process has it: transformers writes it into every saved tokenizer's
            # config, so a step process with another value would write other bytes
            env = {**os.environ, "HF_HUB_OFFLINE": "1" if huggingface_hub.constants.HF_HUB_OFFLINE else "0"}
            process = subprocess.Popen(command, stdin=subprocess.PIPE, env=env)
            self.processes.add(process)
            try:
                process.communicate(json.dumps(request).encode())
            finally:
                self.processes.discard(process)
            if process.returncode != 0 or not result.exists():
                why = "stopped" if self.stopping else f"failed with exit code {process.returncode}; its error is above"
                raise RuntimeError(f"build step {name} {why}")
            return dict(json.loads(result.read_text(encoding="utf-8")))


def run_requested_step(request: dict) -> None:
    """The body of a step process (build_step.py): one step, under the build's settings, its entry written out."""
    if request["log_level"] <= logging.INFO:
        from rewardline.services.logs import setup_logging

        setup_logging(logging.getLevelName(request["log_level"]))
    config = ModelsBuildConfig.model_validate(request["config"])
    step = next(s for s in STEPS if s.name == request["step"])
    with _build_settings(config.threads):
        entry = _execute(step, request["key"], config, Path(request["root"]))
    Path(request["result"]).write_text(json.dumps(entry), encoding="utf-8")


def _reused(step: BuildStep, key: str, root: Path, out: Path, previous: dict | None) -> dict | None:
    """The previous build's output of this step, copied into the new build, when its key is unchanged."""
    before = (previous or {}).get("steps", {}).get(step.name, {})
    if before.get("key") != key or not (out / step.output).is_dir():
        return None
    shutil.copytree(out / step.output, root / step.output)
    log.info("reused step %s", step.name, extra={"step": step.name})
    return {**before, "reused": True}


def _run_step(
    step: BuildStep, key: str, config: ModelsBuildConfig, root: Path, out: Path, previous: dict | None
) -> dict:
    reused = _reused(step, key, root, out, previous)
    return reused if reused is not None else _execute(step, key, config, root)


def _execute(step: BuildStep, key: str, config: ModelsBuildConfig, root: Path) -> dict:
    seed = step_seed(config, step)
    transformers.set_seed(seed)
    started = time.perf_counter()
    metrics = step.run(root, config, seed)
    seconds = round(time.perf_counter() - started, 2)
    extra = {"step": step.name, "seconds": seconds, "metrics": metrics}
    log.info("built step %s in %.1f s", step.name, seconds, extra=extra)
    return {"key": key, "output": step.output, "seed": seed, "seconds": seconds, "reused": False, "metrics": metrics}


def _replace(out: Path, tmp: Path) -> None:
    """Two renames; between them `out` is briefly missing, never half-built."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def summary(manifest: dict) -> str:
    lines = [f"built in {manifest['seconds']:.0f} s (key {manifest['key'][:12]})"]
    for name, step in manifest["steps"].items():
        figures = {k: v for k, v in step["metrics"].items() if isinstance(v, int | float)}
        shown = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
        lines.append(f"  {name:<10} {step['seconds']:>6.1f} s{' (reused)' if step['reused'] else ''}  {shown}")
    return "\n".join(lines)
