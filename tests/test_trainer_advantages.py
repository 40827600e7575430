"""Advantage estimators against the papers' formulas, written out with plain loops on fixed numbers: GRPO, RLOO,
GAE, REINFORCE++ and REINFORCE++-baseline, and DAPO's filter of groups without signal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewardline.trainer.algorithms.advantages import (
    discounted_returns,
    gae,
    group_normalized,
    informative_groups,
    leave_one_out,
    whiten,
)

REWARDS = np.array([[1.0, 0.0, 0.5, 0.0], [2.0, 2.0, 2.0, 2.0], [0.3, -1.2, 0.7, 4.0]])


def test_group_normalized_is_grpo_formula():
    expected = np.zeros_like(REWARDS)
    for g, row in enumerate(REWARDS):
        mean = sum(row) / len(row)
        std = (sum((x - mean) ** 2 for x in row) / (len(row) - 1)) ** 0.5  # unbiased, as TRL
        expected[g] = [(x - mean) / (std + 1e-4) for x in row]
    got = group_normalized(torch.tensor(REWARDS)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert np.all(got[1] == 0)  # identical rewards: no signal


def test_group_normalized_without_scaling_only_centres():
    got = group_normalized(torch.tensor(REWARDS), scale=False).numpy()
    np.testing.assert_allclose(got, REWARDS - REWARDS.mean(axis=1, keepdims=True), atol=1e-12)


def test_group_statistics_leave_out_invalid_samples():
    valid = np.array([[True, True, False, True], [True, False, False, False], [True] * 4])
    got = group_normalized(torch.tensor(REWARDS), torch.tensor(valid)).numpy()
    kept = REWARDS[0, [0, 1, 3]]
    mean, std = kept.mean(), kept.std(ddof=1)
    np.testing.assert_allclose(
        got[0], [(1 - mean) / (std + 1e-4), (0 - mean) / (std + 1e-4), 0, (0 - mean) / (std + 1e-4)], rtol=1e-6
    )
    assert np.all(got[1] == 0)  # one valid sample: nothing to compare it with


def test_leave_one_out_is_rloo_formula():
    expected = np.zeros_like(REWARDS)
    for g, row in enumerate(REWARDS):
        for i in range(len(row)):
            others = [row[j] for j in range(len(row)) if j != i]
            expected[g, i] = row[i] - sum(others) / len(others)
    np.testing.assert_allclose(leave_one_out(torch.tensor(REWARDS)).numpy(), expected, atol=1e-12)


def test_leave_one_out_with_invalid_samples():
    valid = np.array([[True, False, True, True]] + [[True] * 4] * 2)
    got = leave_one_out(torch.tensor(REWARDS), torch.tensor(valid)).numpy()
    # group 0 valid rewards: 1.0, 0.5, 0.0
    np.testing.assert_allclose(got[0], [1.0 - 0.25, 0.0, 0.5 - 0.5, 0.0 - 0.75], atol=1e-12)


def test_gae_matches_the_recursion_written_out():
    rewards = np.array([[0.0, 0.0, 1.0, 0.0], [0.0, 0.5, 0.0, -1.0]])
    values = np.array([[0.2, 0.4, 0.6, 9.0], [0.1, -0.3, 0.2, 0.5]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    gamma, lam = 0.9, 0.8
    expected_adv = np.zeros_like(values)
    for b in range(2):
        length = int(mask[b].sum())
        for t in range(length):
            # A_t = Σ_lag (γλ)^lag δ_{t+lag}, δ_t = r_t + γ V_{t+1} − V_t, V after the last token = 0
            total = 0.0
            for lag in range(length - t):
                k = t + lag
                v_next = values[b, k + 1] if k + 1 < length else 0.0
                delta = rewards[b, k] + gamma * v_next - values[b, k]
                total += (gamma * lam) ** lag * delta
            expected_adv[b, t] = total
    adv, ret = gae(torch.tensor(rewards), torch.tensor(values), torch.tensor(mask), gamma, lam)
    np.testing.assert_allclose(adv.numpy(), expected_adv, atol=1e-12)
    np.testing.assert_allclose(ret.numpy(), (expected_adv + values) * mask, atol=1e-12)


def test_whiten_over_masked_entries():
    x = np.array([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = np.array([[1, 1, 0], [1, 1, 1]])
    kept = x[mask == 1]
    expected = (x - kept.mean()) / (kept.std() + 1e-8) * mask
    np.testing.assert_allclose(whiten(torch.tensor(x), torch.tensor(mask)).numpy(), expected, atol=1e-9)


@pytest.mark.parametrize("n", [2, 8])
def test_grpo_advantages_sum_to_zero_per_group(n):
    rewards = torch.randn(5, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    assert torch.allclose(group_normalized(rewards).sum(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(leave_one_out(rewards).sum(dim=1), torch.zeros(5, dtype=torch.float64), atol=1e-9)


def test_discounted_returns_written_out():
    rewards = np.array([[0.1, -0.2, 1.0, 7.0], [0.5, 0.0, 0.0, 0.0]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    gamma = 0.9
    expected = np.zeros_like(rewards)
    for b in range(2):
        length = int(mask[b].sum())
        for t in range(length):
            expected[b, t] = sum(gamma ** (k - t) * rewards[b, k] for k in range(t, length))  # G_t = Σ γ^(k−t) r_k
    got = discounted_returns(torch.tensor(rewards), torch.tensor(mask), gamma).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)


def test_reinforce_plus_plus_by_hand():
    """REINFORCE++: the sequence reward on the last token, −β·k1 on every token, returns (γ = 1), whitened over
    every token of the batch."""
    reward = [1.0, 0.0, 0.5]
    k1 = [[0.2, -0.1, 0.3], [0.0, 0.4, 0.0], [0.1, 0.1, 0.1]]
    lengths = [3, 2, 3]
    beta = 0.1
    returns = []
    for r, kl, length in zip(reward, k1, lengths):
        token = [-beta * kl[t] for t in range(length)]
        token[-1] += r
        returns.append([sum(token[t:]) for t in range(length)] + [0.0] * (3 - length))
    flat = [returns[b][t] for b in range(3) for t in range(lengths[b])]
    mean = sum(flat) / len(flat)
    std = (sum((x - mean) ** 2 for x in flat) / len(flat)) ** 0.5
    expected = [[(returns[b][t] - mean) / (std + 1e-8) if t < lengths[b] else 0.0 for t in range(3)] for b in range(3)]

    mask = torch.tensor([[1.0] * n + [0.0] * (3 - n) for n in lengths], dtype=torch.float64)
    token_rewards = -beta * torch.tensor(k1, dtype=torch.float64) * mask
    for b, n in enumerate(lengths):
        token_rewards[b, n - 1] += reward[b]
    got = whiten(discounted_returns(token_rewards, mask, 1.0), mask)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)


def test_reinforce_plus_plus_baseline_by_hand():
    """REINFORCE++-baseline: the reward minus its group's mean on every token, whitened over the batch's tokens."""
    rewards = [[1.0, 0.0, 0.0, 1.0], [0.2, 0.4, 0.9, 0.5]]
    lengths = [[2, 1, 3, 2], [1, 1, 2, 3]]
    centred = [[r - sum(group) / 4 for r in group] for group in rewards]
    flat = [centred[g][i] for g in range(2) for i in range(4) for _ in range(lengths[g][i])]
    mean = sum(flat) / len(flat)
    std = (sum((x - mean) ** 2 for x in flat) / len(flat)) ** 0.5
    expected = [
        [(centred[g][i] - mean) / (std + 1e-8) if t < lengths[g][i] else 0.0 for t in range(3)]
        for g in range(2)
        for i in range(4)
    ]
    mask = torch.tensor([[1.0] * n + [0.0] * (3 - n) for g in lengths for n in g], dtype=torch.float64)
    per_sample = group_normalized(torch.tensor(rewards, dtype=torch.float64), scale=False).reshape(-1)
    got = whiten(per_sample[:, None] * mask, mask)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-9)


def test_informative_groups_are_those_some_source_tells_apart():
    # sources × groups × n
    scores = torch.tensor(
        [
            [[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5], [2.0, 2.0, 3.0]],  # exact-style source
            [[0.3, 0.3, 0.3], [0.3, 0.3, 0.3], [0.1, 0.2, 0.1], [9.0, 9.0, 9.0]],  # a second source
        ]
    )
    valid = torch.tensor([[True] * 3, [True] * 3, [True] * 3, [True, True, False]])
    # group 0: no source differs; 1: the first does; 2: the second does; 3: only an invalid sample differs
    assert informative_groups(scores, valid).tolist() == [False, True, True, False]
    one_valid = torch.tensor([[True, False, False], [False, True, False], [True] * 3, [True] * 3])
    assert informative_groups(scores, one_valid).tolist() == [False, False, True, True]  # one valid sample: none
