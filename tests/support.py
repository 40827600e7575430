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
