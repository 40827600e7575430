"""Each algorithm and policy form through real steps (transformers rollouts, verifiable rewards): RLOO, PPO with
a value head and with a value model, GRPO with sequence-level aggregation, LoRA with the reference as the
base with adapters off, REINFORCE++ (KL in the reward, asynchronous rollouts) and REINFORCE++-baseline (running
reward normalisation, clipping, overlong filtering), and PPO on asynchronous rollouts over two epochs."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rewardline.trainer.config import TrainConfig
from rewardline.trainer.policy import exported_weights, load_policy
from rewardline.trainer.train import train


def config_dict(local_models, run_dir, **sections) -> dict:
    base = {
        "run_dir": str(run_dir),
        "steps": 2,
        "policy": {"path": str(local_models / "policy")},
        "data": {"train": [str(local_models / "data" / "prompts_train.jsonl")]},
        "rollout": {"engine": "hf", "n": 4, "prompts_per_step": 3, "max_new_tokens": 10},
        "rewards": {
            "sources": [
                {"name": "exact", "type": "python", "function": "rewardline.trainer.rewards.verifiable:exact_answer"},
                {
                    "name": "format",
                    "type": "python",
                    "function": "rewardline.trainer.rewards.verifiable:format_reward",
                    "weight": 0.5,
                },
            ]
        },
        "optim": {"lr": 1e-3},
        "observability": {"progress": False},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return base


CASES = {
    "rloo": {"algorithm": {"name": "rloo"}},
    "ppo_value_head": {"algorithm": {"name": "ppo", "epochs": 2}},
    "ppo_value_model": {
        "algorithm": {"name": "ppo", "value_model": "model", "value_clip": None},
        "optim": {"micro_batch_size": 5},
    },
    "grpo_sequence_level": {
        "algorithm": {"name": "grpo", "loss_aggregation": "sequence", "scale_rewards": False, "entropy_coef": 0.01}
    },
    "grpo_lora": {"policy": {"lora": {"enabled": True, "r": 4}}, "optim": {"lr": 5e-3}},
    "reinforce_plus_plus_async": {"algorithm": {"name": "reinforce_plus_plus"}, "rollout": {"max_staleness": 1}},
    "reinforce_plus_plus_baseline": {
        "algorithm": {
            "name": "reinforce_plus_plus_baseline",
            "kl_estimator": "k2",
            "loss_aggregation": "constant",
            "mask_truncated": True,
        },
        "rewards": {"running_norm": True, "clip": 2.0},
    },
    "ppo_async_two_epochs": {"algorithm": {"name": "ppo", "epochs": 2}, "rollout": {"max_staleness": 1}},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_steps_run_and_move_the_policy(local_models, tmp_path, case):
    config = TrainConfig.model_validate(config_dict(local_models, tmp_path / "run", **CASES[case]))
    assert train(config) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        keys = ("reward", "kl", "loss", "entropy", "grad_norm", "is_weight_mean", "behaviour_kl", "advantage_std")
        assert all(math.isfinite(line[k]) for k in keys)
        assert line["grad_norm"] > 0
    policy_dir = tmp_path / "run" / "checkpoints" / "step-00000002" / "policy"
    if config.policy.lora.enabled:
        adapter = load_file(policy_dir / "adapter_model.safetensors")
        assert adapter and all("lora_" in k for k in adapter)
        assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)  # B starts at 0: it moved
    else:
        trained, initial = (
            load_file(policy_dir / "model.safetensors"),
            load_file(local_models / "policy" / "model.safetensors"),
        )
        assert max(float((trained[k] - initial[k]).abs().max()) for k in initial) > 1e-4
    if config.algorithm.name == "ppo":
        assert all(math.isfinite(line["value_loss"]) for line in lines)
        assert (tmp_path / "run" / "checkpoints" / "step-00000002" / "value.safetensors").exists()


def test_lora_weights_are_exported_merged_without_touching_the_module(local_models):
    config = TrainConfig.model_validate(config_dict(local_models, "unused", policy={"lora": {"enabled": True, "r": 4}}))
    policy = load_policy(config).policy
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # make the adapters do something
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    exported = dict(exported_weights(policy))
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    assert set(exported) == set(merged)
    for key, value in merged.items():
        assert torch.allclose(exported[key], value, atol=1e-6), key
    assert all(torch.equal(v, before[k]) for k, v in policy.state_dict().items())


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["grpo", "ppo_value_head"])
def test_steps_run_on_a_gpu_and_checkpoint_loads_on_cpu(local_models, tmp_path, case):
    """The policy, reference and value model on the GPU (policy.device auto picks it); the checkpoint it writes
    resumes on a CPU-only config."""
    sections = {"algorithm": {"name": "ppo"}} if case == "ppo_value_head" else {}
    config = TrainConfig.model_validate(
        config_dict(local_models, tmp_path / "run", policy={"device": "auto"}, **sections)
    )
    assert train(config) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and all(math.isfinite(line["loss"]) for line in lines)
    resumed = TrainConfig.model_validate(
        config_dict(local_models, tmp_path / "run", policy={"device": "cpu"}, **sections) | {"steps": 3}
    )
    assert train(resumed, resume=True) == 0
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])["step"] == 3
