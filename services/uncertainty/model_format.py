"""The directory format of uncertainty-aware reward models: ``rewardline_uncertainty.json`` beside the weights.

Shared-backbone kinds (``ensemble``, ``gaussian``, ``quantile``) are ONE ordinary Hugging Face
sequence-classification checkpoint whose linear ``score`` layer holds every head's rows::

    DIR/config.json, DIR/model.safetensors, DIR/tokenizer*.json   (AutoModelForSequenceClassification)
    DIR/rewardline_uncertainty.json                               (this module's UncertaintySpec)

Output ``i`` of the checkpoint is member ``k``, parameter ``p``, attribute ``a`` with
``i = (k * P + p) * A + a`` (``layout = ["member", "parameter", "attribute"]``), where the parameters are

- ``ensemble``: ``["value"]`` (P = 1): K reward heads on one backbone, one forward pass for all;
- ``gaussian``: ``["mean", "log_variance"]`` (P = 2): a Normal per attribute, as in URM (K = 1, or K > 1 for a
  URME-like ensemble of Gaussian heads);
- ``quantile``: ``["q0.05", "q0.25", ...]`` (P = len(quantile_levels)): the reward's quantiles per attribute.

Because the weights are a plain checkpoint, every classifier backend (hf, vllm, triton) runs them unchanged;
only the post-processing of the logits (``services/uncertainty/heads.py``) knows about members and heads.

``checkpoint_ensemble`` is K separately trained checkpoints, each a normal sequence-classification directory
with one output per attribute, sharing one tokenizer (the service refuses members whose tokenizers differ)::

    DIR/rewardline_uncertainty.json      ("member_dirs": ["members/0", "members/1", ...], relative to DIR)
    DIR/members/0/{config.json, model.safetensors, tokenizer files}
    ...

Every model carries its ``calibration``: the threshold on the total ``std`` above which a reward is flagged out
of distribution, measured on held-out in-distribution data (for example the 95th percentile of ``std`` over the
responses of held-out preference pairs), with what it was measured on. A model without one is refused: an
uncalibrated flag would look like information and carry none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rewardline.services.uncertainty.outputs import HeadLayout

SPEC_FILE = "rewardline_uncertainty.json"
FORMAT_VERSION = 1
LAYOUT = ["member", "parameter", "attribute"]

UncertaintyKind = Literal["ensemble", "gaussian", "quantile", "checkpoint_ensemble"]
SHARED_BACKBONE_KINDS = ("ensemble", "gaussian", "quantile")


class Calibration(BaseModel):
    """How the out-of-distribution threshold was found."""

    model_config = ConfigDict(extra="forbid")

    statistic: Literal["std"] = Field("std", description="the Uncertainty field the threshold applies to")
    percentile: float = Field(..., gt=0, lt=100, description="percentile of the statistic on the in-distribution data")
    threshold: float = Field(..., ge=0, description="a reward whose std exceeds this is flagged out of distribution")
    n: int = Field(..., gt=0, description="how many in-distribution responses it was measured on")
    data: str = Field(..., description="what they were (file and split)")


class UncertaintySpec(BaseModel):
    """The content of ``rewardline_uncertainty.json`` (format 1)."""

    model_config = ConfigDict(extra="forbid")

    format: int = Field(FORMAT_VERSION, description="version of this file's format")
    kind: UncertaintyKind
    members: int = Field(..., ge=1, description="K: heads sharing the backbone, or separate checkpoints")
    attributes: list[str] = Field(["score"], min_length=1, description="A attribute names, in output order")
    quantile_levels: list[float] = Field([], description="quantile kind: the levels, ascending, in (0, 1)")
    layout: list[str] = Field(LAYOUT, description="output index = (member * P + parameter) * A + attribute")
    parameters: list[str] = Field([], description="the P per-attribute outputs of a head (derived from kind)")
    member_dirs: list[str] = Field([], description="checkpoint_ensemble: member directories, relative to the model's")
    calibration: Calibration
    training: dict[str, Any] = Field({}, description="how the model was trained (provenance; not read when serving)")

    @model_validator(mode="before")
    @classmethod
    def _derive_parameters(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("parameters") and "kind" in data:
            data = {**data, "parameters": expected_parameters(data["kind"], data.get("quantile_levels") or [])}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> UncertaintySpec:
        if self.format != FORMAT_VERSION:
            raise ValueError(f"format {self.format} is not supported (this rewardline reads format {FORMAT_VERSION})")
        if self.layout != LAYOUT:
            raise ValueError(f"layout must be {LAYOUT}, got {self.layout}")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError(f"attribute names repeat: {self.attributes}")
        levels = self.quantile_levels
        if self.kind == "quantile":
            if len(levels) < 2 or any(not 0 < q < 1 for q in levels) or any(a >= b for a, b in zip(levels, levels[1:])):
                raise ValueError(
                    f"quantile models need at least two levels, strictly ascending, in (0, 1); got {levels}"
                )
        elif levels:
            raise ValueError(f"quantile_levels are only for the quantile kind, not {self.kind}")
        expected = expected_parameters(self.kind, levels)
        if self.parameters != expected:
            raise ValueError(f"parameters of a {self.kind} model must be {expected}, got {self.parameters}")
        if self.kind == "checkpoint_ensemble":
            if len(self.member_dirs) != self.members:
                raise ValueError(f"members={self.members} but {len(self.member_dirs)} member_dirs are listed")
            if any(Path(d).is_absolute() or ".." in Path(d).parts for d in self.member_dirs):
                raise ValueError(f"member_dirs must be relative paths inside the model directory: {self.member_dirs}")
        elif self.member_dirs:
            raise ValueError(f"member_dirs are only for checkpoint_ensemble, not {self.kind}")
        return self

    @property
    def outputs_per_checkpoint(self) -> int:
        """The ``num_labels`` each checkpoint must have."""
        per_member = len(self.parameters) * len(self.attributes)
        return per_member if self.kind == "checkpoint_ensemble" else self.members * per_member

    def checkpoint_dirs(self, model_dir: Path) -> list[Path]:
        if self.kind == "checkpoint_ensemble":
            return [Path(model_dir) / d for d in self.member_dirs]
        return [Path(model_dir)]

    def head_layout(self) -> HeadLayout:
        return HeadLayout(self.kind, self.members, tuple(self.attributes), tuple(self.quantile_levels))

    def output_names(self) -> list[str]:
        return self.head_layout().output_names()


def expected_parameters(kind: str, quantile_levels: list[float]) -> list[str]:
    return HeadLayout(kind, 1, ("score",), tuple(quantile_levels)).parameter_names


def spec_path(model_dir: Path) -> Path:
    return Path(model_dir) / SPEC_FILE


def is_uncertainty_model(model_dir: Path) -> bool:
    return spec_path(model_dir).is_file()


def read_spec(model_dir: Path) -> UncertaintySpec:
    """The model's spec; ValueError naming the file and the problem when it is missing or invalid."""
    path = spec_path(model_dir)
    if not path.is_file():
        raise ValueError(
            f"{model_dir} is not an uncertainty model: {SPEC_FILE} is missing (see services/uncertainty/README.md)"
        )
    try:
        return UncertaintySpec.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{path} is invalid: {problems}") from None


def write_spec(model_dir: Path, spec: UncertaintySpec) -> Path:
    path = spec_path(model_dir)
    path.write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return path
