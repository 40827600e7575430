"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` need a CUDA device: skipped, with the reason, where there is none."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# --- Local models (trainer.local_models) -------------------------------------------------------------------
@pytest.fixture(scope="session")
def local_models() -> Path:
    """The directory `rewardline models build` makes (reward, policy, tokenizer, data, build.json).

    `bash deploy/install.sh --test` builds it into <repo>/.cache/models (2-4 minutes on a 2-core machine);
    here it is only checked, and rebuilt when the builder's code or config changed since (a step at a time: an
    edit of the judge's code retrains the judge alone).
    """
    from rewardline.trainer.local_models.build import ensure_models

    return ensure_models(REPO / ".cache" / "models")


@pytest.fixture(scope="session")
def reward_dir(local_models: Path) -> Path:
    return local_models / "reward"


@pytest.fixture(scope="session")
def reference(reward_dir: Path):
    """The local reward model in-process (support.InProcessRewardModel): what served rewards must equal."""
    from support import InProcessRewardModel

    return InProcessRewardModel(reward_dir)


# --- Triton (services/triton, services/backends/triton.py; tests/test_triton_*.py) ------------------------------
class TritonControl:
    """``rewardline triton start`` on a loopback port, as a user runs it; started and stopped by the tests
    (one server for the whole session, stopped and restarted by the restart test). Explicit model control with
    only ``reward`` loaded at start: each loaded model costs a Python-backend stub (seconds to start), so the
    uncertainty test loads its model itself and unloads it after."""

    def __init__(self, repo: Path, log_path: Path) -> None:
        from rewardline.services.process import free_port

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

    def start(self, timeout: float = 240.0) -> TritonControl:
        import os
        import subprocess
        import sys

        from rewardline.services.triton.launcher import wait_ready

        if self.running:
            return self
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rewardline.services",
                    "triton",
                    "start",
                    "--repo",
                    str(self.repo),
                    "--grpc-port",
                    str(self.port),
                    "--model-control-mode",
                    "explicit",
                    "--load-models",
                    "reward",
                ],
                env={**os.environ, "OMP_NUM_THREADS": "1"},
                stdout=log,
                stderr=log,
                start_new_session=True,
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
    from rewardline.services.triton.config import TritonRepoConfig
    from rewardline.services.triton.repository import build_repository

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


