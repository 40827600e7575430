"""`rewardline rm train`: a reward model, or an uncertainty-aware one, from preference pairs, top to bottom.

    rewardline rm train --data prefs.jsonl --base DIR --kind scalar|ensemble|gaussian|quantile --out DIR

1. Hold out pairs for calibration (`--heldout FILE`, else a `heldout_fraction` of `--data`).
2. Load `--base` (a causal LM or a sequence classifier) with one linear `score` layer holding every head's rows
   (services/uncertainty/model_format.py), drawn from a prior shaped by the training features (score_layer.py).
3. Train: Bradley–Terry on the first attribute, per member on its bootstrap resample (ensemble), with the rewards
   integrated over a predicted Normal (gaussian) or over predicted quantiles (quantile); a small centering term;
   plus, where pairs carry per-attribute ratings, regression on them (squared error, Gaussian likelihood or
   pinball loss, by kind). With `freeze_backbone` the pooled features are computed once and only `score` trains.
4. Save a plain sequence-classification checkpoint; for the uncertainty kinds, calibrate the out-of-distribution
   threshold on the held-out pairs and write `rewardline_uncertainty.json` beside it.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ConfigDict, Field, model_validator
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rewardline.services.config import LogLevel
from rewardline.services.modeling import resolve_device
from rewardline.services.reward.attributes import combination_weights
from rewardline.services.uncertainty.model_format import SPEC_FILE, UncertaintySpec, write_spec
from rewardline.services.uncertainty.outputs import HeadLayout, level_masses
from rewardline.trainer.fitting import FitConfig, final_loss, fit
from rewardline.trainer.reward_modeling.calibration import calibrate, pair_responses
from rewardline.trainer.reward_modeling.features import backbone, pooled_features, score_head
from rewardline.trainer.reward_modeling.pairs import (
    PreferencePair,
    collate_pairs,
    encode_pairs,
    rating_targets,
    read_pairs,
)
from rewardline.trainer.reward_modeling.predict import Predictor
from rewardline.trainer.reward_modeling.preference_losses import (
    bootstrap_weights,
    centering_loss,
    gaussian_bradley_terry_loss,
    gaussian_nll_loss,
    pinball_loss,
    quantile_bradley_terry_loss,
    weighted_bradley_terry_loss,
)
from rewardline.trainer.reward_modeling.quality import expected_calibration_error, pairwise_wins, preference_probability
from rewardline.trainer.reward_modeling.score_layer import TrainKind, classifier_from_base, init_score_layer, layout_for

log = logging.getLogger(__name__)
LOG_VAR_LIMIT = 10.0  # |log σ²| beyond this is a diverging head, not information


class RMRecipe(FitConfig):
    """How to train: everything of `rm train` but the paths (the `reward` and `uncertainty` build steps reuse it).
    The shared loop's settings (steps, batch_size, learning_rate of the backbone, ...) come from FitConfig."""

    model_config = ConfigDict(extra="forbid")

    kind: TrainKind = Field(
        "ensemble", description="scalar, ensemble (K heads, one backbone), gaussian (URM) or quantile"
    )
    members: int | None = Field(None, ge=1, description="heads sharing the backbone (default: 5 for ensemble, else 1)")
    attributes: list[str] = Field(
        ["score"], min_length=1, description="output attributes; Bradley-Terry trains the first, ratings the rest"
    )
    quantile_levels: list[float] = Field(
        [0.05, 0.25, 0.5, 0.75, 0.95], description="quantile kind: levels, ascending, in (0, 1)"
    )
    freeze_backbone: bool = Field(False, description="train only the score heads, on features computed once")
    bootstrap: bool = Field(True, description="each member trains on its own resample of the pairs (K > 1)")
    init_score_std: float | None = Field(
        None,
        gt=0,
        description="std of each head's initial score over training inputs, the prior's scale (default: 2 with "
        "several members, whose disagreement it drives; 0.1 for one head)",
    )
    prior_ridge: float = Field(1e-3, gt=0, description="ridge added to the feature second moment that shapes the prior")
    prior_samples: int = Field(
        4096, gt=1, description="training inputs whose features shape the prior when the backbone trains"
    )
    center_coef: float = Field(0.01, ge=0, description="weight of the mean-squared-reward centering term")
    rating_coef: float = Field(
        1.0, ge=0, description="weight of the regression on per-attribute ratings, where pairs have them"
    )
    head_learning_rate: float = Field(1e-2, gt=0, description="learning rate of the score heads")
    max_length: int = Field(512, gt=0, description="longest rendered pair side in tokens (longer pairs are an error)")
    feature_batch_size: int = Field(256, gt=0, description="inputs per forward pass when computing features")
    heldout_fraction: float = Field(
        0.1, ge=0, lt=1, description="share of --data held out for calibration when no --heldout file"
    )
    calibration_percentile: float = Field(
        95.0, gt=0, lt=100, description="the OOD threshold is this percentile of held-out std"
    )

    @model_validator(mode="after")
    def _consistent(self) -> RMRecipe:
        if self.kind == "scalar" and (self.members or 1) != 1:
            raise ValueError("a scalar model has one head; use --kind ensemble for several")
        if self.kind == "quantile":
            levels = self.quantile_levels
            if len(levels) < 2 or any(not 0 < q < 1 for q in levels) or any(a >= b for a, b in zip(levels, levels[1:])):
                raise ValueError(
                    f"quantile_levels must be at least two levels, strictly ascending, in (0, 1); got {levels}"
                )
        return self

    @property
    def num_members(self) -> int:
        return self.members or (5 if self.kind == "ensemble" else 1)

    @property
    def prior_scale(self) -> float:
        return self.init_score_std or (2.0 if self.num_members > 1 else 0.1)

    def layout(self) -> HeadLayout:
        return layout_for(self.kind, self.num_members, self.attributes, self.quantile_levels)


