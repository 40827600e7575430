"""The trainer's one config: YAML, then flags; validated at start; errors name the field."""

from __future__ import annotations

import argparse

import pytest

from rewardline.services.config_loading import ConfigError, add_config_flags, load_config
from rewardline.trainer.config import GrpcSourceConfig, PythonSourceConfig, TrainConfig, config_hash

YAML = """
run_dir: {run_dir}
steps: 5
policy: {{path: /models/policy}}
data: {{train: [/data/a.jsonl]}}
rollout: {{n: 4, prompts_per_step: 2}}
rewards:
  combine: normalize_then_sum
  sources:
    - {{name: rm, type: grpc, target: "127.0.0.1:50051", weight: 0.5, uncertainty_penalty: 1.0}}
    - {{name: exact, type: python, function: "rewardline.trainer.rewards.verifiable:exact_answer"}}
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_config_flags(p, TrainConfig, skip={"rewards.sources"})
    return p


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML.format(run_dir=tmp_path / "run"))
    args = parser().parse_args(
        ["--config", str(path), "--rollout.n", "8", "--algorithm.name", "rloo", "--optim.lr", "3e-4"]
    )
    config = load_config(TrainConfig, args)
    assert config.rollout.n == 8 and config.rollout.prompts_per_step == 2
    assert config.algorithm.name == "rloo" and config.optim.lr == 3e-4
    assert isinstance(config.rewards.sources[0], GrpcSourceConfig) and config.rewards.sources[0].weight == 0.5
    assert isinstance(config.rewards.sources[1], PythonSourceConfig)
    assert config.reference_kind == "copy"


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--rollout.n", "0"], "rollout.n"),
        (["--optim.lr", "-1"], "optim.lr"),
        (["--rollout.n", "1"], "rollout.n"),  # GRPO needs a group
        (["--policy.reference", "adapters_off"], "policy.reference"),
    ],
)
def test_errors_name_the_field(tmp_path, flags, field):
    path = tmp_path / "run.yaml"
    path.write_text(YAML.format(run_dir=tmp_path / "run"))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(TrainConfig, parser().parse_args(["--config", str(path), *flags]))


def test_bad_sources_are_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(
        YAML.format(run_dir=tmp_path / "run")
        .replace('target: "127.0.0.1:50051", ', "")
        .replace("type: python", "type: nope")
    )
    with pytest.raises(ConfigError) as err:
        load_config(TrainConfig, parser().parse_args(["--config", str(path)]))
    assert "rewards.sources.0.grpc.target" in str(err.value) and "rewards.sources.1" in str(err.value)


def test_duplicate_source_names_and_missing_data(tmp_path):
    import yaml

    base = {"policy": {"path": "p"}, "data": {"train": ["a"]}}
    source = {"name": "x", "type": "python", "function": "m:f"}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**base, "rewards": {"sources": [source, source]}}))
    with pytest.raises(ConfigError, match="repeated: x"):
        load_config(TrainConfig, yaml_path=path)
    path.write_text(yaml.safe_dump({**base, "data": {}, "rewards": {"sources": [source]}}))
    with pytest.raises(ConfigError, match="data: Value error, give prompt files"):
        load_config(TrainConfig, yaml_path=path)


def test_config_hash_ignores_what_resuming_may_change(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML.format(run_dir=tmp_path / "run"))
    a = load_config(TrainConfig, parser().parse_args(["--config", str(path)]))
    b = load_config(
        TrainConfig, parser().parse_args(["--config", str(path), "--steps", "50", "--checkpoint.every", "3"])
    )
    c = load_config(TrainConfig, parser().parse_args(["--config", str(path), "--optim.lr", "1e-3"]))
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_preflight_names_what_is_missing(tmp_path):
    from rewardline.trainer.train import preflight

    path = tmp_path / "run.yaml"
    path.write_text(YAML.format(run_dir=tmp_path / "run").replace("verifiable:exact_answer", "verifiable:nope"))
    config = load_config(TrainConfig, parser().parse_args(["--config", str(path)]))
    with pytest.raises(ConfigError) as err:
        preflight(config)
    message = str(err.value)
    assert "policy.path: /models/policy is not a Hugging Face model directory" in message
    assert "data.train.0: no such file: /data/a.jsonl" in message
    assert "rewards.sources.1 (exact)" in message and "no attribute 'nope'" in message
