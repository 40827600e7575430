"""The models a run trains and reads: the policy (full or LoRA), its frozen reference, PPO's value estimate.

`PolicyModule` puts the policy and (for PPO) the value estimate in one module, so one DDP wrapper
synchronises both and one optimizer steps both. `exported_weights` gives the policy's weights in the
checkpoint format of the base model — LoRA deltas added in, names as in the base checkpoint — which is what
the rollout engine and `save_pretrained` readers expect.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from rewardline.trainer.config import TrainConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}

# The policy: a transformers causal LM, or peft's wrapper of one (LoRA), which forwards every attribute of the model
# it wraps (generate, save_pretrained, config...). No static type says that, so the policy is typed as Any.
PolicyModel = Any


class ValueHead(nn.Module):
    """V(s_t) for every position: a linear layer on hidden states, on the policy's own or (``value_model:
    model``) on a separate copy of the policy's transformer trained with the value loss alone."""

    def __init__(self, hidden_size: int, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(
        self,
        hidden: torch.Tensor | None,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
    ) -> torch.Tensor:
        if self.backbone is not None:
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            ).last_hidden_state
        assert hidden is not None
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1)


class PolicyModule(nn.Module):
    def __init__(self, policy: PolicyModel, value: ValueHead | None) -> None:
        super().__init__()
        self.policy = policy
        self.value = value

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, completion_width: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, C, vocab) and values (B, C) at the C positions that predict the completion tokens
        (trainer.batch's layout: the completion is the last C columns)."""
        needs_hidden = self.value is not None and self.value.backbone is None
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=needs_hidden,
            logits_to_keep=completion_width + 1,
        )
        logits = out.logits[:, :-1]
        values = None
        keep = slice(-(completion_width + 1), -1)
        if self.value is not None and needs_hidden:
            values = self.value(out.hidden_states[-1][:, keep], input_ids, attention_mask, position_ids)
        elif self.value is not None:
            values = self.value(None, input_ids, attention_mask, position_ids)[:, keep]
        return logits, values


def load_policy(config: TrainConfig) -> PolicyModule:
    dtype = DTYPES[config.policy.dtype]
    model: PolicyModel = AutoModelForCausalLM.from_pretrained(config.policy.path, dtype=dtype)
    if config.policy.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = config.policy.lora
        adapters = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,  # type: ignore[arg-type]  # peft annotates an int; any positive number scales
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, adapters)
    value = None
    if config.algorithm.name == "ppo":
        base = base_model(model)
        backbone = None
        if config.algorithm.value_model == "model":
            backbone = copy.deepcopy(base.get_decoder())
        value = ValueHead(base.config.hidden_size, backbone).to(dtype)
    return PolicyModule(model, value)


def base_model(model: PolicyModel) -> PreTrainedModel:
    """The transformers model under a peft wrapper (or the model itself)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert isinstance(base, PreTrainedModel)
    return base


def adapters_disabled(policy: PolicyModel) -> AbstractContextManager[None]:
    """The LoRA base model for the time of a ``with``: the policy with its adapters switched off."""
    from peft import PeftModel

    assert isinstance(policy, PeftModel), "only a LoRA policy has adapters to switch off"
    return policy.disable_adapter()


def load_reference(config: TrainConfig) -> nn.Module | None:
    """A frozen copy of the initial policy, or None (no KL, or the LoRA base with adapters off)."""
    if config.reference_kind != "copy":
        return None
    reference = AutoModelForCausalLM.from_pretrained(config.policy.path, dtype=DTYPES[config.policy.dtype])
    reference.requires_grad_(False)
    return reference.eval()


@torch.no_grad()
def exported_weights(policy: PolicyModel) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights as the base checkpoint names them, LoRA deltas merged in (without touching the
    trained module: merging and unmerging in place would drift the base weights by rounding, step after step)."""
    if not hasattr(policy, "get_base_model"):
        yield from policy.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    deltas: dict[str, torch.Tensor] = {}
    base = policy.get_base_model()
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer):
            for adapter in module.active_adapters:
                delta = module.get_delta_weight(adapter)  # type: ignore[attr-defined]  # each LoRA layer type defines it; LoraLayer does not declare it
                key = f"{name}.weight"
                deltas[key] = deltas[key] + delta if key in deltas else delta
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        yield clean, tensor + deltas[clean] if clean in deltas else tensor


def policy_weights(module: PolicyModule) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's full weights for the rollout engine. Under FSDP this gathers them (a collective: every
    rank calls it, and it runs at once rather than lazily)."""
    from rewardline.trainer.distributed import full_state_dict, is_sharded

    if is_sharded(module):
        full = full_state_dict(module)
        return iter([(k.removeprefix("policy."), v) for k, v in full.items() if k.startswith("policy.")])
    return exported_weights(module.policy)