class RMTrainConfig(RMRecipe):
    """The one configuration of `rewardline rm train`."""

    data: Path = Field(
        ...,
        description="preference pairs, JSONL: prompt, chosen, rejected "
        "(optional: category, chosen_ratings, rejected_ratings)",
    )
    base: Path = Field(..., description="starting checkpoint: a causal LM or a sequence-classification directory")
    out: Path = Field(..., description="directory to write the trained model into")
    heldout: Path | None = Field(
        None, description="held-out in-distribution pairs for calibration (default: a share of --data)"
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's)")
    log_level: LogLevel = Field("warning", description="log level (JSON lines on stderr)")


def split_heldout(
    pairs: Sequence[PreferencePair], fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held out): a seeded random `fraction` held out, at least one pair when the fraction is not 0."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    count = max(1, round(fraction * len(pairs))) if fraction > 0 else 0
    if count >= len(pairs):
        raise ValueError(f"{len(pairs)} pairs are too few to hold out {fraction:.0%} and still train")
    held = set(order[:count])
    return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]


def head_loss(
    outputs: torch.Tensor,
    layout: HeadLayout,
    weights: torch.Tensor,
    ratings: torch.Tensor,
    levels: torch.Tensor,
    masses: torch.Tensor,
    recipe: RMRecipe,
) -> torch.Tensor:
    """The loss of one batch. `outputs` (2B, K, P, A): chosen rows, then rejected rows; `weights` (B, K) bootstrap
    counts; `ratings` (B, 2, A), nan where absent."""
    b = outputs.shape[0] // 2
    chosen, rejected = outputs[:b, :, :, 0], outputs[b:, :, :, 0]  # (B, K, P): the preference attribute
    if layout.kind == "gaussian":
        log_var = outputs[:, :, 1, :].clamp(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)
        preference = gaussian_bradley_terry_loss(
            chosen[:, :, 0], log_var[:b, :, 0], rejected[:, :, 0], log_var[b:, :, 0], weights
        )
        means = outputs[:, :, 0, :]
    elif layout.kind == "quantile":
        q = layout.parameters
        preference = quantile_bradley_terry_loss(
            chosen.reshape(-1, q), rejected.reshape(-1, q), masses, weights.reshape(-1)
        )
        means = (outputs * masses[None, None, :, None]).sum(dim=2)
    else:
        preference = weighted_bradley_terry_loss(chosen[:, :, 0], rejected[:, :, 0], weights)
        means = outputs[:, :, 0, :]
    loss = preference + recipe.center_coef * centering_loss(means)
    targets = torch.cat([ratings[:, 0], ratings[:, 1]])  # (2B, A), rows as in outputs
    if recipe.rating_coef > 0 and not torch.isnan(targets).all():
        loss = loss + recipe.rating_coef * rating_loss(outputs, targets, layout, levels)
    return loss


