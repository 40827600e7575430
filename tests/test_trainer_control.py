"""The daemon's control API over gRPC (Status, Pause, Resume, Checkpoint), and SIGTERM: checkpoint, exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest
import yaml

from rewardline.services.metrics import sample_value, scrape
from rewardline.services.process import free_port, wait_serving
from rewardline.trainer.config import TrainConfig
from rewardline.trainer.control import ControlClientConfig, control_call
from rewardline.trainer.train import train
from rewardline.v1 import trainer_pb2 as tpb
from rewardline.v1 import trainer_pb2_grpc as tpb_grpc


def until(predicate, timeout: float = 120.0, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the trainer exited ({process.returncode}): {process.stderr.read().decode()[-2000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_pause_checkpoint_resume_and_sigterm(local_models, tmp_path):
    run_dir = tmp_path / "run"
    control_port, metrics_port = free_port(), free_port()
    config = {
        "run_dir": str(run_dir),  # no steps: a daemon, until stopped
        "policy": {"path": str(local_models / "policy")},
        "data": {"train": [str(local_models / "data" / "prompts_train.jsonl")]},
        "rollout": {"engine": "hf", "n": 2, "prompts_per_step": 2, "max_new_tokens": 8},
        "rewards": {
            "sources": [
                {"name": "exact", "type": "python", "function": "rewardline.trainer.rewards.verifiable:exact_answer"}
            ]
        },
        "optim": {"lr": 1e-4},
        "checkpoint": {"every": 0},
        "control": {"port": control_port},
        "observability": {"metrics_port": metrics_port, "progress": False},
    }
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen(
        [sys.executable, "-m", "rewardline.trainer", "train", "--config", str(config_path)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        target = f"127.0.0.1:{control_port}"
        wait_serving(target, 120, process)
        with grpc.insecure_channel(target) as channel:
            stub = tpb_grpc.TrainerServiceStub(channel)

            def status():
                return stub.Status(tpb.StatusRequest(), timeout=10)

            until(lambda: status().step >= 2, process=process)
            first = status()
            assert (
                first.algorithm == "grpo"
                and first.world_size == 1
                and first.max_steps == 0
                and first.run_dir == str(run_dir)
            )
            # `rewardline control status`'s client: its channel must not ask for the reward service's health name
            # (the trainer serves only its own, so a client-side health check would refuse every call).
            assert control_call(ControlClientConfig(target=target, timeout=10), "status")["algorithm"] == "grpo"

            with pytest.raises(grpc.RpcError) as err:
                stub.Resume(tpb.ResumeRequest(), timeout=10)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

            stub.Pause(tpb.PauseRequest(), timeout=10)
            paused = until(lambda: (s := status()).state == tpb.TRAINER_STATE_PAUSED and s, process=process)
            assert sample_value(scrape(metrics_port), "rewardline_trainer_paused") == 1
            time.sleep(1.0)
            assert status().step == paused.step  # no step while paused

            saved = stub.Checkpoint(tpb.CheckpointRequest(), timeout=60)
            assert (
                saved.step == paused.step
                and (run_dir / "checkpoints" / f"step-{saved.step:08d}" / "state.json").exists()
            )
            assert status().checkpoint_path == saved.path

            stub.Resume(tpb.ResumeRequest(), timeout=10)
            until(lambda: status().step > paused.step + 1, process=process)
            assert status().state in (tpb.TRAINER_STATE_RUNNING, tpb.TRAINER_STATE_WAITING_FOR_REWARDS)
            assert sample_value(scrape(metrics_port), "rewardline_trainer_paused") == 0

        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]["step"]
    state = json.loads((run_dir / "checkpoints" / f"step-{last:08d}" / "state.json").read_text())
    assert state["step"] == last and state["cursor"]["line"] == 2 * last  # SIGTERM checkpointed where it stopped

    # --resume carries on from there with the same data stream
    resumed = TrainConfig.model_validate(
        {**config, "steps": last + 2, "control": {}, "observability": {"progress": False}}
    )
    assert train(resumed, resume=True) == 0
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, last + 3))
    origins = [o for line in lines for o in line["prompts"]]
    assert origins == [f"{local_models / 'data' / 'prompts_train.jsonl'}:{i}" for i in range(1, 2 * (last + 2) + 1)]
