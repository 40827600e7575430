"""A ``reward_func`` for OpenRLHF's ``--reward.remote_url path.py``, scoring with a rewardline service.

Either pass this very file (its ``reward_func`` reads the target from $REWARDLINE_TARGET, the policy's tokenizer
from $REWARDLINE_TOKENIZER when set, and TLS and a token from $REWARDLINE_TLS_CA, $REWARDLINE_TOKEN_FILE, ...)::

    --reward.remote_url $(python -c "import rewardline.services.integrations.openrlhf as m; print(m.__file__)")

or a file of your own with ``reward_func = make_reward_func("reward:50051", tokenizer="/path/to/policy")``.
No file at all is needed for plain scores: ``--reward.remote_url http://reward:8000/get_reward`` (the HTTP face).

Matched against OpenRLHF 0.11.2 (PyPI), ``openrlhf/utils/agent.py``: ``SingleTurnAgentExecutor`` loads a path ending
in ``.py`` with ``importlib`` and calls its module-level ``reward_func(queries, prompts, labels)`` in a thread, one
query at a time (``_fetch_rewards_via_func``); ``query`` is the rollout's prompt and response token ids decoded with
special tokens. It reads ``rewards``, ``scores`` (else ``rewards``) and ``extra_logs`` from the returned dict, and
``openrlhf/trainer/ppo_utils/samples_generator.py`` makes a tensor of each ``extra_logs`` value: numbers only.

Queries are split into samples as ``rewardline.services.queries`` says, with the policy's tokenizer when given
(it wrote the prompt's chat markup and the stop token). ``rewards`` are the scores less ``uncertainty_penalty``
standard deviations; ``scores`` the service's scores; ``extra_logs`` the rewards' numeric side values
(``rewardline.services.extras``), as the /get_reward route answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from rewardline.services.api import pb
from rewardline.services.extras import reward_extras, shaped_score
from rewardline.services.integrations.common import DEFAULT_TIMEOUT_S, resolve_settings, resolve_target, sync_client
from rewardline.services.queries import QuerySplitter

TOKENIZER_ENV = "REWARDLINE_TOKENIZER"
RewardFunc = Callable[..., dict[str, Any]]


def load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer object as given, or loaded from a local directory (transformers, imported only then)."""
    if tokenizer is None or not isinstance(tokenizer, str | os.PathLike):
        return tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer)


def make_reward_func(
    target: str | None = None,
    *,
    tokenizer: Any = None,
    uncertainty_penalty: float = 0.0,
    timeout: float | None = DEFAULT_TIMEOUT_S,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    token_file: str | None = None,
    tls_server_name: str | None = None,
) -> RewardFunc:
    """``reward_func(queries, prompts, labels, **kwargs)`` for the service at ``target`` (default $REWARDLINE_TARGET).

    ``tokenizer``: the policy's tokenizer (object or directory); it unwraps chat-rendered prompts and cuts the stop
    token, so the reward model renders the conversation with its own template. ``labels`` are sent as the samples'
    reference answers. ``tls_ca``, ``tls_cert``/``tls_key``, ``token_file``: TLS, mutual TLS and a bearer token (else
    $REWARDLINE_TLS_CA, $REWARDLINE_TLS_CERT, $REWARDLINE_TLS_KEY, $REWARDLINE_TOKEN_FILE: what this very file uses)."""
    resolved = resolve_target(target)
    settings = resolve_settings(tls_ca, tls_cert, tls_key, token_file, tls_server_name)
    splitter = QuerySplitter(load_tokenizer(tokenizer))

    def reward_func(
        queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        pairs = splitter.split_all(queries, prompts)
        refs = list(labels) if labels is not None else [None] * len(pairs)
        samples = [
            pb.Sample(id=str(i), prompt=p, response=r, reference="" if ref is None else str(ref))
            for i, ((p, r), ref) in enumerate(zip(pairs, refs))
        ]
        rewards = sync_client(resolved, timeout, settings).score(samples) if samples else []
        extras = [reward_extras(r) for r in rewards]
        return {
            "rewards": [shaped_score(r, uncertainty_penalty) for r in rewards],
            "scores": [float(r.score) for r in rewards],
            "extra_logs": {key: [e[key] for e in extras] for key in (extras[0] if extras else {})},
        }

    return reward_func


_default: RewardFunc | None = None


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
    """The function OpenRLHF calls when given this file: $REWARDLINE_TARGET, and $REWARDLINE_TOKENIZER if set."""
    global _default
    if _default is None:
        _default = make_reward_func(tokenizer=os.environ.get(TOKENIZER_ENV) or None)
    return _default(queries, prompts, labels, **kwargs)
