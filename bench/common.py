"""What the benchmarks share: the benchmark reward model, its samples and a printed table."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from rewardline.services.api import pb
from rewardline.services.errors import ServiceError
from rewardline.services.rendering import InputRenderer
from rewardline.trainer.local_models.architectures import BENCHMARK, ModelSize

if TYPE_CHECKING:
    from rewardline.services.backends.hf import HFClassifier

SAMPLE_TOKENS = (64, 256)
POOL_SIZE = 512
# name -> (directory under the cache, size). "anchor": ~3.4M parameters, the size every CPU figure of the project
# was measured at (architectures.BENCHMARK); "large": ~207M parameters (hidden 1024, 16 layers, 16 heads of 64),
# large enough that a GPU's forward pass, not Python, sets the pace.
BENCH_SIZES = {
    "anchor": ("reward-3m", BENCHMARK),
    "large": ("reward-200m", ModelSize(hidden_size=1024, num_layers=16, num_heads=16, intermediate_size=2816)),
}


def rendered_ids(renderer: InputRenderer, samples: Sequence[pb.Sample]) -> list[tuple[int, ...]]:
    """Token ids of samples the benchmark made itself: one that does not render is a bug here, not a finding."""
    out = []
    for rendered in renderer.render(samples):
        if isinstance(rendered, ServiceError):
            raise ValueError(f"a benchmark sample does not render: {rendered.message}")
        out.append(rendered.token_ids)
    return out


def mixed_samples(
    tokenizer: PreTrainedTokenizerBase, n: int, lengths: tuple[int, int], seed: int = 0
) -> list[pb.Sample]:
    """Prompt/response pairs whose rendered length is spread uniformly over ``lengths`` tokens."""
    from rewardline.trainer.local_models.generic_text import paragraph

    rng = random.Random(seed)
    renderer = InputRenderer(tokenizer, max_length=10_000)
    out: list[pb.Sample] = []
    while len(out) < n:
        target = rng.randint(*lengths)
        prompt = paragraph(rng, sentences=2)
        response = ""
        while True:
            sample = pb.Sample(id=f"b{len(out)}", prompt=prompt, response=response or "ok")
            (ids,) = rendered_ids(renderer, [sample])
            if len(ids) >= target:
                break
            response += " " + paragraph(rng, sentences=1)
        if lengths[0] <= len(ids) <= lengths[1] + 24:
            out.append(sample)
    return out


@dataclass
class BenchModel:
    path: Path
    tokenizer: PreTrainedTokenizerBase
    samples: list[pb.Sample]
    token_ids: list[tuple[int, ...]]
    parameters: int

    @property
    def vocab(self) -> int:
        return len(self.tokenizer)

    @property
    def min_len(self) -> int:
        return min(len(x) for x in self.token_ids)

    @property
    def max_len(self) -> int:
        return max(len(x) for x in self.token_ids)

    @property
    def mean_len(self) -> float:
        return sum(len(x) for x in self.token_ids) / len(self.token_ids)

    @classmethod
    def load_or_build(cls, cache: Path, size: str = "anchor") -> BenchModel:
        """An untrained benchmark reward model (``BENCH_SIZES``), built once from the local tokenizer."""
        from transformers import AutoModelForSequenceClassification

        from rewardline.trainer.local_models.architectures import parameter_count, save_model, sequence_classifier
        from rewardline.trainer.local_models.build import ensure_models

        directory, model_size = BENCH_SIZES[size]
        path = cache / directory
        if not (path / "model.safetensors").exists():
            tokenizer = AutoTokenizer.from_pretrained(ensure_models(cache.parent / "models") / "reward")
            save_model(sequence_classifier(model_size, tokenizer, seed=0), tokenizer, path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        params = parameter_count(AutoModelForSequenceClassification.from_pretrained(path))
        samples = mixed_samples(tokenizer, POOL_SIZE, SAMPLE_TOKENS)
        ids = rendered_ids(InputRenderer(tokenizer, max_length=10_000), samples)
        return cls(path, tokenizer, samples, ids, params)

    def backend(self, device: str = "cpu", dtype: str = "float32") -> HFClassifier:
        from rewardline.services.backends.hf import HFClassifier

        return HFClassifier(self.path, self.tokenizer, device, dtype)


def percentile_ms(latencies_s: Sequence[float], q: float) -> float:
    """numpy's percentile of latencies in seconds, in milliseconds; NaN for a run in which nothing finished (a
    configuration too slow for its window is reported, not a crash of the whole benchmark)."""
    return 1000 * float(np.percentile(latencies_s, q)) if len(latencies_s) else float("nan")


def print_table(rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
