"""verl's custom reward function, scoring with a rewardline service.

    reward:
      custom_reward_function:
        path: <this file: python -c "import rewardline.services.integrations.verl as m; print(m.__file__)">
        name: compute_score          # or compute_score_async (the reward loop awaits it), compute_score_batch
        reward_kwargs: {target: "reward:50051"}        # or $REWARDLINE_TARGET
        # with TLS and a token: {target: ..., tls_ca: /etc/rewardline/tls/ca.crt, token_file: /etc/rewardline/token}

Matched against verl 0.9.1 (PyPI): ``verl/trainer/ppo/reward.py`` (``get_custom_reward_fn`` loads the named function
from the file and merges ``reward_kwargs`` into every call; a coroutine function stays one),
``verl/experimental/reward_loop/reward_manager/naive.py`` (the reward loop awaits an async function, runs a sync
one in an executor, with ``data_source``, ``solution_str`` (the response, decoded without special tokens),
``ground_truth``, ``extra_info`` and, with a reward model, ``reward_router_address`` and ``reward_model_tokenizer``),
``verl/workers/reward_manager/naive.py`` (the legacy manager: the same keywords, synchronously) and
``verl/workers/reward_manager/batch.py`` (``data_sources``, ``solution_strs``, ``ground_truths``, ``extra_infos``).
A result may be a float or a dict with ``score``; every key of the dict becomes a column of ``reward_extra_info``,
built from the first sample's keys, so every sample here carries the same keys.

verl gives a reward function the response only: the prompt comes from ``extra_info``, under ``prompt_key`` (by
default the first of ``prompt``, ``question``, ``raw_prompt`` present): a string, or chat messages.
``ground_truth`` is sent as the reference answer (judges that verify read it). The dict holds ``score`` (the
service's score less ``uncertainty_penalty`` standard deviations), ``rewardline_score`` (the service's score) and
the reward's numeric side values (``rewardline.services.extras``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rewardline.services.api import pb
from rewardline.services.extras import reward_extras, shaped_score
from rewardline.services.integrations.common import (
    DEFAULT_TIMEOUT_S,
    as_list,
    async_client,
    make_sample,
    resolve_settings,
    resolve_target,
    sync_client,
)

PROMPT_KEYS = ("prompt", "question", "raw_prompt")


def prompt_of(extra_info: Mapping[str, Any] | None, prompt_key: str | None = None) -> Any:
    """The sample's prompt from verl's ``extra_info`` (a string or chat messages)."""
    info = extra_info or {}
    keys = (prompt_key,) if prompt_key else PROMPT_KEYS
    for key in keys:
        if key in info and info[key] is not None:
            return as_list(info[key])
    raise ValueError(
        f"extra_info has none of {list(keys)}: verl hands a reward function the response only, so put the prompt "
        "into extra_info (e.g. extra_info['prompt']) when preparing the data, or name its key with prompt_key"
    )


def _sample(
    solution_str: str, ground_truth: Any, extra_info: Mapping[str, Any] | None, prompt_key: str | None
) -> pb.Sample:
    return make_sample("0", prompt_of(extra_info, prompt_key), solution_str, ground_truth)


def _result(reward: pb.Reward, uncertainty_penalty: float) -> dict[str, Any]:
    return {
        "score": shaped_score(reward, uncertainty_penalty),
        "rewardline_score": float(reward.score),
        **reward_extras(reward),
    }


def compute_score(
    data_source: Any = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    *,
    target: str | None = None,
    prompt_key: str | None = None,
    uncertainty_penalty: float = 0.0,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token_file: str | None = None,
    tls_server_name: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """One sample's score, blocking (the legacy NaiveRewardManager; the reward loop runs it in an executor)."""
    client = sync_client(
        resolve_target(target), timeout, resolve_settings(tls_ca, tls_cert, tls_key, token_file, tls_server_name)
    )
    (reward,) = client.score([_sample(solution_str, ground_truth, extra_info, prompt_key)])
    return _result(reward, uncertainty_penalty)


async def compute_score_async(
    data_source: Any = None,
    solution_str: str = "",
    ground_truth: Any = None,
    extra_info: Mapping[str, Any] | None = None,
    *,
    target: str | None = None,
    prompt_key: str | None = None,
    uncertainty_penalty: float = 0.0,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token_file: str | None = None,
    tls_server_name: str | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """One sample's score, awaited by the reward loop: concurrent samples batch together in the service."""
    client = async_client(
        resolve_target(target), timeout, resolve_settings(tls_ca, tls_cert, tls_key, token_file, tls_server_name)
    )
    (reward,) = await client.score([_sample(solution_str, ground_truth, extra_info, prompt_key)])
    return _result(reward, uncertainty_penalty)


def compute_score_batch(
    data_sources: Sequence[Any] = (),
    solution_strs: Sequence[str] = (),
    ground_truths: Sequence[Any] = (),
    extra_infos: Sequence[Mapping[str, Any] | None] = (),
    *,
    target: str | None = None,
    prompt_key: str | None = None,
    uncertainty_penalty: float = 0.0,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token_file: str | None = None,
    tls_server_name: str | None = None,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    """Every sample of a batch in one call (verl's BatchRewardManager)."""
    solutions = list(solution_strs)
    truths = list(ground_truths) or [None] * len(solutions)
    infos = list(extra_infos) or [None] * len(solutions)
    samples = [
        make_sample(str(i), prompt_of(info, prompt_key), solution, truth)
        for i, (solution, truth, info) in enumerate(zip(solutions, truths, infos))
    ]
    client = sync_client(
        resolve_target(target), timeout, resolve_settings(tls_ca, tls_cert, tls_key, token_file, tls_server_name)
    )
    rewards = client.score(samples) if samples else []
    return [_result(r, uncertainty_penalty) for r in rewards]
