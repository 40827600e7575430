"""Building the model `rm train` trains: a base checkpoint with one linear `score` layer holding every head's rows,
and the prior those rows start from.

The prior is what makes an ensemble's disagreement mean something. Bradley–Terry training moves each member's
head only along directions the training features vary in; along every other direction a member keeps what it
started with, so members disagree exactly on inputs with unusual features. With heads drawn isotropically,
N(0, I), the expected disagreement on an input h is ∝ |h|², nearly the same for every input after the backbone's
final norm, and whether the few (K − 1) random directions catch a given unfamiliar input is luck. Drawing the
heads from N(0, c² Σ⁻¹), Σ the second moment of the training features (+ a small ridge), makes the expected
disagreement ∝ hᵀΣ⁻¹h, a Mahalanobis distance to the training data; this is the covariance of a Bayesian linear
head's posterior (as in a last-layer Laplace approximation), and the randomised-prior ensembles of Osband et al.
(2018) with that prior. c is set so that each member's initial score has standard deviation `init_score_std`
over the training inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import logging as hf_logging

from rewardline.services.uncertainty.outputs import HeadLayout

TrainKind = Literal["scalar", "ensemble", "gaussian", "quantile"]
log = logging.getLogger(__name__)


def layout_for(kind: TrainKind, members: int, attributes: list[str], quantile_levels: list[float]) -> HeadLayout:
    """A scalar model is laid out as a one-member ensemble: A outputs, as a plain reward model has."""
    if kind == "scalar":
        return HeadLayout("ensemble", 1, tuple(attributes))
    return HeadLayout(kind, members, tuple(attributes), tuple(quantile_levels) if kind == "quantile" else ())


def classifier_from_base(base: Path, layout: HeadLayout, pad_token_id: int | None) -> PreTrainedModel:
    """`base` (a causal LM or a sequence classifier) with a fresh `score` layer of `layout.outputs` rows."""
    config = AutoConfig.from_pretrained(base)
    names = layout.output_names()
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {n: i for i, n in enumerate(names)}
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad_token_id
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the base's own head is replaced on purpose; its load report is noise here
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            base, config=config, ignore_mismatched_sizes=True, dtype=torch.float32, use_safetensors=True
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def prior_draws(
    features: torch.Tensor, count: int, init_score_std: float, ridge: float, generator: torch.Generator
) -> torch.Tensor:
    """`count` head vectors from N(0, c² Σ⁻¹), Σ = E[hhᵀ] + ridge·tr/H·I over `features` (n, H)."""
    h = features.double().cpu()
    dim = h.shape[1]
    second = h.T @ h / len(h)
    sigma = second + ridge * torch.trace(second) / dim * torch.eye(dim, dtype=torch.float64)
    lower = torch.linalg.cholesky(sigma)
    z = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    draws = torch.linalg.solve_triangular(lower.T, z.T, upper=True).T  # covariance (L Lᵀ)⁻¹ = Σ⁻¹
    expected_square = torch.trace(torch.linalg.solve(sigma, second))  # E_h[hᵀ Σ⁻¹ h]
    return (draws * init_score_std / expected_square.sqrt()).float()


@torch.no_grad()
def init_score_layer(
    score: torch.nn.Linear,
    layout: HeadLayout,
    features: torch.Tensor,
    init_score_std: float,
    ridge: float,
    generator: torch.Generator,
) -> None:
    """Every member's value / mean / quantile rows from the prior; Gaussian log-variance rows start at 0 (σ = 1).

    The Q quantile rows of a member start from one shared draw plus a small one of their own: the quantile loss
    is symmetric in the atoms, so rows that started equal would stay equal.
    """
    k, p, a = layout.members, layout.parameters, len(layout.attributes)
    dim = features.shape[1]
    rows = torch.zeros(k, p, a, dim)
    draw = prior_draws(features, k * a, init_score_std, ridge, generator).view(k, 1, a, dim)
    if layout.kind == "quantile":
        jitter = prior_draws(features, k * p * a, 0.1 * init_score_std, ridge, generator).view(k, p, a, dim)
        rows[:] = draw + jitter
    else:
        rows[:, :1] = draw
    score.weight.copy_(rows.view(k * p * a, dim).to(score.weight))
    if score.bias is not None:
        score.bias.zero_()
