"""The model kinds a service can serve, and where each one's Scorer lives.

Imported lazily by name so that a process only ever imports the kind it serves (a reward service never
pays for vLLM's import).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rewardline.services.config import ServeConfig

if TYPE_CHECKING:  # the scorer module imports transformers; the CLI imports this module to list the kinds
    from rewardline.services.scorer import Scorer

KINDS: dict[str, tuple[str, str]] = {
    "reward": (
        "rewardline.services.reward.scorer:RewardScorer",
        "scalar and multi-attribute reward models (sequence-classification checkpoints)",
    ),
    "uncertainty": (
        "rewardline.services.uncertainty.scorer:UncertaintyScorer",
        "reward models that say how far to trust each reward: ensembles, Gaussian and quantile heads",
    ),
    "judge": (
        "rewardline.services.judge.scorer:JudgeScorer",
        "generative judges (LLM-as-judge): verdict probability, rating, rationale-first and pairwise Compare",
    ),
}


def load_scorer(config: ServeConfig) -> Scorer:
    """Loads the model of ``config.kind`` with its configured backend."""
    path, _ = KINDS[config.kind]
    module_name, class_name = path.split(":")
    scorer_class = getattr(importlib.import_module(module_name), class_name)
    return scorer_class.load(config)
