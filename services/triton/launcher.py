"""``rewardline triton start``: the tritonserver that nvidia-pytriton bundles, with the environment it needs.

The wheel ships a real tritonserver (2.51, which runs on a CPU too), but not laid out to run on its own:
- the Python backend (``libtriton_python.so``, ``triton_python_backend_utils.py``) and the stub built for this
  Python version sit in different folders; one backend directory holding all three is assembled under a cache
  directory (once per pytriton and Python version) and passed as ``--backend-directory``;
- ``LD_LIBRARY_PATH`` must start with the stub Python's own lib directory and then ``nvidia_pytriton.libs``;
  otherwise the system's libpython3.11 is loaded and every model fails to load
  (``'_thread.RLock' object has no attribute '_recursion_count'``);
- the stub imports packages from the ``python3`` first on ``PATH``, and this Triton build's stub needs numpy<2
  (with numpy 2 every output tensor comes back empty). The project's .venv has numpy 2 (vLLM needs it), so the
  stub runs in its own small environment, ``.venv-triton`` (deploy/install.sh --test creates it), whose
  ``bin`` goes first on ``PATH``. (Triton's ``EXECUTION_ENV_PATH`` model parameter would tie the repository to
  this machine's paths; PATH keeps the repository portable to NVIDIA's image.)

``TritonServer`` is the child-process handle the tests and benchmarks use; ``run`` is the CLI's foreground
mode, which forwards SIGTERM/SIGINT to tritonserver so that it drains, and exits with its code.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rewardline.services.process import ChildProcess
from rewardline.services.triton.config import TritonStartConfig

log = logging.getLogger(__name__)

PYTHON_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py")
STUB = "triton_python_backend_stub"
_STUB_PROBE = """
import importlib.util, sys, sysconfig
import numpy
print(f"{sys.version_info[0]}.{sys.version_info[1]}")
print(sysconfig.get_config_var("LIBDIR"))
print(numpy.__version__)
print(",".join(m for m in ("torch", "transformers", "safetensors") if importlib.util.find_spec(m) is None))
"""


@dataclass(frozen=True)
class TritonInstall:
    """Where nvidia-pytriton put tritonserver, its libraries, the Python backend and the stubs."""

    root: Path
    libs: Path
    version: str

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    def stub(self, python_version: str) -> Path:
        return self.root / "python_backend_stubs" / python_version / STUB


@dataclass(frozen=True)
class StubPython:
    """The environment the Python-backend stub runs in."""

    env: Path
    version: str
    libdir: Path


def find_install() -> TritonInstall:
    """Locates nvidia-pytriton without importing it (its import wants numpy<2 and more)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "nvidia-pytriton is not installed; `pip install --no-deps nvidia-pytriton==0.7.0` "
            "(deploy/install.sh --test does) provides tritonserver"
        )
    package = Path(list(spec.submodule_search_locations)[0])
    install = TritonInstall(
        package / "tritonserver", package.parent / "nvidia_pytriton.libs", importlib.metadata.version("nvidia-pytriton")
    )
    if not install.binary.is_file():
        raise FileNotFoundError(f"nvidia-pytriton {install.version} has no tritonserver at {install.binary}")
    return install


def default_python_env() -> Path:
    """``.venv-triton`` beside the environment running rewardline (``.venv``)."""
    return Path(sys.prefix).parent / ".venv-triton"


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rewardline" / "triton"


def inspect_python_env(env: Path) -> StubPython:
    """Checks that ``env`` can run the stub with deploy/triton/model.py, and reads its version and lib dir."""
    python = env / "bin" / "python3"
    if not python.exists():
        raise FileNotFoundError(
            f"no Python environment for Triton's stub at {env}; `bash deploy/install.sh --test` creates .venv-triton"
        )
    probe = subprocess.run([str(python), "-c", _STUB_PROBE], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        raise RuntimeError(
            f"{python} cannot run Triton's stub (needs numpy<2, torch, transformers, safetensors): "
            f"{probe.stderr.strip()[-500:]}"
        )
    version, libdir, numpy_version, missing = (probe.stdout.splitlines() + [""] * 4)[:4]
    if int(numpy_version.split(".")[0]) >= 2:
        raise RuntimeError(
            f"{env} has numpy {numpy_version}; this Triton build's Python backend needs numpy<2 (outputs come back "
            "empty)"
        )
    if missing:
        raise RuntimeError(f"{env} lacks {missing}, which deploy/triton/model.py imports")
    return StubPython(env, version, Path(libdir))


def assemble_backend_dir(install: TritonInstall, python_version: str, cache_dir: Path) -> Path:
    """A ``--backend-directory`` holding ``python/`` with the backend and the stub for ``python_version``."""
    stub = install.stub(python_version)
    if not stub.is_file():
        raise FileNotFoundError(
            f"nvidia-pytriton {install.version} ships no Python-backend stub for Python {python_version}"
        )
    sources = {name: install.python_backend / name for name in PYTHON_BACKEND_FILES} | {STUB: stub}
    backends = Path(cache_dir) / f"pytriton-{install.version}-py{python_version}" / "backends"
    python_dir = backends / "python"
    if all(
        (python_dir / n).is_file() and (python_dir / n).stat().st_size == s.stat().st_size for n, s in sources.items()
    ):
        return backends
    backends.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".backends.", dir=backends.parent))
    try:
        (staging / "python").mkdir()
        for name, source in sources.items():
            shutil.copy2(source, staging / "python" / name)
        shutil.rmtree(backends, ignore_errors=True)
        try:
            staging.rename(backends)
        except OSError:  # another process assembled it at the same moment: use theirs
            if not (python_dir / STUB).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return backends


