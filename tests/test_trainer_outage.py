"""A reward service that goes away pauses training (a clear log line, a metric, the control API's state) and
training resumes when it comes back, with no sample lost and none scored twice; SIGTERM while waiting stops
cleanly at the last whole step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import grpc
import yaml

from rewardline.services.metrics import sample_value, scrape
from rewardline.services.process import ServiceProcess, free_port, wait_serving
from rewardline.v1 import trainer_pb2 as tpb
from rewardline.v1 import trainer_pb2_grpc as tpb_grpc


def until(predicate, process: subprocess.Popen, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if process.poll() is not None:
            raise AssertionError(f"the trainer exited ({process.returncode}): {process.stderr.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
    return value


def test_training_waits_for_a_reward_service_that_went_away(local_models, tmp_path):
    service_port, control_port, metrics_port = free_port(), free_port(), free_port()
    service_args = ["--model", str(local_models / "reward")]
    service = ServiceProcess("reward", service_args, port=service_port, log_path=tmp_path / "reward.log").start()
    run_dir = tmp_path / "run"
    config = {
        "run_dir": str(run_dir),
        "policy": {"path": str(local_models / "policy")},
        "data": {"train": [str(local_models / "data" / "prompts_train.jsonl")]},
        "rollout": {"engine": "hf", "n": 3, "prompts_per_step": 2, "max_new_tokens": 8},
        "rewards": {
            "sources": [
                {
                    "name": "rm",
                    "type": "grpc",
                    "target": service.target,
                    "reconnect_max_backoff_s": 0.5,
                    "error_score": -5.0,
                },
                {"name": "exact", "type": "python", "function": "rewardline.trainer.rewards.verifiable:exact_answer"},
            ]
        },
        "checkpoint": {"every": 0},
        "control": {"port": control_port},
        "observability": {"metrics_port": metrics_port, "progress": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    trainer = subprocess.Popen(
        [sys.executable, "-m", "rewardline.trainer", "train", "--config", str(tmp_path / "run.yaml")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_serving(f"127.0.0.1:{control_port}", 120, trainer)
        channel = grpc.insecure_channel(f"127.0.0.1:{control_port}")
        stub = tpb_grpc.TrainerServiceStub(channel)

        def status():
            return stub.Status(tpb.StatusRequest(), timeout=10)

        until(lambda: status().step >= 2, trainer)

        service.kill()  # gone, with samples possibly in flight
        waiting = until(lambda: (s := status()).state == tpb.TRAINER_STATE_WAITING_FOR_REWARDS and s, trainer)
        assert list(waiting.waiting_for_sources) == ["rm"]
        assert sample_value(scrape(metrics_port), "rewardline_trainer_waiting_for_source", source="rm") == 1
        time.sleep(1.5)
        stalled = status().step
        assert stalled <= waiting.step + 1  # at most the step that had all its rewards finishes

        service = ServiceProcess("reward", service_args, port=service_port, log_path=tmp_path / "reward.log").start()
        until(lambda: status().step >= stalled + 3, trainer)
        snapshot = scrape(metrics_port)
        assert sample_value(snapshot, "rewardline_trainer_waiting_for_source", source="rm") == 0
        assert sample_value(snapshot, "rewardline_trainer_source_outages_total", source="rm") == 1
        assert sample_value(snapshot, "rewardline_trainer_duplicate_rewards_total", source="rm") == 0
        assert sample_value(snapshot, "rewardline_trainer_reward_errors_total", source="rm") == 0

        # down again, and the daemon is asked to stop while it waits: it abandons the step and checkpoints
        service.kill()
        until(lambda: status().state == tpb.TRAINER_STATE_WAITING_FOR_REWARDS, trainer)
        channel.close()
        trainer.send_signal(signal.SIGTERM)
        assert trainer.wait(60) == 0
        stderr = trainer.stderr.read().decode()
    finally:
        if trainer.poll() is None:
            trainer.kill()
        service.kill()

    assert "reward source 'rm' is unavailable" in stderr and "training pauses until it is back" in stderr
    assert "reward source 'rm' is back" in stderr
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]["step"]
    assert [line["step"] for line in lines] == list(range(1, last + 1))
    assert all(
        line["samples"] == 6 and line["valid_samples"] == 6 and line["errors/rm"] == 0 for line in lines
    )  # none lost
    state = json.loads((run_dir / "checkpoints" / f"step-{last:08d}" / "state.json").read_text())
    assert state["cursor"]["line"] == 2 * last  # the abandoned step's prompts come first after --resume
