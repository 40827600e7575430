"""Helpers shared by the tests: independent in-process references, metrics reading, sample making."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rewardline.services.api import pb
from rewardline.services.metrics import sample_value, scrape


class InProcessRewardModel:
    """The reference a served reward must equal: transformers on one unpadded sample at a time,
    rendered straight with the tokenizer's chat template (no rewardline code involved)."""

    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()

    def token_ids(self, prompt: str, response: str) -> list[int]:
        if self.tokenizer.chat_template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self.tokenizer(prompt + response)["input_ids"]

    def logits(self, prompt: str, response: str) -> list[float]:
        ids = torch.tensor([self.token_ids(prompt, response)])
        with torch.inference_mode():
            return self.model(input_ids=ids).logits[0].float().tolist()

    def score(self, prompt: str, response: str) -> float:
        return self.logits(prompt, response)[0]


metrics = scrape
metric = sample_value


def samples(pairs: Iterable[tuple[str, str]], prefix: str = "s") -> list[pb.Sample]:
    return [pb.Sample(id=f"{prefix}{i}", prompt=p, response=r) for i, (p, r) in enumerate(pairs)]


def mixed_length_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Prompt/response pairs of very different lengths, so batches pad a lot."""
    import random

    rng = random.Random(seed)
    words = "the of seven plus minus answer what is three twelve number result sum total".split()
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(words) for _ in range(rng.randint(1, 60)))
        response = " ".join(rng.choice(words) for _ in range(rng.randint(1, 30)))
        out.append((f"What is {i} + {i}? {prompt}", response))
    return out


def short_pairs(reference: InProcessRewardModel, n: int, max_length: int, seed: int = 0) -> list[tuple[str, str]]:
    """Mixed-length pairs that fit ``max_length`` untruncated."""
    return [p for p in mixed_length_pairs(4 * n, seed) if len(reference.token_ids(*p)) <= max_length][:n]


def assert_close(a: Sequence[float], b: Sequence[float], tol: float = 1e-4) -> None:
    assert len(a) == len(b)
    worst = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
    assert worst <= tol, f"max difference {worst:.3g} > {tol}: {list(a)[:5]} vs {list(b)[:5]}"


class HttpAnswer:
    """One HTTP answer: status, headers, and the body as JSON (None when it is not JSON)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        import json

        self.status = status
        self.headers = headers
        self.text = body.decode(errors="replace")
        try:
            self.json = json.loads(body)
        except ValueError:
            self.json = None

    def __repr__(self) -> str:
        return f"HttpAnswer({self.status}, {self.text[:300]!r})"


def http(method: str, url: str, body: object = None, raw: bytes | None = None, timeout: float = 120.0) -> HttpAnswer:
    """A request with the standard library's client (no rewardline code): ``body`` as JSON, or ``raw`` bytes."""
    import json
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return HttpAnswer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as e:
        return HttpAnswer(e.code, dict(e.headers), e.read())


def openrlhf_payload(tokenizer, pairs: list[tuple[str, str]], templated: bool = True) -> tuple[list[str], list[str]]:
    """Queries and prompts as OpenRLHF 0.11.2 builds them (openrlhf/utils/agent.py, SingleTurnAgentExecutor.execute):
    the prompt rendered with the chat template when the run applies one, tokenized without special tokens added,
    the response's token ids (ending with the stop token) appended, and the whole decoded with special tokens."""
    queries, prompts = [], []
    for prompt, response in pairs:
        if templated:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        queries.append(tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False))
        prompts.append(prompt)
    return queries, prompts


def exact_answer_after(
    prompts: list[str], completions: list[str], answer: list, delay_s: float = 0.1, **columns: object
) -> list[float | None]:
    """The exact-answer reward function, answering ``delay_s`` seconds after each call: a slow reward source
    (use it as ``function: support:exact_answer_after`` in a trainer run inside the test process)."""
    import time

    from rewardline.trainer.rewards.verifiable import exact_answer

    time.sleep(delay_s)
    return exact_answer(prompts, completions, answer, **columns)


def distinct_scores(prompts: list[str], completions: list[str], **_: object) -> list[float]:
    """A reward that differs for every sample of a call (its position in the call; ``function:
    support:distinct_scores``), standing for a learned reward model, which all but never gives two samples exactly
    the same score."""
    return [float(i) for i in range(len(completions))]