def server_environment(
    install: TritonInstall, stub_python: StubPython, base: dict[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    library_path = [str(stub_python.libdir), str(install.libs)]
    if env.get("LD_LIBRARY_PATH"):
        library_path.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(library_path)
    env["PATH"] = os.pathsep.join([str(stub_python.env / "bin"), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    env.pop("PYTHONPATH", None)  # the service's own paths must not shadow the stub environment's packages
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def server_command(config: TritonStartConfig, install: TritonInstall, backend_dir: Path) -> list[str]:
    cmd = [
        str(install.binary),
        f"--model-repository={Path(config.repo).resolve()}",
        f"--backend-directory={backend_dir}",
        # The Python backend names its shared-memory regions with this prefix; a unique one lets several
        # servers share a machine (tests running beside each other).
        f"--backend-config=python,shm-region-prefix-name=rewardline_{uuid.uuid4().hex[:12]}_",
        f"--grpc-address={config.host}",
        f"--grpc-port={config.grpc_port}",
        f"--exit-timeout-secs={config.exit_timeout_s}",
        f"--log-verbose={config.log_verbose}",
    ]
    if config.model_control_mode == "explicit":
        cmd.append("--model-control-mode=explicit")
        cmd += [f"--load-model={name}" for name in (config.load_models or ["*"])]
    if config.http_port is None:
        cmd.append("--allow-http=false")
    else:
        cmd += [f"--http-address={config.host}", f"--http-port={config.http_port}"]
    if config.metrics_port is None:
        cmd.append("--allow-metrics=false")
    else:
        cmd += [
            f"--metrics-address={config.host}",
            f"--metrics-port={config.metrics_port}",
            "--allow-gpu-metrics=false",
        ]
    return cmd


def wait_ready(url: str, timeout: float, process: subprocess.Popen | None = None, log_path: Path | None = None) -> None:
    """Returns once the server at ``url`` and every model in its repository are ready (strict readiness)."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    hint = f" (its log: {log_path})" if log_path else ""
    deadline = time.monotonic() + timeout
    with grpcclient.InferenceServerClient(url) as client:
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {process.returncode} before it was ready{hint}")
            try:
                if client.is_server_ready(client_timeout=2.0):
                    return
            except InferenceServerException:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"tritonserver at {url} was not ready after {timeout:.0f}s{hint}")


class TritonServer(ChildProcess):
    """A tritonserver child process on one model repository (ready: Triton's readiness endpoint)."""

    def __init__(self, config: TritonStartConfig, log_path: Path | None = None) -> None:
        super().__init__(log_path)
        self.config = config
        self.install = find_install()
        self.stub_python = inspect_python_env(Path(config.python_env or default_python_env()))
        self.backend_dir = assemble_backend_dir(
            self.install, self.stub_python.version, Path(config.cache_dir or default_cache_dir())
        )

    @property
    def url(self) -> str:
        return f"{self.config.host}:{self.config.grpc_port}"

    def command(self) -> list[str]:
        return server_command(self.config, self.install, self.backend_dir)

    def environment(self) -> dict[str, str]:
        return server_environment(self.install, self.stub_python)

    def wait_ready(self, timeout: float) -> None:
        wait_ready(self.url, timeout, self.process, self.log_path)


def run(config: TritonStartConfig) -> int:
    """Runs tritonserver in the foreground until it exits; SIGTERM/SIGINT are forwarded so it drains."""
    server = TritonServer(config)
    log.info("starting tritonserver", extra={"command": server.command(), "python_env": str(server.stub_python.env)})
    process = server.spawn(foreground=True)

    def forward(signum: int, _frame: object) -> None:
        if process.poll() is None:
            process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = process.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code if code >= 0 else 128 - code
