"""Checkpoint and resume: a run killed mid-way and resumed ends exactly where an uninterrupted run ends —
same step count, same data order, same rewards, same weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from rewardline.trainer.config import TrainConfig
from rewardline.trainer.train import train

STEPS = 24


def config_dict(local_models: Path, run_dir: Path) -> dict:
    return {
        "run_dir": str(run_dir),
        "steps": STEPS,
        "seed": 7,
        "policy": {"path": str(local_models / "policy")},
        "data": {"train": [str(local_models / "data" / "prompts_train.jsonl")]},
        "rollout": {"engine": "hf", "n": 3, "prompts_per_step": 3, "max_new_tokens": 10},
        "rewards": {
            "sources": [
                {"name": "exact", "type": "python", "function": "rewardline.trainer.rewards.verifiable:exact_answer"},
                {
                    "name": "format",
                    "type": "python",
                    "function": "rewardline.trainer.rewards.verifiable:format_reward",
                    "weight": 0.2,
                },
            ]
        },
        "algorithm": {"name": "grpo", "kl_coef": 0.05},
        "optim": {"lr": 5e-4, "schedule": "cosine", "warmup_steps": 3},
        "checkpoint": {"every": 4, "keep": 2},
        "observability": {"progress": False, "plot_every": 0},
    }


def history(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{STEPS:08d}" / "policy" / "model.safetensors")


def start(config_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "rewardline.trainer", "train", "--config", str(config_path), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for(predicate, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(
                f"the run ended early ({process.returncode}): {process.stderr.read().decode()[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.fixture(scope="module")
def uninterrupted(local_models, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    assert train(TrainConfig.model_validate(config_dict(local_models, run_dir))) == 0
    return run_dir


def test_killed_and_resumed_run_equals_uninterrupted_run(local_models, uninterrupted, tmp_path):
    """SIGKILL (a crash) after a periodic checkpoint; SIGTERM's clean stop is in test_trainer_control.py."""
    run_dir = tmp_path / "run"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config_dict(local_models, run_dir)))
    process = start(config_path)
    # kill it after the second periodic checkpoint, mid-way through the run
    wait_for(lambda: steps_logged(run_dir) >= 9, process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(60) == -signal.SIGKILL
    stopped_at = steps_logged(run_dir)
    assert 9 <= stopped_at < STEPS, "the run was not interrupted mid-way"
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*"))
    # the latest periodic checkpoint is whole; the steps after it will be run again
    assert checkpoints[-1] == f"step-{stopped_at // 4 * 4:08d}" and len(checkpoints) <= 2  # checkpoint.keep

    assert train(TrainConfig.model_validate(config_dict(local_models, run_dir)), resume=True) == 0

    expected, got = history(uninterrupted), history(run_dir)
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert [r["prompts"] for r in got] == [r["prompts"] for r in expected]  # same data order
    assert [r["reward"] for r in got] == [r["reward"] for r in expected]  # same samples, same rewards
    assert [r["lr"] for r in got] == [r["lr"] for r in expected]  # the scheduler resumed too
    final, reference = weights(run_dir), weights(uninterrupted)
    worst = max(float((final[k] - reference[k]).abs().max()) for k in reference)
    assert worst <= 1e-6, f"weights differ by {worst}"
    initial = load_file(local_models / "policy" / "model.safetensors")
    assert max(float((final[k] - initial[k]).abs().max()) for k in initial) > 1e-3  # and training did move them
