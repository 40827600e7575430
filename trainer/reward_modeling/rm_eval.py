"""`rewardline rm eval`: how good a reward model's preferences and uncertainties are, as the service would serve them.

    rewardline rm eval --model DIR --data prefs.jsonl [--ood ood.jsonl] [--json]

- pairwise accuracy as RewardBench counts it (chosen strictly higher wins, a tie counts half), overall and per
  pair `category`;
- ECE of P(chosen ≻ rejected) = σ(score_c − score_r) (quality.expected_calibration_error);
- uncertainty models with `--ood` (JSONL of prompt, response, optional kind): AUROC of `std` at telling the OOD
  responses from the in-distribution ones (both sides of the `--data` pairs), overall and per OOD kind, and how
  often the calibrated flag fires on each.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rewardline.services.config import LogLevel
from rewardline.services.modeling import resolve_device
from rewardline.trainer.reward_modeling.calibration import pair_responses
from rewardline.trainer.reward_modeling.pairs import read_pairs
from rewardline.trainer.reward_modeling.predict import Predictor
from rewardline.trainer.reward_modeling.quality import (
    auroc,
    expected_calibration_error,
    pairwise_wins,
    preference_probability,
)


class RMEvalConfig(BaseModel):
    """The one configuration of `rewardline rm eval`."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(..., description="a reward model or uncertainty model directory")
    data: Path = Field(
        ..., description="held-out preference pairs, JSONL: prompt, chosen, rejected (optional: category)"
    )
    ood: Path | None = Field(None, description="out-of-distribution samples, JSONL: prompt, response (optional: kind)")
    bins: int = Field(10, gt=1, description="probability bins of the calibration error")
    batch_size: int = Field(64, gt=0, description="inputs per forward pass")
    max_length: int = Field(
        512, gt=0, description="longest input in tokens (longer prompts are cut from the left, as served)"
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")
    threads: int | None = Field(None, gt=0, description="torch CPU threads (default: torch's)")
    log_level: LogLevel = Field("warning", description="log level (JSON lines on stderr)")


class OODRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str
    response: str
    kind: str | None = None


class OODEval(BaseModel):
    samples: int
    auroc: float
    auroc_by_kind: dict[str, float]
    flagged: float  # share of OOD samples flagged out of distribution
    flagged_by_kind: dict[str, float]
    flagged_in_distribution: float  # share of in-distribution responses flagged (≈ 1 − percentile/100 if calibrated)
    mean_std: float
    mean_std_in_distribution: float


class EvalReport(BaseModel):
    model: str
    kind: str
    members: int
    pairs: int
    accuracy: float
    accuracy_by_category: dict[str, float]
    ece: float
    mean_margin: float
    ood_threshold: float | None
    ood: OODEval | None


def read_ood(path: Path) -> list[OODRecord]:
    with path.open(encoding="utf-8") as f:
        return [OODRecord.model_validate_json(line) for line in f if line.strip()]


def evaluate_model(config: RMEvalConfig) -> EvalReport:
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)
    predictor = Predictor.from_dir(config.model, resolve_device(config.device), config.batch_size, config.max_length)
    pairs = read_pairs(config.data)
    if not pairs:
        raise ValueError(f"{config.data} holds no preference pairs")
    outputs = predictor.predict(pair_responses(pairs))
    n = len(pairs)
    chosen, rejected = outputs.score[:n], outputs.score[n:]
    wins = pairwise_wins(chosen, rejected)
    groups: dict[str, list[float]] = defaultdict(list)
    for pair, win in zip(pairs, wins):
        if pair.category is not None:
            groups[pair.category].append(float(win))
    threshold = _threshold(config.model)
    layout = predictor.layout
    ood = None
    if config.ood is not None:
        if threshold is None:
            raise ValueError(f"{config.model} is not an uncertainty model: it has no std to tell OOD inputs by")
        ood = _ood_eval(predictor, read_ood(config.ood), outputs.std, threshold)
    return EvalReport(
        model=str(config.model),
        kind=layout.kind if threshold is not None else "scalar",
        members=layout.members,
        pairs=n,
        accuracy=float(wins.mean()),
        accuracy_by_category={k: float(np.mean(v)) for k, v in sorted(groups.items())},
        ece=expected_calibration_error(preference_probability(chosen, rejected), config.bins),
        mean_margin=float(np.mean(chosen - rejected)),
        ood_threshold=threshold,
        ood=ood,
    )


def _threshold(model_dir: Path) -> float | None:
    from rewardline.services.uncertainty.model_format import is_uncertainty_model, read_spec

    return read_spec(model_dir).calibration.threshold if is_uncertainty_model(model_dir) else None


def _ood_eval(predictor: Predictor, records: list[OODRecord], in_std: np.ndarray, threshold: float) -> OODEval:
    if not records:
        raise ValueError("the OOD file holds no samples")
    std = predictor.predict([(r.prompt, r.response) for r in records]).std
    kinds = np.array([r.kind or "all" for r in records])
    by_kind = sorted(set(kinds))
    # compared as float32, as the service flags (services/uncertainty/scorer.py)
    flag = lambda values: np.float32(values) > np.float32(threshold)  # noqa: E731
    return OODEval(
        samples=len(records),
        auroc=auroc(std, in_std),
        auroc_by_kind={k: auroc(std[kinds == k], in_std) for k in by_kind},
        flagged=float(flag(std).mean()),
        flagged_by_kind={k: float(flag(std[kinds == k]).mean()) for k in by_kind},
        flagged_in_distribution=float(flag(in_std).mean()),
        mean_std=float(std.mean()),
        mean_std_in_distribution=float(in_std.mean()),
    )


def format_table(report: EvalReport) -> str:
    """A readable table of the report."""
    rows: list[tuple[str, str]] = [
        ("model", f"{report.model} ({report.kind}, {report.members} member{'s' if report.members != 1 else ''})"),
        ("pairs", str(report.pairs)),
        ("pairwise accuracy", f"{report.accuracy:.3f}"),
    ]
    rows += [(f"  {k}", f"{v:.3f}") for k, v in report.accuracy_by_category.items()]
    rows += [("calibration error (ECE)", f"{report.ece:.3f}"), ("mean margin", f"{report.mean_margin:.3f}")]
    if report.ood_threshold is not None:
        rows.append(("OOD threshold (std)", f"{report.ood_threshold:.4g}"))
    if report.ood is not None:
        o = report.ood
        rows += [
            ("OOD samples", str(o.samples)),
            ("OOD AUROC of std", f"{o.auroc:.3f}"),
            *[(f"  {k}", f"{v:.3f}  (flagged {o.flagged_by_kind[k]:.0%})") for k, v in o.auroc_by_kind.items()],
            ("flagged: OOD / in-distribution", f"{o.flagged:.0%} / {o.flagged_in_distribution:.0%}"),
            ("mean std: OOD / in-distribution", f"{o.mean_std:.3f} / {o.mean_std_in_distribution:.3f}"),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def report_json(report: EvalReport) -> str:
    return json.dumps(report.model_dump(mode="json"), indent=2)
