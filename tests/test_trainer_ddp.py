"""Data-parallel training: torchrun with 2 CPU processes on gloo makes the same update as 1 process on the
same global batch — with DDP and with FSDP (FSDP2) — the 2-process run also splitting its shards into
micro-batches, so gradient accumulation without synchronisation is exercised."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rewardline.services.process import free_port
from rewardline.trainer.config import TrainConfig
from rewardline.trainer.train import train


def config_dict(local_models, run_dir, algorithm: str, micro: int | None, strategy: str = "ddp") -> dict:
    return {
        "run_dir": str(run_dir),
        "steps": 1,
        "seed": 3,
        "policy": {"path": str(local_models / "policy")},
        "data": {"train": [str(local_models / "data" / "prompts_train.jsonl")]},
        "rollout": {"engine": "hf", "n": 4, "prompts_per_step": 6, "max_new_tokens": 10},
        "rewards": {
            "combine": "sum_then_normalize",
            "sources": [
                {"name": "exact", "type": "python", "function": "rewardline.trainer.rewards.verifiable:exact_answer"},
                {
                    "name": "format",
                    "type": "python",
                    "function": "rewardline.trainer.rewards.verifiable:format_reward",
                    "weight": 0.3,
                },
            ],
        },
        "algorithm": {"name": algorithm, "kl_coef": 0.05},
        # Adam's first step is lr·g/(|g| + eps): with the default eps it is close to lr·sign(g), so an element whose
        # gradient is ~1e-8 (summed in another order across 2 ranks) could flip; a larger eps keeps the update
        # close to linear in small gradients, so comparing weights compares the gradients.
        "optim": {"lr": 1e-3, "eps": 1e-3, "micro_batch_size": micro},
        "observability": {"progress": False},
        "distributed": {"strategy": strategy},
    }


@pytest.fixture(scope="module")
def single(local_models, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single")
    assert train(TrainConfig.model_validate(config_dict(local_models, run_dir, "ppo", None))) == 0
    return run_dir


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_make_the_single_process_update(local_models, single, tmp_path, strategy):
    double = tmp_path / "double"
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config_dict(local_models, double, "ppo", 2, strategy)))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "rewardline.trainer",
        "train",
        "--config",
        str(config_path),
    ]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, timeout=300)
    (tmp_path / "torchrun.log").write_bytes(result.stderr)
    assert result.returncode == 0, result.stderr.decode()[-8000:]

    one = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (double / "metrics.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 1
    assert two[0]["prompts"] == one[0]["prompts"] and two[0]["samples"] == one[0]["samples"] == 24
    for key in ("reward", "completion_tokens", "kl", "loss", "advantage_std"):
        assert abs(two[0][key] - one[0][key]) <= 1e-5, key

    checkpoint = "checkpoints/step-00000001"
    layout = json.loads((double / checkpoint / "state.json").read_text())
    assert (layout["world_size"], layout["strategy"]) == (2, strategy)
    a = load_file(single / checkpoint / "policy" / "model.safetensors")
    b = load_file(double / checkpoint / "policy" / "model.safetensors")
    initial = load_file(local_models / "policy" / "model.safetensors")
    moved = max(float((a[k] - initial[k]).abs().max()) for k in a)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert moved > 1e-4 and worst <= 1e-6, f"update {moved:.3g}, difference between 1 and 2 processes {worst:.3g}"
    va, vb = load_file(single / checkpoint / "value.safetensors"), load_file(double / checkpoint / "value.safetensors")
    assert all(torch.allclose(va[k], vb[k], atol=1e-6) for k in va)  # PPO's value head too
