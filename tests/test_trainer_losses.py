"""Losses against the papers' formulas, computed element by element with numpy on fixed numbers."""

from __future__ import annotations

import math

import numpy as np
import torch

from rewardline.trainer.algorithms.losses import (
    aggregate,
    clipped_surrogate,
    entropy_from_logits,
    k1_kl,
    k2_kl,
    k3_kl,
    logprobs_and_entropy,
    off_policy_surrogate,
    token_logprobs,
    value_loss,
)

LOGP = np.array([[-1.0, -0.5, -2.0], [-0.1, -3.0, -0.7]])
OLD = np.array([[-1.2, -0.5, -1.0], [-0.4, -2.5, -0.7]])
REF = np.array([[-0.9, -0.8, -2.5], [-0.1, -2.0, -1.7]])
ADV = np.array([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
MASK = np.array([[1, 1, 1], [1, 1, 0]])


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_clipped_surrogate_is_ppo_objective():
    eps_low, eps_high = 0.2, 0.28
    expected = np.zeros_like(LOGP)
    clipped = np.zeros_like(LOGP, dtype=bool)
    for i in range(2):
        for j in range(3):
            ratio = math.exp(LOGP[i, j] - OLD[i, j])
            a = ADV[i, j]
            surr1 = ratio * a
            surr2 = min(max(ratio, 1 - eps_low), 1 + eps_high) * a
            expected[i, j] = -min(surr1, surr2)
            clipped[i, j] = surr2 < surr1
    loss, was_clipped = clipped_surrogate(t(LOGP), t(OLD), t(ADV), eps_low, eps_high)
    np.testing.assert_allclose(loss.numpy(), expected, atol=1e-12)
    assert (was_clipped.numpy() == clipped).all()
    assert clipped.any() and not clipped.all()  # the fixed numbers exercise both branches


def test_surrogate_gradient_at_ratio_one_is_policy_gradient():
    logp = t(LOGP).requires_grad_()
    loss, _ = clipped_surrogate(logp, t(LOGP), t(ADV), 0.2)
    loss.sum().backward()
    np.testing.assert_allclose(logp.grad.numpy(), -ADV, atol=1e-12)


def test_k3_estimator():
    expected = np.zeros_like(LOGP)
    for i in range(2):
        for j in range(3):
            r = math.exp(REF[i, j]) / math.exp(LOGP[i, j])  # π_ref / π
            expected[i, j] = r - math.log(r) - 1
    got = k3_kl(t(LOGP), t(REF)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert (got >= 0).all()


def test_k3_is_an_unbiased_kl_estimate():
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.2, 0.5, 0.3])
    exact = float((p * np.log(p / q)).sum())
    logp, logq = t(np.log(p)), t(np.log(q))
    expectation = float((t(p) * k3_kl(logp, logq)).sum())
    assert abs(expectation - exact) < 1e-12


def test_value_loss_with_clipping():
    values = np.array([[0.5, 1.5, -0.2]])
    old = np.array([[0.0, 1.0, 0.0]])
    returns = np.array([[1.0, 0.0, 0.1]])
    c = 0.2
    expected = np.zeros_like(values)
    for j in range(3):
        v_clip = old[0, j] + min(max(values[0, j] - old[0, j], -c), c)
        expected[0, j] = 0.5 * max((values[0, j] - returns[0, j]) ** 2, (v_clip - returns[0, j]) ** 2)
    loss, _ = value_loss(t(values), t(old), t(returns), c)
    np.testing.assert_allclose(loss.numpy(), expected, atol=1e-12)
    unclipped, _ = value_loss(t(values), t(old), t(returns), None)
    np.testing.assert_allclose(unclipped.numpy(), 0.5 * (values - returns) ** 2, atol=1e-12)


def test_token_and_sequence_aggregation():
    x = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 99.0]])
    token = (1 + 2 + 3 + 10 + 20) / 5
    sequence = ((1 + 2 + 3) / 3 + (10 + 20) / 2) / 2
    assert abs(float(aggregate(t(x), t(MASK), "token")) - token) < 1e-12
    assert abs(float(aggregate(t(x), t(MASK), "sequence")) - sequence) < 1e-12
    # an external normaliser (the whole batch's count under DDP) replaces the local one
    assert abs(float(aggregate(t(x), t(MASK), "token", normalizer=10.0)) - 36 / 10) < 1e-12


