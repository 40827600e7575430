"""The ``hf`` backend: transformers in the service's own process, on CPU or GPU.

The forward pass runs on one dedicated thread so the event loop keeps accepting and validating requests
while a batch computes (torch releases the GIL inside its kernels). Inputs are right-padded with the
model's pad id: with causal attention, padding after a sequence cannot change it, and the model's own
last-non-pad-token pooling finds the same position alone or in any batch, so a score never depends on its
neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from rewardline.services.backends.base import CostModel
from rewardline.services.compute_threads import start_compute_thread
from rewardline.services.modeling import pad_id_for, resolve_device, resolve_dtype

# On a CPU one sample of a hundred tokens already keeps a core's vector units busy, so batching saves little and
# padding is pure loss: on bench/reward_service.py's model, 32 clients got 29 samples/s with no limit (50%
# padding), 35 with one forward per request and 40 with 0.1. A GPU computes padding in parallel: no limit there.
CPU_MAX_PADDING = 0.1

log = logging.getLogger(__name__)


class HFClassifier:
    """A transformers ``AutoModelForSequenceClassification`` behind the ``ClassifierBackend`` interface."""

    name = "hf"
    cost_model: CostModel = "padded"
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
        self.model = AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            dtype=getattr(torch, self.dtype),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
        ).to(self.device)
        self.model.eval()
        self.pad_id = pad_id_for(tokenizer, self.model.config.pad_token_id)
        # Batched last-token pooling needs the pad id on the config (Llama-style heads read it there).
        self.model.config.pad_token_id = self.pad_id
        self.num_outputs = int(self.model.config.num_labels)
        self.max_padding = CPU_MAX_PADDING if self.device == "cpu" else None
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="hf-forward",
            initializer=start_compute_thread,
            initargs=(torch.get_num_threads(),),
        )

    def forward(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Synchronous forward pass (the benchmark's in-process reference calls this directly)."""
        longest = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), longest), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        with torch.inference_mode():
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
            ).logits
        return logits.float().cpu().numpy()

    async def classify(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.forward, batch)

    async def ready(self) -> bool:
        return True

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
