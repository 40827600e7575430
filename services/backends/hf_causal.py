"""The ``hf`` judge engine: a transformers causal LM in the service's own process.

Batches are left-padded with explicit position ids, so every row's last token sits in the last column: the
model then computes logits for that column only (``logits_to_keep=1``), which matters for real judges whose
vocabularies hold 150k tokens, and each row sees exactly the positions it would alone. The same layout feeds
``generate`` for rationales. Samples of one GRPO group share their prompt and arrive together, so the batcher
puts them in one batch; vLLM's prefix cache goes further and computes the shared prompt once.

All work runs on one dedicated thread (torch releases the GIL in its kernels), so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from services.backends.base import resolve_device, resolve_dtype
from services.backends.hf import pad_id_for
from services.judge.backend import Generated
from services.judge.modes import split_rationale


class HFCausalLM:
    """A transformers ``AutoModelForCausalLM`` behind the ``JudgeBackend`` interface."""

    name = "hf"
    cost_model = "padded"
    concurrency = 1

    def __init__(
        self,
        model_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = tokenizer
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, self.dtype), use_safetensors=True, trust_remote_code=trust_remote_code
        ).to(self.device)
        self.model.eval()
        self.pad_id = pad_id_for(tokenizer, self.model.config.pad_token_id)
        self.eos_ids = set(_as_list(self.model.generation_config.eos_token_id) or _as_list(tokenizer.eos_token_id))
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-judge")

    # -- batches -------------------------------------------------------------------------------------------
    def _left_padded(self, contexts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, ids in enumerate(contexts):
            input_ids[row, width - len(ids):] = torch.as_tensor(list(ids), dtype=torch.long)
            mask[row, width - len(ids):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return input_ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def logprobs_sync(self, contexts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> np.ndarray:
        """Synchronous form of ``next_token_logprobs`` (the benchmark calls it directly)."""
        input_ids, mask, positions = self._left_padded(contexts)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
            logprobs = torch.log_softmax(logits[:, -1, :].double(), dim=-1)
        return logprobs[:, list(token_ids)].cpu().numpy()

    def generate_sync(
        self, contexts: Sequence[Sequence[int]], n: int, max_tokens: int, temperature: float, stop: str, seed: int
    ) -> list[list[Generated]]:
        input_ids, mask, _ = self._left_padded(contexts)
        sampling = temperature > 0
        if sampling:
            torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_p=None,
                top_k=None,
                num_return_sequences=n,
                stop_strings=[stop],
                tokenizer=self.tokenizer,
                pad_token_id=self.pad_id,
            )
        new = output[:, input_ids.shape[1]:].tolist()
        results: list[list[Generated]] = []
        for i in range(len(contexts)):
            row = []
            for tokens in new[i * n:(i + 1) * n]:
                kept = self._until_end(tokens)
                text, stopped = split_rationale(self.tokenizer.decode(kept, skip_special_tokens=True), stop)
                row.append(Generated(text, stopped, len(kept)))
            results.append(row)
        return results

    def _until_end(self, tokens: list[int]) -> list[int]:
        for i, t in enumerate(tokens):
            if t in self.eos_ids or t == self.pad_id:
                return tokens[:i]
        return tokens

    # -- JudgeBackend ----------------------------------------------------------------------------------------
    async def next_token_logprobs(self, contexts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.logprobs_sync, contexts, token_ids)

    async def generate(
        self, contexts: Sequence[Sequence[int]], *, n: int, max_tokens: int, temperature: float, stop: str, seed: int
    ) -> list[list[Generated]]:
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, self.generate_sync, contexts, n, max_tokens, temperature, stop, seed
        )

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self._executor.shutdown(wait=True)


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
