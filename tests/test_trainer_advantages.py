"""Advantage estimators against the papers' formulas, written out with numpy loops on fixed numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewardline.trainer.algorithms.advantages import gae, group_normalized, leave_one_out, whiten

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
