"""A Reward as flat numbers, and the reward a trainer trains on: shared by the HTTP face and the trainer adapters.

Trainers log per-sample side values as named numbers (OpenRLHF's ``extra_logs``, TRL's ``log_extra`` columns, verl's
``reward_extra_info``), and several of them turn every value into a tensor or an array column: a value must be a
number, and every sample of one service must carry the same names (they come from the kind and the model, never
from the sample). Text (a judge's rationale) cannot travel that way; the faces that can carry it send the whole
Reward besides.
"""

from __future__ import annotations

import math

from rewardline.services.api import pb


def reward_extras(reward: pb.Reward) -> dict[str, float]:
    """Everything numeric a Reward says besides its score, under names stable for one service."""
    out: dict[str, float] = {"num_tokens": float(reward.num_tokens), "truncated": float(reward.truncated)}
    for name in sorted(reward.attributes):
        out[f"attribute/{name}"] = float(reward.attributes[name])
    if reward.HasField("uncertainty"):
        u = reward.uncertainty
        out["uncertainty_std"] = float(u.std)
        out["epistemic_std"] = float(u.epistemic_std)
        out["aleatoric_std"] = float(u.aleatoric_std)
        out["out_of_distribution"] = float(u.out_of_distribution)
        for q in u.quantiles:
            out[f"quantile/{q.level:g}"] = float(q.value)
        for i, member in enumerate(u.member_scores):
            out[f"member/{i}"] = float(member)
    if reward.HasField("judgement"):
        j = reward.judgement
        if "rating" in j.mode:
            out["expected_rating"] = float(j.expected_rating)
            out["most_likely_rating"] = float(j.most_likely_rating)
        else:
            out["verdict_probability"] = float(j.verdict_probability)
        if j.mode.startswith("rationale"):
            out["num_rationales"] = float(j.num_rationales)
        out["unparsed"] = float(j.unparsed)
    return out


def shaped_score(
    reward: pb.Reward, uncertainty_penalty: float = 0.0, mask_out_of_distribution: bool = False
) -> float | None:
    """The reward to train on: the score less ``uncertainty_penalty`` standard deviations, or None (no reward:
    the trainer leaves the sample out) when masking and the service flags the sample out of distribution."""
    uncertain = reward.HasField("uncertainty")
    if mask_out_of_distribution and uncertain and reward.uncertainty.out_of_distribution:
        return None
    score = float(reward.score)
    if uncertainty_penalty and uncertain:
        score -= uncertainty_penalty * float(reward.uncertainty.std)
    return score


def sigmoid(x: float) -> float:
    """The logistic function, overflow-free on both sides."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
