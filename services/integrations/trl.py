"""A rewardline service as a TRL reward function (``GRPOTrainer`` / ``RLOOTrainer`` ``reward_funcs``).

    from rewardline.services.integrations.trl import reward_function
    trainer = GRPOTrainer(..., reward_funcs=[reward_function("reward:50051")])

Matched against TRL 1.16.0 (PyPI), ``trl/trainer/grpo_trainer.py`` (``GRPOTrainer._calculate_rewards``; RLOO's in
``trl/trainer/rloo_trainer.py`` is the same) and ``trl/trainer/utils.py`` (``is_async_callable``,
``get_callable_name``): a reward function is called with the keyword arguments ``prompts``, ``completions``,
``completion_ids``, every other dataset column (one value per completion), ``trainer_state``, ``log_extra`` and
``log_metric``; prompts and completions are strings (standard format) or lists of chat messages (conversational);
it returns one float per completion, None meaning "no reward" (TRL turns it into NaN and leaves the sample out of
the reward statistics); a callable whose ``__call__`` is a coroutine function is awaited on TRL's own event loop,
concurrently with the other async reward functions; TRL logs it under its ``__name__``.

Here each call is one ``score`` of all the completions (split by the client if the server limits requests),
rendered by the service with its own chat template. The returned reward is the service's score, less
``uncertainty_penalty`` times its standard deviation when the service reports one, and None for samples the
service flags out of distribution when ``mask_out_of_distribution``. With ``log_extra`` and ``log_metric`` (TRL
passes both), every numeric side value of the rewards (``rewardline.services.extras``: uncertainty std, attributes,
the OOD flag, a judge's verdict or rating) becomes a completions-table column and its batch mean a metric, both
under ``<name>/``, and a judge's rationale a column too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from rewardline.services.api import pb
from rewardline.services.client import ChannelSettings
from rewardline.services.extras import reward_extras, shaped_score
from rewardline.services.integrations.common import (
    DEFAULT_TIMEOUT_S,
    async_client,
    make_sample,
    resolve_settings,
    sync_client,
)

LogExtra = Callable[[str, list], None]
LogMetric = Callable[[str, float], None]


class RewardFunction:
    """The blocking form; TRL runs it in its own thread of control."""

    def __init__(
        self,
        target: str,
        name: str = "rewardline",
        uncertainty_penalty: float = 0.0,
        mask_out_of_distribution: bool = False,
        reference_column: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        settings: ChannelSettings | None = None,
    ) -> None:
        self.target = target
        self.settings = settings or ChannelSettings()
        self.__name__ = name
        self.uncertainty_penalty = uncertainty_penalty
        self.mask_out_of_distribution = mask_out_of_distribution
        self.reference_column = reference_column
        self.timeout = timeout

    def samples(self, prompts: Sequence[Any], completions: Sequence[Any], columns: dict[str, Any]) -> list[pb.Sample]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        references = columns.get(self.reference_column) if self.reference_column else None
        if self.reference_column and references is None:
            raise ValueError(f"reference_column {self.reference_column!r} is not a column of the dataset")
        return [
            make_sample(str(i), p, c, references[i] if references is not None else None)
            for i, (p, c) in enumerate(zip(prompts, completions))
        ]

    def finish(
        self, rewards: list[pb.Reward], log_extra: LogExtra | None, log_metric: LogMetric | None
    ) -> list[float | None]:
        """The rewards TRL trains on; the side values logged where TRL lets a reward function log them."""
        if rewards and (log_extra is not None or log_metric is not None):
            extras = [reward_extras(r) for r in rewards]
            for key in extras[0]:
                values = [e[key] for e in extras]
                if log_extra is not None:
                    log_extra(f"{self.__name__}/{key}", values)
                if log_metric is not None:
                    log_metric(f"{self.__name__}/{key}", sum(values) / len(values))
            if log_extra is not None and any(r.judgement.rationale for r in rewards):
                log_extra(f"{self.__name__}/rationale", [r.judgement.rationale for r in rewards])
        return [shaped_score(r, self.uncertainty_penalty, self.mask_out_of_distribution) for r in rewards]

    def __call__(
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_extra: LogExtra | None = None,
        log_metric: LogMetric | None = None,
        **columns: Any,
    ) -> list[float | None]:
        rewards = sync_client(self.target, self.timeout, self.settings).score(
            self.samples(prompts, completions, columns)
        )
        return self.finish(rewards, log_extra, log_metric)


class AsyncRewardFunction(RewardFunction):
    """The asyncio form: TRL awaits it on its event loop beside its other async reward functions."""

    async def __call__(  # type: ignore[override]  # the same call, as the coroutine TRL awaits
        self,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        completion_ids: Sequence[Sequence[int]] | None = None,
        trainer_state: Any = None,
        log_extra: LogExtra | None = None,
        log_metric: LogMetric | None = None,
        **columns: Any,
    ) -> list[float | None]:
        client = async_client(self.target, self.timeout, self.settings)
        rewards = await client.score(self.samples(prompts, completions, columns))
        return self.finish(rewards, log_extra, log_metric)


def reward_function(
    target: str,
    *,
    name: str = "rewardline",
    uncertainty_penalty: float = 0.0,
    mask_out_of_distribution: bool = False,
    reference_column: str | None = None,
    asynchronous: bool = True,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token_file: str | None = None,
    tls_server_name: str | None = None,
) -> RewardFunction:
    """A TRL reward function scoring with the rewardline service at ``target`` (``host:port`` or ``dns:///name:port``).

    ``reference_column``: a dataset column sent as each sample's reference answer (judges that verify read it).
    ``asynchronous``: awaited by TRL (the default; several services are then scored concurrently) or blocking.
    ``tls_ca``, ``tls_cert``/``tls_key``, ``token_file``: TLS, mutual TLS and a bearer token (else from
    $REWARDLINE_TLS_CA, ... as ``common.resolve_settings`` says).
    """
    kind = AsyncRewardFunction if asynchronous else RewardFunction
    settings = resolve_settings(tls_ca, tls_cert, tls_key, token_file, tls_server_name)
    return kind(target, name, uncertainty_penalty, mask_out_of_distribution, reference_column, timeout, settings)