# --- Judge (services/judge, services/backends/vllm.py; tests/test_judge_*.py, tests/test_vllm_*.py) -------------
class DirectJudge:
    """The reference a judge's reward must equal: transformers on one unpadded prompt, the built-in templates
    written out here by hand, and the probabilities computed here — no rewardline code involved."""

    RUBRIC = "Is it correct, complete and clearly stated?"

    def __init__(self, model_dir: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def first_token(self, text: str) -> int:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"][0]

    @staticmethod
    def fenced(tag: str, text: str) -> str:
        return f"<{tag}>{text}</{tag}>\n"

    def verify_message(self, question: str, response: str, reference: str = "", rationale: bool = False) -> str:
        ask = 'Check it, then end with "Verdict: Yes" or "Verdict: No".' if rationale else "Answer Yes or No."
        return (
            "Is the response correct?\n"
            + self.fenced("question", question)
            + (self.fenced("reference", reference) if reference else "")
            + self.fenced("response", response)
            + ask
        )

    def rubric_message(self, question: str, response: str, scale: int = 5) -> str:
        return (
            f"Rate the response to the question from 1 to {scale}: {self.RUBRIC}\n"
            + self.fenced("question", question)
            + self.fenced("response", response)
            + f"Answer with a number from 1 to {scale}."
        )

    def pairwise_message(self, question: str, a: str, b: str) -> str:
        return (
            "Which response answers the question better?\n"
            + self.fenced("question", question)
            + self.fenced("response_a", a)
            + self.fenced("response_b", b)
            + "Answer A or B."
        )

    def chat(self, message: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
        )

    def next_logprobs(self, text: str):  # type: ignore[no-untyped-def]
        ids = self.torch.tensor([self.tokenizer(text, add_special_tokens=False)["input_ids"]])
        with self.torch.inference_mode():
            return self.torch.log_softmax(self.model(input_ids=ids).logits[0, -1].double(), dim=-1)

    def choose(self, text: str, labels: list[str]) -> list[float]:
        """The distribution over ``labels`` (by their first tokens) at the position after ``text``."""
        lp = self.next_logprobs(text)[[self.first_token(label) for label in labels]]
        return self.torch.softmax(lp, dim=-1).tolist()

    def verdict(self, question: str, response: str, reference: str = "") -> float:
        return self.choose(self.chat(self.verify_message(question, response, reference)), ["Yes", "No"])[0]

    def verdict_after_rationale(self, question: str, response: str, rationale: str) -> float:
        """The verdict read after the judge's own rationale and "Verdict:" (its space forced, as the tokenizer
        writes "Verdict: Yes" as ":", " ", "Y", "es")."""
        text = self.chat(self.verify_message(question, response, rationale=True)) + rationale + "Verdict: "
        return self.choose(text, ["Yes", "No"])[0]

    def rating(self, question: str, response: str, scale: int = 5) -> tuple[float, int]:
        """(expected rating, most likely rating)."""
        p = self.choose(
            self.chat(self.rubric_message(question, response, scale)), [str(r) for r in range(1, scale + 1)]
        )
        return sum((r + 1) * q for r, q in enumerate(p)), 1 + max(range(scale), key=lambda r: p[r])

    def prefer_a(self, question: str, a: str, b: str) -> float:
        """P(the first-shown response is better)."""
        return self.choose(self.chat(self.pairwise_message(question, a, b)), ["A", "B"])[0]


@pytest.fixture(scope="session")
def judge_dir(local_models: Path) -> Path:
    """The local judge `rewardline models build` trains (a tiny causal LM answering the `verify` template)."""
    return local_models / "judge"


@pytest.fixture(scope="session")
def direct_judge(judge_dir: Path) -> DirectJudge:
    return DirectJudge(judge_dir)


def _start_together(*services, timeout: float = 300.0):  # type: ignore[no-untyped-def]
    """Starts ServiceProcesses at once (their imports and engine starts overlap); all of them or none."""
    from rewardline.services.process import start_all

    return start_all(services, timeout)


@pytest.fixture(scope="session")
def start_together():
    """``start_together(svc, ...)``: start several ServiceProcesses concurrently."""
    return _start_together


def _stop_together(*services) -> list:  # type: ignore[no-untyped-def]
    """SIGTERM to every ServiceProcess at once, then their exit codes (each killed if it does not exit)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(services)) as pool:
        codes = [f.result() for f in [pool.submit(s.stop) for s in services]]
    for s in services:
        s.kill()
    return codes


@pytest.fixture(scope="session")
def stop_together():
    """``stop_together(svc, ...)``: stop several ServiceProcesses concurrently; returns their exit codes."""
    return _stop_together


# --- The HTTP face and the adapters (services/http_face, services/integrations; tests/test_http_face.py,
# tests/test_integrations.py, tests/test_peers.py) -------------------------------------------------------------
FACE_MAX_SAMPLES = 16  # below the requests some tests send, so that the client's splitting runs


@pytest.fixture(scope="session")
def face_services(local_models: Path):
    """One service of each kind, each with its HTTP face on: the reward and uncertainty models `models build`
    makes, and the judge on transformers. Started together once for every test of the faces and adapters."""
    from rewardline.services.process import ServiceProcess, free_port

    common = ["--max-samples-per-request", str(FACE_MAX_SAMPLES), "--max-batch-size", "16"]
    services = {
        "reward": ServiceProcess(
            "reward", ["--model", str(local_models / "reward"), "--max-length", "256", *common], http_port=free_port()
        ),
        "uncertainty": ServiceProcess(
            "uncertainty",
            ["--model", str(local_models / "uncertainty"), "--max-length", "256", *common],
            http_port=free_port(),
        ),
        "judge": ServiceProcess(
            "judge", ["--model", str(local_models / "judge"), "--backend", "hf", *common], http_port=free_port()
        ),
    }
    _start_together(*services.values())
    yield services
    assert _stop_together(*services.values()) == [0, 0, 0]  # SIGTERM drains both faces and exits cleanly
