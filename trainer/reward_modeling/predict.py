"""In-process rewards and uncertainties of any reward or uncertainty model, as the service computes them.

Calibration and `rm eval` must read the numbers a trainer will get from the service, so inputs are rendered by
the service's own renderer and logits post-processed by its own `rewardline.services.uncertainty.outputs`; only the
forward pass is local (transformers, right-padded batches sorted by length).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from rewardline.services.api import pb
from rewardline.services.errors import ServiceError
from rewardline.services.rendering import InputRenderer
from rewardline.services.reward.attributes import attribute_names, combination_weights
from rewardline.services.uncertainty.model_format import is_uncertainty_model, read_spec
from rewardline.services.uncertainty.outputs import HeadLayout, HeadOutputs, head_outputs, split_outputs, stack_members
from rewardline.trainer.reward_modeling.pairs import pad_right


def render(tokenizer: PreTrainedTokenizerBase, texts: Sequence[tuple[str, str]], max_length: int) -> list[list[int]]:
    """(prompt, response) pairs -> token ids exactly as the service renders them (chat template, left truncation)."""
    renderer = InputRenderer(tokenizer, max_length)
    samples = [pb.Sample(id=str(i), prompt=p, response=r) for i, (p, r) in enumerate(texts)]
    out = []
    for item in renderer.render(samples):
        if isinstance(item, ServiceError):
            raise ValueError(item.message)
        out.append(list(item.token_ids))
    return out


@torch.no_grad()
def forward_logits(
    model: PreTrainedModel, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int, device: str
) -> np.ndarray:
    """(len(rows), num_labels) raw logits, float32; batches of similar length, results in input order."""
    model.eval()
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    if not model.config.num_labels:
        raise ValueError(f"{type(model).__name__}'s config does not say how many outputs it has (num_labels)")
    out = np.empty((len(rows), model.config.num_labels), dtype=np.float32)
    for start in tqdm(range(0, len(order), batch_size), desc="scoring", disable=None, leave=False):
        chunk = order[start : start + batch_size]
        input_ids, attention_mask = pad_right([list(rows[i]) for i in chunk], pad_id)
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        out[chunk] = logits.float().cpu().numpy()
    return out


class Predictor:
    """One model (one checkpoint, or the K checkpoints of a checkpoint ensemble) with its head layout."""

    def __init__(
        self,
        models: list[PreTrainedModel],
        tokenizer: PreTrainedTokenizerBase,
        layout: HeadLayout,
        weights: np.ndarray,
        device: str = "cpu",
        batch_size: int = 64,
        max_length: int = 512,
    ) -> None:
        self.models = models
        self.tokenizer = tokenizer
        self.layout = layout
        self.weights = weights
        self.device = device
        self.batch_size = batch_size
        self.max_length = max_length
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    @classmethod
    def from_dir(cls, model_dir: Path, device: str = "cpu", batch_size: int = 64, max_length: int = 512) -> Predictor:
        """An uncertainty model (its spec decides the layout) or a plain reward model (a one-member ensemble)."""
        from rewardline.services.uncertainty.scorer import shared_tokenizer  # the service's own member-tokenizer check

        if is_uncertainty_model(model_dir):
            spec = read_spec(model_dir)
            dirs, layout = spec.checkpoint_dirs(model_dir), spec.head_layout()
        else:
            dirs, layout = [Path(model_dir)], None
        tokenizer = shared_tokenizer(dirs, trust_remote_code=False)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            models = [
                AutoModelForSequenceClassification.from_pretrained(d, dtype=torch.float32, use_safetensors=True).to(
                    device
                )
                for d in dirs
            ]
        finally:
            hf_logging.set_verbosity(verbosity)
        if layout is None:
            num_labels = models[0].config.num_labels
            layout = HeadLayout("ensemble", 1, tuple(attribute_names(models[0].config.id2label, num_labels)))
        weights = combination_weights(layout.attributes, None)
        return cls(models, tokenizer, layout, weights, device, batch_size, max_length)

    def encode(self, texts: Sequence[tuple[str, str]]) -> list[list[int]]:
        return render(self.tokenizer, texts, self.max_length)

    def predict_rows(self, rows: Sequence[Sequence[int]]) -> HeadOutputs:
        logits = [forward_logits(m, rows, self.pad_id, self.batch_size, self.device) for m in self.models]
        if len(self.models) == 1 and self.layout.kind != "checkpoint_ensemble":
            outputs = split_outputs(logits[0], self.layout)
        else:
            outputs = stack_members(logits, self.layout)
        return head_outputs(outputs, self.layout, self.weights)

    def predict(self, texts: Sequence[tuple[str, str]]) -> HeadOutputs:
        """Rewards and uncertainties of (prompt, response) pairs."""
        return self.predict_rows(self.encode(texts))