def test_sequence_aggregation_ignores_rows_without_tokens():
    x = np.array([[1.0, 3.0], [5.0, 5.0]])
    mask = np.array([[1, 1], [0, 0]])
    assert abs(float(aggregate(t(x), t(mask), "sequence")) - 2.0) < 1e-12


def test_entropy_and_token_logprobs():
    logits = np.array([[[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]]])
    tokens = np.array([[1, 2]])
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(entropy_from_logits(t(logits)).numpy(), -(p * np.log(p)).sum(-1), atol=1e-6)
    expected = [[math.log(p[0, 0, 1]), math.log(p[0, 1, 2])]]
    np.testing.assert_allclose(token_logprobs(t(logits), torch.tensor(tokens)).numpy(), expected, atol=1e-6)
    logp, entropy = logprobs_and_entropy(t(logits), torch.tensor(tokens))  # the two from one log-softmax
    np.testing.assert_allclose(logp.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(entropy.numpy(), -(p * np.log(p)).sum(-1), atol=1e-6)


BEHAVIOUR = np.array([[-1.1, -1.0, -1.05], [-0.2, -1.0, -0.6]])  # μ: the rollout engine's, some versions back


def test_off_policy_surrogate_written_out():
    """−min(π_prox/μ, C) · min(ρA, clip(ρ)A), ρ = π_θ/π_prox: the decoupled objective with truncated IS."""
    eps_low, eps_high, cap = 0.2, 0.28, 1.5
    expected = np.zeros_like(LOGP)
    weights = np.zeros_like(LOGP)
    for i in range(2):
        for j in range(3):
            w = min(math.exp(OLD[i, j] - BEHAVIOUR[i, j]), cap)
            ratio = math.exp(LOGP[i, j] - OLD[i, j])
            a = ADV[i, j]
            expected[i, j] = -w * min(ratio * a, min(max(ratio, 1 - eps_low), 1 + eps_high) * a)
            weights[i, j] = w
    logp = t(LOGP).requires_grad_()
    loss, _, w, truncated = off_policy_surrogate(logp, t(OLD), t(BEHAVIOUR), t(ADV), eps_low, eps_high, cap)
    np.testing.assert_allclose(loss.detach().numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(w.numpy(), weights, atol=1e-12)
    assert truncated.numpy().tolist() == (np.exp(OLD - BEHAVIOUR) > cap).tolist() and truncated.any()
    # the weight carries no gradient: d loss / d logπ is −w·ρ·A where ρ is not clipped, 0 where it is
    loss.sum().backward()
    ratio = np.exp(LOGP - OLD)
    unclipped = ratio * ADV <= np.clip(ratio, 1 - eps_low, 1 + eps_high) * ADV
    np.testing.assert_allclose(logp.grad.numpy(), np.where(unclipped, -weights * ratio * ADV, 0.0), atol=1e-12)


def test_off_policy_surrogate_on_policy_and_without_correction():
    # first pass (π_prox = π_θ) with fresh rollouts (μ = π_θ): PPO's policy gradient, weights 1
    loss, clipped, w, _ = off_policy_surrogate(t(LOGP), t(LOGP), t(LOGP), t(ADV), 0.2, None, 2.0)
    np.testing.assert_allclose(loss.numpy(), -ADV, atol=1e-12)
    assert not clipped.any() and torch.all(w == 1)
    # tis_cap None: no correction, the plain clipped surrogate
    plain, _ = clipped_surrogate(t(LOGP), t(OLD), t(ADV), 0.2)
    loss, _, w, _ = off_policy_surrogate(t(LOGP), t(OLD), t(BEHAVIOUR), t(ADV), 0.2, None, None)
    assert torch.equal(loss, plain) and torch.all(w == 1)


def test_k1_and_k2_estimators():
    np.testing.assert_allclose(k1_kl(t(LOGP), t(REF)).numpy(), LOGP - REF, atol=1e-15)
    np.testing.assert_allclose(k2_kl(t(LOGP), t(REF)).numpy(), 0.5 * (LOGP - REF) ** 2, atol=1e-15)


def test_constant_aggregation_is_dr_grpo_normaliser():
    x = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 99.0]])
    # Σ over valid tokens / (sequences × a fixed length): here the width 3, or a normaliser of 2 rows × 16
    assert abs(float(aggregate(t(x), t(MASK), "constant")) - 36 / (2 * 3)) < 1e-12
    assert abs(float(aggregate(t(x), t(MASK), "constant", normalizer=2 * 16)) - 36 / 32) < 1e-12