def rating_loss(outputs: torch.Tensor, targets: torch.Tensor, layout: HeadLayout, levels: torch.Tensor) -> torch.Tensor:
    """Regression of every member on the ratings present: squared error, Gaussian likelihood or pinball loss."""
    k = outputs.shape[1]
    mask = ~torch.isnan(targets)[:, None, :].expand(-1, k, -1)  # (2B, K, A)
    target = targets[:, None, :].expand(-1, k, -1)[mask]
    if layout.kind == "gaussian":
        log_var = outputs[:, :, 1, :].clamp(-LOG_VAR_LIMIT, LOG_VAR_LIMIT)
        return gaussian_nll_loss(outputs[:, :, 0, :][mask], log_var[mask], target)
    if layout.kind == "quantile":
        return pinball_loss(outputs.permute(0, 1, 3, 2)[mask], target, levels)
    return ((outputs[:, :, 0, :][mask] - target) ** 2).mean()


def fit_heads(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    layout: HeadLayout,
    recipe: RMRecipe,
    device: str,
) -> list[float]:
    """Trains `model` in place (its score rows from the prior, then the losses above); returns each step's loss."""
    encoded = encode_pairs(tokenizer, pairs, recipe.max_length)
    n, pad_id = len(encoded), int(model.config.pad_token_id)
    generator = torch.Generator().manual_seed(recipe.seed)
    rows = [p.chosen for p in encoded] + [p.rejected for p in encoded]
    if recipe.freeze_backbone:
        features = pooled_features(model, rows, pad_id, recipe.feature_batch_size, device)
        prior_features = features
    else:
        sample = torch.randperm(len(rows), generator=generator)[: recipe.prior_samples].tolist()
        prior_features = pooled_features(model, [rows[i] for i in sample], pad_id, recipe.feature_batch_size, device)
    head = score_head(model)
    init_score_layer(head, layout, prior_features, recipe.prior_scale, recipe.prior_ridge, generator)
    counts = bootstrap_weights(n, layout.members, generator) if recipe.bootstrap else torch.ones(layout.members, n)
    counts = counts.T.contiguous().to(device)  # (pairs, K)
    ratings = rating_targets(pairs, layout.attributes).to(device)
    levels = torch.tensor(layout.quantile_levels or [0.5], dtype=torch.float32, device=device)
    masses = torch.from_numpy(level_masses(layout.quantile_levels or [0.5])).float().to(device)

    groups = [(list(head.parameters()), recipe.head_learning_rate)]
    if not recipe.freeze_backbone:
        groups.append((list(backbone(model).parameters()), recipe.learning_rate))

    def batch_loss(indices: list[int]) -> torch.Tensor:
        index = torch.tensor(indices, device=device)
        if recipe.freeze_backbone:
            logits = head(torch.cat([features[index], features[n + index]]))
        else:
            input_ids, attention_mask = collate_pairs([encoded[i] for i in indices], pad_id)
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        outputs = logits.view(len(logits), layout.members, layout.parameters, len(layout.attributes))
        return head_loss(outputs, layout, counts[index], ratings[index], levels, masses, recipe)

    return fit(model, batch_loss, n, recipe, name=f"rm train ({recipe.kind})", groups=groups, generator=generator)


