"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# --- Local models (trainer.local_models) -------------------------------------------------------------------
@pytest.fixture(scope="session")
def local_models() -> Path:
    """The directory `rewardline models build` makes (reward, policy, tokenizer, data, build.json).

    Built once into <repo>/.cache/models (about two minutes on a 2-core machine) and rebuilt only when the
    builder's code or config changes; later sessions reuse it.
    """
    from trainer.local_models.build import ensure_models

    return ensure_models(REPO / ".cache" / "models")


# --- Triton (services/triton, services/backends/triton.py; tests/test_triton_*.py) ------------------------------
class TritonControl:
    """``rewardline triton start`` on a loopback port, as a user runs it; started and stopped by the tests
    (one server for the whole session, stopped and restarted by the restart test). Explicit model control with
    only ``reward`` loaded at start: each loaded model costs a Python-backend stub (seconds to start), so the
    uncertainty test loads its model itself and unloads it after."""

    def __init__(self, repo: Path, log_path: Path) -> None:
        from services.process import free_port

        self.repo = repo
        self.port = free_port()
        self.log_path = log_path
        self.process = None
        self.exit_codes: list[int] = []

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 240.0) -> "TritonControl":
        import os
        import subprocess
        import sys

        from services.triton.launcher import wait_ready

        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services", "triton", "start", "--repo", str(self.repo), "--grpc-port", str(self.port),
                 "--model-control-mode", "explicit", "--load-models", "reward"],
                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=log, start_new_session=True,
            )
        wait_ready(self.url, timeout, self.process, self.log_path)
        return self

    def stop(self, timeout: float = 120.0) -> int | None:
        """SIGTERM to the launcher, which forwards it so that tritonserver drains; returns the exit code."""
        import signal

        if not self.running:
            return None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout)
        self.exit_codes.append(code)
        return code


@pytest.fixture(scope="session")
def triton_repo(local_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository for the local reward and uncertainty models, as `rewardline triton build-repo` writes it.
    Triton's max batch (8) is below the test services' (16), so the backend's splitting of a batch runs too."""
    from services.triton.config import TritonRepoConfig
    from services.triton.repository import build_repository

    out = tmp_path_factory.mktemp("triton-repo")
    for name in ("reward", "uncertainty"):
        build_repository(TritonRepoConfig(model=local_models / name, out=out, max_batch_size=8, num_threads=1))
    return out


@pytest.fixture(scope="session")
def triton(triton_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """The session's tritonserver control; not started until a test asks (the backend tests start their
    service first, to see it come up while Triton is down)."""
    control = TritonControl(triton_repo, tmp_path_factory.mktemp("triton-log") / "tritonserver.log")
    yield control
    control.stop()

