"""Configuration: YAML, then flags; every field a flag; errors name the field."""

from __future__ import annotations

import argparse

import pytest

from rewardline.services.cli import build_parser, main
from rewardline.services.config import ServeConfig
from rewardline.services.config_loading import ConfigError, config_fields, flag_name, load_config


def parse(argv):
    return build_parser().parse_args(argv)


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("model: /models/rm\nport: 6000\nmax_batch_size: 8\n")
    args = parse(["serve", "reward", "--config", str(path), "--port", "7000"])
    config = load_config(ServeConfig, args)
    assert (config.model.as_posix(), config.port, config.max_batch_size) == ("/models/rm", 7000, 8)
    assert config.metrics_port == 9090 and config.kind == "reward"


def test_every_field_has_a_flag():
    parser = build_parser()
    serve_reward = parser._subparsers._group_actions[0].choices["serve"]._subparsers._group_actions[0].choices["reward"]
    flags = {opt for action in serve_reward._actions for opt in action.option_strings}
    missing = [flag_name(f) for f in config_fields(ServeConfig) if f != "kind" and flag_name(f) not in flags]
    assert not missing


def test_score_weights_by_name_or_in_order():
    by_name = load_config(ServeConfig, {"model": "m", "score_weights": "a=0.7,b=0.3"})
    in_order = load_config(ServeConfig, {"model": "m", "score_weights": "0.7,0.3"})
    assert by_name.score_weights == {"a": 0.7, "b": 0.3}
    assert in_order.score_weights == [0.7, 0.3]


@pytest.mark.parametrize(
    "argv,field",
    [
        (["serve", "reward", "--model", "m", "--port", "70000"], "port"),
        (["serve", "reward", "--model", "m", "--device", "gpu"], "device"),
        (["serve", "reward", "--port", "1"], "model"),
        (["serve", "reward", "--model", "m", "--max-batch-size", "zero"], "max_batch_size"),
        (["serve", "reward", "--model", "m", "--max-batch-padding", "-0.5"], "max_batch_padding"),
    ],
)
def test_invalid_values_are_refused_naming_the_field(argv, field, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{field}:" in err


def test_max_batch_padding_is_a_fraction_auto_or_off():
    values = [
        load_config(ServeConfig, {"model": "m", "max_batch_padding": v}).max_batch_padding
        for v in ("0.2", "auto", "off")
    ]
    assert values == [0.2, "auto", "off"]


def test_unknown_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "serve.yaml"
    path.write_text("model: m\nbatch_sise: 3\n")
    with pytest.raises(ConfigError, match="batch_sise"):
        load_config(ServeConfig, argparse.Namespace(config=path))


def test_the_command_is_offline_before_any_model_library_loads():
    """huggingface_hub reads HF_HUB_OFFLINE once, when imported: the command sets it in `main`, so nothing the
    command imports before `main` may import the Hub (or transformers, which imports it). It did, through the
    kinds' scorer, and the flag had no effect (and saved tokenizers recorded whichever value their process had)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = (
        "import sys\n"
        "from rewardline.services import cli\n"
        "assert 'huggingface_hub' not in sys.modules and 'transformers' not in sys.modules, 'imported too early'\n"
        "cli.build_parser = lambda: (_ for _ in ()).throw(SystemExit(0))\n"
        "try:\n    cli.main([])\nexcept SystemExit:\n    pass\n"
        "import huggingface_hub.constants as c\n"
        "assert c.HF_HUB_OFFLINE, 'the Hub is not offline'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
