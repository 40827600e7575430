"""A NeMo-RL environment that scores the last assistant turn with a rewardline service.

    from rewardline.services.integrations.nemo_rl import RewardlineEnvironment
    env = ray.remote(RewardlineEnvironment).remote({"target": "reward:50051"})   # as NeMo-RL runs environments

Matched against NeMo-RL's published source, github.com/NVIDIA-NeMo/RL at commit
7ea279abfbeb698b092856d0dab61e7cf39bc909: ``nemo_rl/environments/interfaces.py``
(``EnvironmentInterface.step(message_log_batch, metadata)`` returning ``EnvironmentReturn(observations, metadata,
next_stop_strings, rewards, terminateds, answers)``, and ``global_post_process_and_metrics(batch) -> (batch,
metrics)``) and ``nemo_rl/environments/reward_model_environment.py`` (a reward model as an environment: one step,
every episode terminated, the last message's content as the answer).
NeMo-RL is not installable here (the ``nemo-rl`` name on PyPI is an empty 0.0.0 placeholder), so this class
subclasses NeMo-RL's ``EnvironmentInterface`` and returns its ``EnvironmentReturn`` when the package is importable,
and otherwise stands alone with a NamedTuple of the same fields.

Each message log is scored as a conversation up to and including its last assistant message (the service renders
it with its own chat template; observations, role "environment" in NeMo-RL's multi-turn environments, go in as
user turns). ``rewards`` are the scores less ``uncertainty_penalty`` standard deviations; each sample's metadata
gains ``rewardline``, its reward's numeric side values (``rewardline.services.extras``) and, for a judge that
writes one, its rationale. The client is made on first use, so the environment pickles into a Ray actor.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from rewardline.services.api import pb
from rewardline.services.extras import reward_extras
from rewardline.services.integrations.common import (
    DEFAULT_TIMEOUT_S,
    resolve_settings,
    resolve_target,
    sync_client,
    to_messages,
)


class StandaloneEnvironmentReturn(NamedTuple):
    """NeMo-RL's EnvironmentReturn, field for field, for when nemo_rl is not installed."""

    observations: list[dict[str, str]]
    metadata: list[Any]
    next_stop_strings: list[list[str] | None] | list[None]
    rewards: Any  # torch.Tensor[B]
    terminateds: Any  # torch.Tensor[B] of bool
    answers: list[str | None] | None


def _nemo_rl_interfaces() -> tuple[type, Any]:
    try:
        module = importlib.import_module("nemo_rl.environments.interfaces")
    except ImportError:
        return object, StandaloneEnvironmentReturn
    return module.EnvironmentInterface, module.EnvironmentReturn


_EnvironmentBase, EnvironmentReturn = _nemo_rl_interfaces()


def last_assistant_turn(message_log: Sequence[Mapping[str, Any]], index: int) -> list[pb.Message]:
    """The conversation up to and including its last assistant message; an environment's observations (NeMo-RL's
    role "environment", which chat templates do not know) are the other side of the conversation: user turns."""
    messages = to_messages(message_log)
    for m in messages:
        if m.role == "environment":
            m.role = "user"
    for end in range(len(messages), 0, -1):
        if messages[end - 1].role == "assistant":
            return messages[:end]
    raise ValueError(f"message log {index} has no assistant message to score")


class RewardlineEnvironment(_EnvironmentBase):  # type: ignore[misc,valid-type]  # nemo_rl's EnvironmentInterface when installed
    """config: ``target`` (else $REWARDLINE_TARGET), ``uncertainty_penalty`` (0), ``timeout`` (seconds); ``tls_ca``,
    ``tls_cert``, ``tls_key``, ``token_file``, ``tls_server_name`` (else $REWARDLINE_TLS_CA, ...)."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.target = resolve_target(config.get("target"))
        self.settings = resolve_settings(
            config.get("tls_ca"),
            config.get("tls_cert"),
            config.get("tls_key"),
            config.get("token_file"),
            config.get("tls_server_name"),
        )
        self.uncertainty_penalty = float(config.get("uncertainty_penalty", 0.0))
        self.timeout = config.get("timeout", DEFAULT_TIMEOUT_S)

    def step(self, message_log_batch: Sequence[Sequence[Mapping[str, Any]]], metadata: Sequence[Any]) -> Any:
        import torch

        samples = [
            pb.Sample(id=str(i), messages=last_assistant_turn(log, i)) for i, log in enumerate(message_log_batch)
        ]
        rewards = sync_client(self.target, self.timeout, self.settings).score(samples) if samples else []
        scores = [float(r.score) - self.uncertainty_penalty * float(r.uncertainty.std) for r in rewards]
        extras: list[dict[str, Any]] = [dict(reward_extras(r)) for r in rewards]
        for extra, reward in zip(extras, rewards):
            if reward.judgement.rationale:
                extra["rationale"] = reward.judgement.rationale
        given = list(metadata) if metadata is not None else [None] * len(samples)
        return EnvironmentReturn(
            observations=[{"role": "environment", "content": f"rewardline score: {s:.6g}"} for s in scores],
            metadata=[{**(m if isinstance(m, Mapping) else {}), "rewardline": e} for m, e in zip(given, extras)],
            next_stop_strings=[None] * len(samples),
            rewards=torch.tensor(scores, dtype=torch.float32),
            terminateds=torch.ones(len(samples), dtype=torch.bool),
            answers=[s.messages[-1].content for s in samples],
        )

    def global_post_process_and_metrics(self, batch: Any) -> tuple[Any, dict[str, float]]:
        """The batch unchanged, and the mean and spread of its rewards."""
        rewards = batch["rewards"] if "rewards" in batch else None
        if rewards is None or len(rewards) == 0:
            return batch, {}
        values = rewards.float()
        return batch, {
            "rewardline/mean_reward": float(values.mean()),
            "rewardline/std_reward": float(values.std()) if len(values) > 1 else 0.0,
            "rewardline/min_reward": float(values.min()),
            "rewardline/max_reward": float(values.max()),
        }

    def shutdown(self) -> None:
        """Nothing to release: clients are shared per process and closed with it."""
