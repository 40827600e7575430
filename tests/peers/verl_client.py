"""verl's real reward code (verl 0.9.1) with rewardline's compute_score and /classify.

Run by tests/test_peers.py with .venv-peers' python. Every path loads the adapter as verl does, from its file path
with ``get_custom_reward_fn`` (reward_kwargs merged into each call), over a rollout batch (a DataProto of
left-padded prompts and right-padded responses ending with the stop token) built here:
- the legacy ``verl.workers.reward_manager.naive.NaiveRewardManager`` with ``compute_score``;
- the legacy ``BatchRewardManager`` with ``compute_score_batch``;
- the reward loop's ``verl.experimental.reward_loop.reward_manager.naive.NaiveRewardManager.run_single`` with
  ``compute_score_async``, the samples in flight together;
- the reward loop's ``RewardLoopWorker`` with a discriminative reward model served by "vllm" at the router
  address: its ``compute_score_disrm`` posts to rewardline's /classify.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager as LoopNaiveRewardManager
from verl.trainer.ppo.reward import get_custom_reward_fn
from verl.workers.reward_manager.batch import BatchRewardManager
from verl.workers.reward_manager.naive import NaiveRewardManager

import rewardline.services.integrations.verl as adapter

PROMPT_LEN, RESPONSE_LEN = 48, 16


def objects(values: list) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def rollout_batch(tokenizer, prompts: list[str], responses: list[str], answers: list[str]) -> DataProto:
    """What a verl rollout hands the reward managers: ids, masks, and the dataset's non-tensor columns."""
    pad = tokenizer.pad_token_id
    chats = [[{"role": "user", "content": q}] for q in prompts]
    prompt_ids, response_ids, masks = [], [], []
    for chat, response in zip(chats, responses):
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        p = tokenizer(text, add_special_tokens=False)["input_ids"][-PROMPT_LEN:]
        r = (tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:RESPONSE_LEN]
        prompt_ids.append([pad] * (PROMPT_LEN - len(p)) + p)
        response_ids.append(r + [pad] * (RESPONSE_LEN - len(r)))
        masks.append([0] * (PROMPT_LEN - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (RESPONSE_LEN - len(r)))
    prompts_t, responses_t = torch.tensor(prompt_ids), torch.tensor(response_ids)
    return DataProto.from_dict(
        tensors={
            "prompts": prompts_t,
            "responses": responses_t,
            "input_ids": torch.cat([prompts_t, responses_t], dim=1),
            "attention_mask": torch.tensor(masks),
        },
        non_tensors={
            "data_source": objects(["rewardline"] * len(prompts)),
            "reward_model": objects([{"ground_truth": a} for a in answers]),
            "extra_info": objects([{"prompt": q, "index": i} for i, q in enumerate(prompts)]),
            "raw_prompt": objects(chats),
        },
    )


def custom_fn(name: str, target: str):
    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": adapter.__file__,
                    "name": name,
                    "reward_kwargs": {"target": target, "uncertainty_penalty": 0.5},
                }
            }
        }
    )
    return get_custom_reward_fn(config)


def last_scores(reward_tensor: torch.Tensor, data: DataProto) -> list[float]:
    """Each sample's reward, which verl puts at its last response token."""
    lengths = data.batch["attention_mask"][:, PROMPT_LEN:].sum(dim=1)
    return [float(reward_tensor[i, int(n) - 1]) for i, n in enumerate(lengths)]


async def reward_loop(args: argparse.Namespace, tokenizer, data: DataProto) -> dict:
    manager = LoopNaiveRewardManager(
        config=OmegaConf.create({}), tokenizer=tokenizer, compute_score=custom_fn("compute_score_async", args.target)
    )
    results = await asyncio.gather(*[manager.run_single(data[i : i + 1]) for i in range(len(data))])
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {"model": {"path": str(args.models / "policy"), "tokenizer_path": None}},
            "reward": {
                "reward_model": {
                    "enable": True,
                    "model_path": str(args.models / "reward"),
                    "rollout": {"name": "vllm"},
                },
                "custom_reward_function": {"path": None, "name": None},
                "reward_manager": {"source": "register", "name": "naive"},
                "sandbox_fusion": None,
            },
        }
    )
    worker = RewardLoopWorker(config, reward_router_address=args.classify_address)
    disrm = [await worker.compute_score(data[i : i + 1]) for i in range(len(data))]
    rm_prompts = [await worker._preprocess_reward_inputs(data[i : i + 1]) for i in range(len(data))]
    return {
        "loop": [{k: float(v) for k, v in r["reward_extra_info"].items()} for r in results],
        "loop_scores": [float(r["reward_score"]) for r in results],
        "disrm": [float(r["reward_score"]) for r in disrm],
        "disrm_inputs": rm_prompts,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--target", required=True, help="gRPC target of the service compute_score calls")
    p.add_argument("--classify-address", required=True, help="host:port of the reward service's HTTP face")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(args.models / "policy")
    problems = [json.loads(line) for line in (args.models / "data" / "prompts_test.jsonl").read_text().splitlines()[:4]]
    prompts = [q["prompt"] for q in problems]
    responses = [f"The answer is {problems[0]['answer']}.", "The answer is 7.", f"{problems[2]['answer']}", ""]
    answers = [q["answer"] for q in problems]
    data = rollout_batch(tokenizer, prompts, responses, answers)

    naive = NaiveRewardManager(tokenizer, num_examine=0, compute_score=custom_fn("compute_score", args.target))
    naive_out = naive(data, return_dict=True)
    batch = BatchRewardManager(tokenizer, num_examine=0, compute_score=custom_fn("compute_score_batch", args.target))
    batch_out = batch(data, return_dict=True)
    loop = asyncio.run(reward_loop(args, tokenizer, data))
    out = {
        "prompts": prompts,
        "responses": responses,
        "answers": answers,
        "naive": last_scores(naive_out["reward_tensor"], data),
        "naive_extra": {k: [float(x) for x in v] for k, v in naive_out["reward_extra_info"].items()},
        "batch": last_scores(batch_out["reward_tensor"], data),
        **loop,
    }
    args.out.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
