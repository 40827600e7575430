"""Data-parallel training: torchrun with 2 CPU processes on gloo makes the same updates as 1 process on the
same global batches — with DDP (synchronous rollouts) and with FSDP (FSDP2; asynchronous rollouts, k = 1, so the
second step trains on samples the rollout thread made while the first updated) — the 2-process run also splitting
its shards into micro-batches, so gradient accumulation without synchronisation is exercised."""

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


def config_dict(
    local_models, run_dir, algorithm: str, micro: int | None, strategy: str = "ddp", staleness: int = 0
) -> dict:
    return {
        "run_dir": str(run_dir),
        "steps": 1 + staleness,
        "seed": 3,
        "policy": {"path": str(local_models / "policy")},
        "data": {"train": [str(local_models / "data" / "prompts_train.jsonl")]},
        "rollout": {"engine": "hf", "n": 4, "prompts_per_step": 6, "max_new_tokens": 10, "max_staleness": staleness},
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
        "checkpoint": {"every": 1},
        "distributed": {"strategy": strategy},
    }


@pytest.fixture(scope="module")
def single_runs(local_models, tmp_path_factory):
    """The single-process reference runs, by rollout.max_staleness (each made once)."""
    runs: dict[int, object] = {}

    def get(staleness: int):
        if staleness not in runs:
            run_dir = tmp_path_factory.mktemp(f"single-{staleness}")
            config = config_dict(local_models, run_dir, "ppo", None, staleness=staleness)
            assert train(TrainConfig.model_validate(config)) == 0
            runs[staleness] = run_dir
        return runs[staleness]

    return get


@pytest.mark.parametrize("strategy, staleness", [("ddp", 0), ("fsdp", 1)])
def test_two_processes_make_the_single_process_update(local_models, single_runs, tmp_path, strategy, staleness):
    single = single_runs(staleness)
    double = tmp_path / "double"
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config_dict(local_models, double, "ppo", 2, strategy, staleness)))
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
    assert len(one) == len(two) == 1 + staleness
    for a, b in zip(one, two):
        assert b["prompts"] == a["prompts"] and b["samples"] == a["samples"] == 24
        assert b["staleness_mean"] == a["staleness_mean"] == min(staleness, a["step"] - 1)
        for key in ("reward", "completion_tokens", "kl", "loss", "advantage_std", "is_weight_mean"):
            assert abs(b[key] - a[key]) <= 1e-5, key

    if staleness:  # the checkpoint after step 1 holds step 2's samples, which each rank generated its share of
        (in_flight,) = json.loads((double / "checkpoints/step-00000001/rollouts.json").read_text())
        assert in_flight["step"] == 2 and len(in_flight["samples"]) == 24
        assert sorted({s["request"]["index"] for s in in_flight["samples"]}) == list(range(6))
    checkpoint = f"checkpoints/step-{1 + staleness:08d}"
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
