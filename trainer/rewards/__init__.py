"""Reward sources: remote rewardline services over gRPC and Python functions, behind one interface.

`make_source` maps a source's config to its implementation through `SOURCE_TYPES`; a new kind of source
(say, a Triton model called with tritonclient) is a class implementing `trainer.rewards.base.RewardSource`,
a config class in `rewardline.trainer.config` added to `RewardSourceConfig`, and one entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from rewardline.trainer.config import RewardSourceConfig
from rewardline.trainer.rewards.base import RewardSink, RewardSource, ScoringSample, SourceReward

# type -> "module:Class" whose constructor takes the source's config; imported only when used.
SOURCE_TYPES: dict[str, str] = {
    "grpc": "rewardline.trainer.rewards.grpc_source:GrpcRewardSource",
    "python": "rewardline.trainer.rewards.python_source:PythonRewardSource",
    "triton": "rewardline.trainer.rewards.triton_source:TritonRewardSource",
}


def make_source(config: RewardSourceConfig) -> RewardSource:
    module_name, class_name = SOURCE_TYPES[config.type].split(":")
    factory: Callable[[RewardSourceConfig], RewardSource] = getattr(importlib.import_module(module_name), class_name)
    return factory(config)


__all__ = ["RewardSink", "RewardSource", "ScoringSample", "SourceReward", "SOURCE_TYPES", "make_source"]
