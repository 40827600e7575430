"""`rewardline demo` runs end to end (a few steps, one service): the full run's figures are in the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_demo_runs_and_summarises(local_models, tmp_path):
    out = tmp_path / "demo"
    command = [
        sys.executable,
        "-m",
        "rewardline.trainer",
        "demo",
        "--models",
        str(local_models),
        "--out",
        str(out),
        "--steps",
        "3",
        "--services",
        "reward",
        "--prompts-per-step",
        "2",
        "--n",
        "4",
        "--eval-prompts",
        "40",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "2",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "held-out, greedy" in result.stdout and "services stopped cleanly" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and set(summary["rewards"]) == {"reward (combined)", "exact answer", "reward service"}
    assert summary["mode"] == {"name": "async", "max_staleness": 1} and "rollouts: asynchronous" in result.stdout
    dynamic = summary["dynamic_sampling"]  # on by default, decided by the exact-answer check
    assert 0 <= dynamic["dropped_fraction"] <= 1 and 0 <= dynamic["extra_rounds_per_step"] <= 3
    assert "dynamic sampling (exact answer)" in result.stdout
    assert all(isinstance(v, float) and v >= 0 for v in summary["step_time"].values())
    assert "weight sync" in result.stdout
    assert 0 <= summary["held_out_accuracy"]["before"] <= 1 and 0 <= summary["held_out_accuracy"]["after"] <= 1
    assert set(summary["held_out_rewards"]) == {"reward (combined)", "reward service"}
    assert all(
        isinstance(v["before"], float) and isinstance(v["after"], float) for v in summary["held_out_rewards"].values()
    )
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3] and all("reward/reward" in line for line in lines)
    # the learning rate after each step: half-way up the 2-step warm-up, the peak, then cosine down to zero at the end
    assert [line["lr"] for line in lines] == pytest.approx([5e-4, 1e-3, 0.0], abs=1e-12)
    assert (out / "reward.png").exists()
    assert not (out / "kl.png").exists()  # β = 0 by default: no reference model, no KL to plot
    assert (out / "checkpoints" / "step-00000003" / "policy" / "model.safetensors").exists()