@dataclass
class TrainedModel:
    """A model trained in memory, with what saving and calibrating it needs."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    layout: HeadLayout
    train_pairs: int
    heldout: list[PreferencePair]
    heldout_name: str
    losses: list[float]
    device: str

    def predictor(self, max_length: int = 512) -> Predictor:
        """In-process rewards as the service computes them (score = the first attribute, as served by default)."""
        weights = combination_weights(self.layout.attributes, None)
        return Predictor([self.model], self.tokenizer, self.layout, weights, self.device, max_length=max_length)


def train_model(config: RMTrainConfig) -> TrainedModel:
    """Steps 1-3: hold out, build, train."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    tokenizer = AutoTokenizer.from_pretrained(config.base)
    pairs = read_pairs(config.data)
    if config.heldout is not None:
        train_pairs, heldout, heldout_name = pairs, read_pairs(config.heldout), _relative(config.heldout, config.out)
    else:
        train_pairs, heldout = split_heldout(pairs, config.heldout_fraction, config.seed)
        heldout_name = (
            f"{_relative(config.data, config.out)} (a seeded {config.heldout_fraction:.0%} held out from training)"
        )
    if config.kind != "scalar" and not heldout:
        raise ValueError(
            "uncertainty models are calibrated on held-out pairs: give --heldout or a heldout_fraction above 0"
        )
    if not train_pairs:
        raise ValueError(f"{config.data} holds no preference pairs")
    layout = config.layout()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model = classifier_from_base(config.base, layout, pad_id).to(device)  # type: ignore[arg-type]  # transformers' @wraps(Module.to) hides the bound method
    losses = fit_heads(model, tokenizer, train_pairs, layout, config, device)
    return TrainedModel(model, tokenizer, layout, len(train_pairs), heldout, heldout_name, losses, device)


def save_and_calibrate(trained: TrainedModel, config: RMTrainConfig) -> dict[str, object]:
    """Step 4: save the checkpoint, calibrate and write the spec (uncertainty kinds); returns the figures."""
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / SPEC_FILE).unlink(missing_ok=True)  # a stale spec would make the new weights misread
    trained.model.save_pretrained(config.out)
    trained.tokenizer.save_pretrained(config.out)
    layout, heldout, losses = trained.layout, trained.heldout, trained.losses
    predictor = trained.predictor(config.max_length)
    report: dict[str, object] = {
        "kind": config.kind,
        "members": layout.members,
        "train_pairs": trained.train_pairs,
        "steps": len(losses),
        "final_loss": final_loss(losses),
    }
    if heldout:
        outputs = predictor.predict(pair_responses(heldout))
        chosen, rejected = outputs.score[: len(heldout)], outputs.score[len(heldout) :]
        report["heldout_pairs"] = len(heldout)
        report["heldout_accuracy"] = float(np.mean(pairwise_wins(chosen, rejected)))
        report["heldout_ece"] = expected_calibration_error(preference_probability(chosen, rejected))
    if config.kind != "scalar":
        calibration = calibrate(predictor, heldout, config.calibration_percentile, trained.heldout_name)
        recipe = RMRecipe.model_validate(config.model_dump(include=set(RMRecipe.model_fields)))
        spec = UncertaintySpec(
            kind=layout.kind,
            members=layout.members,
            attributes=list(layout.attributes),
            quantile_levels=list(layout.quantile_levels),
            calibration=calibration,
            training={
                "base": _relative(config.base, config.out),
                "data": _relative(config.data, config.out),
                "recipe": recipe.model_dump(mode="json"),
            },
        )
        write_spec(config.out, spec)
        report["ood_threshold"] = calibration.threshold
    log.info("rm train: %s", report, extra={"report": report})
    return report


def train_rm(config: RMTrainConfig) -> dict[str, object]:
    """`rm train`: trains, saves into `config.out` and (uncertainty kinds) calibrates; returns the figures."""
    return save_and_calibrate(train_model(config), config)


def _relative(path: Path, model_dir: Path) -> str:
    """Provenance paths are written relative to the model directory, so that a model's spec (and so its revision)
    does not depend on where it was built."""
    return os.path.relpath(path, model_dir)
