"""The ``hf`` judge engine: a transformers causal LM in the service's own process.

Batches are left-padded with explicit position ids, so every row's last token sits in the last column: the
model then computes logits for that column only (``logits_to_keep=1``), which matters for real judges whose
vocabularies hold 150k tokens, and each row sees exactly the positions it would alone. The same layout feeds
``generate`` for rationales.

Shared prefixes. The samples of one GRPO group share their prompt, so their judge prompts share a long head
(template + prompt), and they arrive together, so the batcher puts them in one batch. With ``share_prefixes``
the batch is split into groups by common prefix (``prefix_groups``) and each group's head is computed once, its
KV cache repeated for the members, which then run only their own tails: what vLLM's prefix cache does, within a
batch, in two passes (all heads, then all tails) however many groups. Rows that share little run as one ordinary
batch. The results equal the unshared ones to float error.

All work runs on one dedicated thread (torch releases the GIL in its kernels), so the event loop keeps serving.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerBase

from rewardline.services.backends.base import CostModel, Generated
from rewardline.services.compute_threads import start_compute_thread
from rewardline.services.modeling import pad_id_for, resolve_device, resolve_dtype
from rewardline.services.rendering import decoded_text


class HFCausalLM:
    """A transformers ``AutoModelForCausalLM`` behind the ``JudgeBackend`` interface."""

    name = "hf"
    cost_model: CostModel = "padded"
    concurrency = 1
    # Shared-prefix batches cost less than their padded shape says, and cutting them splits GRPO groups:
    # bench/judge_throughput.py's hf row lost ~18% under a 0.1 limit.
    max_padding: float | None = None

    def __init__(
        self,
        model_dir: Path,
        tokenizer: PreTrainedTokenizerBase,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        share_prefixes: bool = True,
    ) -> None:
        self.share_prefixes = share_prefixes
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer = tokenizer
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, self.dtype), use_safetensors=True, trust_remote_code=trust_remote_code
        )
        self.model = model.to(self.device)  # type: ignore[arg-type]  # transformers' @wraps(Module.to) hides the bound method
        self.model.eval()
        self.pad_id = pad_id_for(tokenizer, self.model.config.pad_token_id)
        self.eos_ids = set(_as_list(self.model.generation_config.eos_token_id) or _as_list(tokenizer.eos_token_id))
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="hf-judge",
            initializer=start_compute_thread,
            initargs=(torch.get_num_threads(),),
        )

    # -- batches -------------------------------------------------------------------------------------------
    def _left_padded(self, contexts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(c) for c in contexts)
        input_ids = torch.full((len(contexts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for row, ids in enumerate(contexts):
            input_ids[row, width - len(ids) :] = torch.as_tensor(list(ids), dtype=torch.long)
            mask[row, width - len(ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return input_ids.to(self.device), mask.to(self.device), positions.to(self.device)

    def logprobs_sync(self, contexts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> np.ndarray:
        """Synchronous form of ``next_token_logprobs`` (the benchmark calls it directly)."""
        out = np.empty((len(contexts), len(token_ids)), dtype=np.float64)
        groups = prefix_groups(contexts) if self.share_prefixes else []
        grouped = [i for rows, _ in groups for i in rows]
        alone = sorted(set(range(len(contexts))) - set(grouped))
        with torch.inference_mode():
            if groups:
                out[grouped] = self._shared_prefix_logprobs(contexts, groups, token_ids)
            if alone:
                out[alone] = self._logprobs([contexts[i] for i in alone], token_ids)
        return out

    def _logprobs(self, contexts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> np.ndarray:
        input_ids, mask, positions = self._left_padded(contexts)
        logits = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=1).logits
        return torch.log_softmax(logits[:, -1, :].double(), dim=-1)[:, list(token_ids)].cpu().numpy()

    def _shared_prefix_logprobs(
        self, contexts: Sequence[Sequence[int]], groups: list[tuple[list[int], int]], token_ids: Sequence[int]
    ) -> np.ndarray:
        """Rows in group order: every group's shared head in one batch, its KV cache repeated for the group's
        rows, then every row's own tail in a second batch on those caches (two passes however many groups)."""
        heads, head_mask, head_positions = self._left_padded([contexts[rows[0]][:shared] for rows, shared in groups])
        cache = self.model(
            input_ids=heads, attention_mask=head_mask, position_ids=head_positions, use_cache=True
        ).past_key_values
        owner = torch.as_tensor([g for g, (rows, _) in enumerate(groups) for _ in rows], device=self.device)
        cache.batch_select_indices(owner)
        tails, tail_mask, _ = self._left_padded([contexts[i][shared:] for rows, shared in groups for i in rows])
        mask = torch.cat([head_mask[owner], tail_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, heads.shape[1] :]
        logits = self.model(
            input_ids=tails, attention_mask=mask, position_ids=positions, past_key_values=cache, logits_to_keep=1
        ).logits
        return torch.log_softmax(logits[:, -1, :].double(), dim=-1)[:, list(token_ids)].cpu().numpy()

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
        new = output[:, input_ids.shape[1] :].tolist()
        results: list[list[Generated]] = []
        for i in range(len(contexts)):
            row = []
            for tokens in new[i * n : (i + 1) * n]:
                kept = self._until_end(tokens)
                row.append(Generated(decoded_text(self.tokenizer, kept, skip_special_tokens=True), len(kept)))
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


MIN_SHARED_TOKENS = 16


def prefix_groups(
    contexts: Sequence[Sequence[int]], min_shared: int = MIN_SHARED_TOKENS
) -> list[tuple[list[int], int]]:
    """Groups of row indices whose contexts share a head worth computing once: (rows, shared length).

    Rows sorted by their tokens lie next to those they share most with. A group grows while taking the next row
    costs fewer tokens than leaving it out: with g rows sharing l tokens, a row that shares l' with them joins when
    g * l' >= (g - 1) * l (so eight samples of one prompt do not merge with another prompt's over the template's
    few common tokens). The shared length leaves every row at least its last token of its own."""
    order = sorted(range(len(contexts)), key=lambda i: tuple(contexts[i]))
    groups: list[tuple[list[int], int]] = []
    rows: list[int] = []
    shared = 0
    for i in order:
        if rows:
            common = _common_length(contexts[rows[0]], contexts[i], shared if len(rows) > 1 else None)
            if len(rows) * common >= (len(rows) - 1) * shared and common >= min_shared:
                rows.append(i)
                shared = common
                continue
            groups.append((rows, shared))
        rows, shared = [i], len(contexts[i])
    if rows:
        groups.append((rows, shared))
    out = []
    for rows, shared in groups:
        shared = min(shared, min(len(contexts[i]) for i in rows) - 1)
        if len(rows) > 1 and shared >= min_shared:
            out.append((rows, shared))
    return out


def _common_length(a: Sequence[int], b: Sequence[int], limit: int | None) -> int:
    n = min(len(a), len(b)) if limit is None else min(len(a), len(b), limit)
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
