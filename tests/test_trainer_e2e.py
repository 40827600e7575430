"""The trainer end to end: vLLM rollouts (CPU build), generated asynchronously (one step ahead, on the rollout
thread) and streamed to the real reward service on loopback plus a verifiable reward; the policy's weights change
and the engine's generations follow them. (The demo's test runs vLLM synchronously.)"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from rewardline.services.metrics import sample_value, scrape
from rewardline.services.process import ServiceProcess
from rewardline.trainer.config import TrainConfig
from rewardline.trainer.rollout.base import encode_prompt
from rewardline.trainer.rollout.hf_engine import HFEngine
from rewardline.trainer.train import Trainer

pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def reward_service(local_models, tmp_path_factory):
    log = tmp_path_factory.mktemp("svc") / "reward.log"
    with ServiceProcess("reward", ["--model", str(local_models / "reward")], log_path=log) as service:
        yield service


def test_vllm_rollouts_against_the_reward_service(local_models, reward_service, tmp_path):
    config = TrainConfig.model_validate(
        {
            "run_dir": tmp_path / "run",
            "steps": 3,
            "policy": {"path": local_models / "policy"},
            "data": {"train": [local_models / "data" / "prompts_train.jsonl"]},
            "rollout": {"engine": "vllm", "n": 4, "prompts_per_step": 4, "max_new_tokens": 12, "max_staleness": 1},
            "rewards": {
                "combine": "normalize_then_sum",
                "sources": [
                    {"name": "rm", "type": "grpc", "target": reward_service.target, "weight": 0.5},
                    {
                        "name": "exact",
                        "type": "python",
                        "function": "rewardline.trainer.rewards.verifiable:exact_answer",
                    },
                ],
            },
            "optim": {"lr": 2e-3},  # large, so that three steps visibly move greedy generations
            "checkpoint": {"every": 0},
            "observability": {"metrics_port": 0, "progress": False},
        }
    )
    trainer = Trainer(config)
    trainer.setup()
    try:
        prompts = [
            json.loads(line)["prompt"]
            for line in (local_models / "data" / "prompts_test.jsonl").read_text().splitlines()[:40]
        ]
        prompt_ids = [encode_prompt(trainer.tokenizer, p, config.rollout) for p in prompts]
        with trainer.rollouts.engine_lock:  # the rollout thread is already generating the first steps' samples
            before = trainer.engine.greedy(prompt_ids, 12)
        initial = {k: v.clone() for k, v in trainer.policy_module.policy.state_dict().items()}
        assert trainer.loop() == 0

        # the weights changed
        changed = [k for k, v in trainer.policy_module.policy.state_dict().items() if not torch.equal(v, initial[k])]
        assert changed
        # the engine follows them: its greedy generations are transformers' on the updated policy, not the old ones
        after = trainer.engine.greedy(prompt_ids, 12)
        reference = HFEngine(trainer.policy_module.policy, trainer.tokenizer, config.rollout).greedy(prompt_ids, 12)
        assert after == reference
        assert after != before

        # every step is in metrics.jsonl, with the combined reward and each source's
        lines = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [line["step"] for line in lines] == [1, 2, 3]
        for line in lines:
            assert line["samples"] == 16 and line["valid_samples"] == 16
            assert isinstance(line["reward"], float) and "reward/rm" in line and 0 <= line["reward/exact"] <= 1
            assert line["kl"] >= 0 and line["completion_tokens"] > 0
            assert line["staleness_mean"] == min(1, line["step"] - 1)
            # vLLM's log-probs of the sampled tokens against the trainer's, on the weights that sampled them
            assert line["step"] > 1 or (abs(line["is_weight_mean"] - 1) < 1e-3 and line["behaviour_kl"] < 1e-4)
        # the Prometheus exporter says the same
        snapshot = scrape(trainer.metrics_port)
        assert sample_value(snapshot, "rewardline_trainer_step") == 3
        assert (
            abs(sample_value(snapshot, "rewardline_trainer_source_reward", source="exact") - lines[-1]["reward/exact"])
            < 1e-6
        )
        assert sample_value(snapshot, "rewardline_trainer_samples_total") == 48
        # plots and the final checkpoint, loadable as a Hugging Face model equal to the trained policy
        assert (config.run_dir / "reward.png").stat().st_size > 0 and (config.run_dir / "kl.png").stat().st_size > 0
        saved = AutoModelForCausalLM.from_pretrained(config.run_dir / "checkpoints" / "step-00000003" / "policy")
        for k, v in saved.state_dict().items():
            assert torch.equal(v, trainer.policy_module.policy.state_dict()[k]), k
    finally:
        trainer.close()
