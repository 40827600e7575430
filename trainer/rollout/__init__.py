"""Rollout engines: one interface (`base.RolloutEngine`), transformers `generate` and in-process vLLM."""

from rewardline.trainer.rollout.base import Completion, RolloutEngine, RolloutRequest, derive_seed, encode_prompt

__all__ = ["Completion", "RolloutEngine", "RolloutRequest", "derive_seed", "encode_prompt"]
