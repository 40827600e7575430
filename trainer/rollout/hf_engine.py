"""Rollouts with transformers' ``generate`` on the training policy itself.

The engine holds the live policy module, so there is nothing to copy after an update: the next call samples
from the new weights (under FSDP, whose sharded module cannot generate rank by rank, and in asynchronous mode,
where it samples while the module trains, it holds its own full copy and `load_weights` refreshes it). The
behaviour log-probabilities are read from ``generate``'s processed scores (temperature, top-k and top-p applied):
the distribution each token was drawn from. One prompt group is generated per call (its n copies of one prompt
need no padding) under that group's own seed, which makes a group's samples independent of the batch around it;
each group is handed to the reward sources as soon as it is done, so scoring overlaps the next group's
generation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from rewardline.trainer.config import RolloutConfig
from rewardline.trainer.policy import PolicyModel
from rewardline.trainer.rollout.base import (
    Completion,
    OnComplete,
    RolloutRequest,
    completion_from_tokens,
    eos_token_ids,
)


def generator_devices(device: torch.device) -> list[torch.device]:
    """The CUDA generators ``fork_rng`` must save and restore around a group's seeding, besides the CPU's.

    ``torch.manual_seed`` reseeds every device's generator, and sampling on a GPU draws from that GPU's: forking
    only the CPU's (``devices=[]``) left the CUDA generator reseeded with the last group's seed after every step,
    so whatever else draws from it (dropout, a later library call) would follow the rollouts' seeds on a GPU and
    not on the CPU. Forking the model's device restores it, as the CPU's is restored."""
    return [device] if device.type == "cuda" else []


class HFEngine:
    def __init__(
        self, model: PolicyModel, tokenizer: PreTrainedTokenizerBase, config: RolloutConfig, owns_model: bool = False
    ) -> None:
        self.model = model
        self.owns_model = owns_model
        self.tokenizer = tokenizer
        self.config = config
        generation = getattr(model, "generation_config", None)
        self.eos_ids = eos_token_ids(getattr(generation, "eos_token_id", None), tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)

    @torch.no_grad()
    def generate(self, requests: Sequence[RolloutRequest], n: int, on_complete: OnComplete) -> list[Completion]:
        out: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for request in requests:
                input_ids = torch.tensor([list(request.prompt_ids)] * n, device=self.model.device)
                with torch.random.fork_rng(devices=generator_devices(self.model.device)):
                    torch.manual_seed(request.seed)
                    generated = self.model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        do_sample=True,
                        temperature=self.config.temperature,
                        top_p=self.config.top_p,
                        top_k=self.config.top_k,
                        max_new_tokens=self.config.max_new_tokens,
                        eos_token_id=sorted(self.eos_ids),
                        pad_token_id=self.pad_id,
                        output_scores=True,
                        return_dict_in_generate=True,
                    )
                new = generated.sequences[:, input_ids.shape[1] :]
                scores = torch.stack(generated.scores, dim=1).float()  # (n, new tokens, vocab), as sampled from
                logprobs = torch.log_softmax(scores, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
                group = [
                    completion_from_tokens(request, k, t, self.tokenizer, self.eos_ids, lp)
                    for k, (t, lp) in enumerate(zip(new.tolist(), logprobs.tolist()))
                ]
                on_complete(group)
                out.extend(group)
        finally:
            self.model.train(was_training)
        return out

    @torch.no_grad()
    def greedy(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Left-padded batch; the generated ids up to and including the end-of-sequence token."""
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.tensor(
            [[self.pad_id] * (width - len(p)) + list(p) for p in prompt_ids], device=self.model.device
        )
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=self.model.device)
        was_training = self.model.training
        self.model.eval()
        try:
            generated = self.model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.pad_id,
            )
        finally:
            self.model.train(was_training)
        out = []
        for row in generated[:, width:].tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in self.eos_ids), len(row))
            out.append(row[:cut])
        return out

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Nothing to do when this engine samples from the training module itself; else copy them in."""
        if self.owns_model:
            incompatible = self.model.load_state_dict(dict(weights), strict=False)
            if incompatible.unexpected_keys:
                raise ValueError(f"weights the rollout model does not have: {incompatible.unexpected_keys[:5]}")

    def close(self) -> None:
        pass
