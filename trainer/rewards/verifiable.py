"""Verifiable rewards for the local arithmetic task (trainer.local_models.task), as TRL-style functions.

Use them as Python reward sources: ``function: rewardline.trainer.rewards.verifiable:exact_answer``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rewardline.trainer.local_models import task


def exact_answer(
    prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **_: Any
) -> list[float | None]:
    """1 when the last number in the completion is the reference answer, else 0 (None without a reference)."""
    return [None if a is None else float(task.is_correct(c, a)) for c, a in zip(completions, answer, strict=True)]


def format_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """1 when the completion is exactly the canonical sentence ``The answer is N.``, else 0."""
    return [float(task.follows_format(c)) for c in completions]
