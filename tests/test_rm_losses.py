"""Reward-model losses and evaluation figures as pure functions, checked against what they should compute."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewardline.trainer.reward_modeling.preference_losses import (
    bootstrap_weights,
    bradley_terry_loss,
    centering_loss,
    gaussian_bradley_terry_loss,
    gaussian_nll_loss,
    pinball_loss,
    quantile_bradley_terry_loss,
    weighted_bradley_terry_loss,
)
from rewardline.trainer.reward_modeling.quality import auroc, expected_calibration_error, pairwise_wins


def test_weighted_bradley_terry_with_unit_weights_is_bradley_terry():
    chosen, rejected = torch.randn(16), torch.randn(16)
    assert weighted_bradley_terry_loss(chosen, rejected, torch.ones(16)) == pytest.approx(
        bradley_terry_loss(chosen, rejected).item()
    )
    counts = torch.tensor([2.0, 0.0, 1.0])
    expected = (
        2 * -torch.nn.functional.logsigmoid(chosen[0] - rejected[0])
        - torch.nn.functional.logsigmoid(chosen[2] - rejected[2])
    ) / 3
    assert weighted_bradley_terry_loss(chosen[:3], rejected[:3], counts) == pytest.approx(expected.item())
    assert weighted_bradley_terry_loss(chosen[:3], rejected[:3], torch.zeros(3)) == 0


def test_gaussian_bradley_terry_tends_to_bradley_terry_as_variance_vanishes_and_spreads_it_out_as_it_grows():
    chosen, rejected = torch.tensor([2.0, -1.0]), torch.tensor([0.0, 0.5])
    tiny = torch.full((2,), -30.0)
    assert gaussian_bradley_terry_loss(chosen, tiny, rejected, tiny) == pytest.approx(
        bradley_terry_loss(chosen, rejected).item(), rel=1e-6
    )
    huge = torch.full((2,), 12.0)
    assert gaussian_bradley_terry_loss(chosen, huge, rejected, huge) == pytest.approx(np.log(2), abs=1e-2)
    # against the logistic-Gaussian integral by Monte Carlo (the probit approximation is within ~0.02 in probability)
    z = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    probability = torch.sigmoid(2.0 + np.sqrt(2 * 3.0) * z).mean().item()
    log_var = torch.tensor([np.log(3.0)])
    approx = torch.exp(-gaussian_bradley_terry_loss(torch.tensor([2.0]), log_var, torch.tensor([0.0]), log_var)).item()
    assert approx == pytest.approx(probability, abs=0.02)


def test_quantile_bradley_terry_with_point_masses_is_bradley_terry():
    chosen, rejected = torch.randn(8), torch.randn(8)
    masses = torch.tensor([0.2, 0.6, 0.2])
    flat = quantile_bradley_terry_loss(chosen[:, None].expand(-1, 3), rejected[:, None].expand(-1, 3), masses)
    assert flat == pytest.approx(bradley_terry_loss(chosen, rejected).item(), rel=1e-5)


def test_pinball_loss_is_minimised_at_the_quantile():
    target = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    levels = torch.tensor([0.1, 0.5, 0.9])
    grid = torch.linspace(-3, 3, 601)
    for level in levels:
        per_level = [pinball_loss(torch.full((len(target), 1), float(g)), target, level[None]).item() for g in grid]
        best = grid[int(np.argmin(per_level))].item()
        assert best == pytest.approx(torch.quantile(target, level.item()).item(), abs=0.02)


def test_gaussian_nll_prefers_the_true_spread():
    target = 3.0 * torch.randn(5000, generator=torch.Generator().manual_seed(1))
    mean = torch.zeros(5000)
    values = {
        s: gaussian_nll_loss(mean, torch.full((5000,), float(np.log(s**2))), target).item() for s in (1.0, 3.0, 9.0)
    }
    assert values[3.0] < values[1.0] and values[3.0] < values[9.0]


def test_centering_loss_is_zero_only_for_zero_rewards():
    assert centering_loss(torch.zeros(4)) == 0
    assert centering_loss(torch.tensor([1.0, -1.0])) == pytest.approx(1.0)


def test_bootstrap_resamples_have_the_data_size_and_differ_per_member():
    counts = bootstrap_weights(100, 4, torch.Generator().manual_seed(0))
    assert counts.shape == (4, 100)
    assert (counts.sum(dim=1) == 100).all()
    assert not torch.equal(counts[0], counts[1])
    assert (counts == 0).float().mean() == pytest.approx(np.exp(-1), abs=0.1)  # ~37% left out of each resample
    assert torch.equal(bootstrap_weights(5, 1, torch.Generator()), torch.ones(1, 5))


def test_auroc_counts_pairs_ranked_right_and_ties_as_half():
    assert auroc([0.3, 0.4], [0.1, 0.2]) == 1.0  # positives first: the score is meant to be higher on them
    assert auroc([0.1, 0.2], [0.3, 0.4]) == 0.0
    assert auroc([1.0, 1.0], [1.0]) == 0.5
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(1, 6, 30).astype(float), rng.integers(0, 5, 40).astype(float)
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert auroc(pos, neg) == pytest.approx(brute)
    with pytest.raises(ValueError):
        auroc([], [1.0])
    with pytest.raises(ValueError):
        auroc([1.0], [])


def test_pairwise_wins_count_ties_as_half():
    wins = pairwise_wins(np.array([2.0, 1.0, 0.0, 3.0]), np.array([1.0, 1.0, 1.0, 0.0]))
    np.testing.assert_array_equal(wins, [1.0, 0.5, 0.0, 1.0])


def test_calibration_error_is_small_for_calibrated_and_large_for_overconfident_probabilities():
    rng = np.random.default_rng(0)
    p = rng.uniform(0.5, 1.0, 20000)
    wins = rng.uniform(size=p.shape) < p
    calibrated = np.where(wins, p, 1 - p)  # P(chosen wins) as given to the pair the labels were drawn for
    assert expected_calibration_error(calibrated) < 0.02
    overconfident = np.where(wins, 0.999, 0.001)  # 99.9% sure, and right only ~75% of the time
    assert expected_calibration_error(overconfident) > 0.2
