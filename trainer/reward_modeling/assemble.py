"""Uncertainty models from checkpoints trained apart, and recalibration of any uncertainty model.

`rewardline rm ensemble --members A,B,C --data heldout.jsonl --out DIR` copies K separately trained reward models
(normal sequence-classification directories with the same attributes and one tokenizer) into DIR/members/ and
writes the `checkpoint_ensemble` spec, calibrated on the held-out pairs. `rewardline rm calibrate` re-measures the
out-of-distribution threshold of an existing uncertainty model on other held-out data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging

from rewardline.services.modeling import safetensors_files
from rewardline.services.reward.attributes import attribute_names, combination_weights
from rewardline.services.uncertainty.model_format import UncertaintySpec, read_spec, write_spec
from rewardline.services.uncertainty.outputs import HeadLayout
from rewardline.services.uncertainty.scorer import shared_tokenizer
from rewardline.trainer.reward_modeling.calibration import calibrate
from rewardline.trainer.reward_modeling.pairs import read_pairs
from rewardline.trainer.reward_modeling.predict import Predictor


class RMEnsembleConfig(BaseModel):
    """The one configuration of `rewardline rm ensemble`."""

    model_config = ConfigDict(extra="forbid")

    members: list[Path] = Field(..., min_length=2, description="member reward model directories, comma-separated")
    data: Path = Field(..., description="held-out in-distribution preference pairs to calibrate the OOD threshold on")
    out: Path = Field(..., description="directory to create (must not exist, or be empty)")
    calibration_percentile: float = Field(
        95.0, gt=0, lt=100, description="the OOD threshold is this percentile of held-out std"
    )
    max_length: int = Field(512, gt=0, description="longest input in tokens")
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")


class RMCalibrateConfig(BaseModel):
    """The one configuration of `rewardline rm calibrate`."""

    model_config = ConfigDict(extra="forbid")

    model: Path = Field(..., description="uncertainty model directory (its rewardline_uncertainty.json is rewritten)")
    data: Path = Field(..., description="held-out in-distribution preference pairs")
    calibration_percentile: float = Field(
        95.0, gt=0, lt=100, description="the OOD threshold is this percentile of held-out std"
    )
    max_length: int = Field(512, gt=0, description="longest input in tokens")
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto, cpu, cuda or cuda:N")


def assemble_checkpoint_ensemble(config: RMEnsembleConfig) -> UncertaintySpec:
    for member in config.members:
        safetensors_files(member)  # a directory with safetensors weights, or a clear error
    tokenizer = shared_tokenizer(config.members, trust_remote_code=False)  # refuses differing tokenizers
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        models = [
            AutoModelForSequenceClassification.from_pretrained(m, dtype=torch.float32, use_safetensors=True)
            for m in config.members
        ]
    finally:
        hf_logging.set_verbosity(verbosity)
    names = [attribute_names(m.config.id2label, m.config.num_labels) for m in models]
    if any(n != names[0] for n in names):
        raise ValueError(f"members must have the same attributes in the same order; got {names}")
    if config.out.exists() and any(config.out.iterdir()):
        raise FileExistsError(f"{config.out} exists and is not empty")
    layout = HeadLayout("checkpoint_ensemble", len(models), tuple(names[0]))
    weights = combination_weights(layout.attributes, None)
    predictor = Predictor(
        [m.to(config.device) for m in models], tokenizer, layout, weights, config.device, max_length=config.max_length
    )
    calibration = calibrate(predictor, read_pairs(config.data), config.calibration_percentile, str(config.data))
    member_dirs = [f"members/{i}" for i in range(len(models))]
    for source, target in zip(config.members, member_dirs):
        shutil.copytree(source, config.out / target)
    spec = UncertaintySpec(
        kind="checkpoint_ensemble",
        members=len(models),
        attributes=names[0],
        member_dirs=member_dirs,
        calibration=calibration,
        training={"members": [str(m) for m in config.members]},
    )
    write_spec(config.out, spec)
    return spec


def recalibrate(config: RMCalibrateConfig) -> UncertaintySpec:
    spec = read_spec(config.model)
    predictor = Predictor.from_dir(config.model, config.device, max_length=config.max_length)
    spec.calibration = calibrate(predictor, read_pairs(config.data), config.calibration_percentile, str(config.data))
    write_spec(config.model, spec)
    return spec
