"""The trainer side's subcommands of ``rewardline``: local models, training, the control client, the demo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rewardline.services.config_loading import add_config_flags, load_config
from rewardline.services.logs import setup_logging

DEFAULT_MODELS = Path(".cache/models")


def _models_build(args: argparse.Namespace) -> int:
    from rewardline.trainer.local_models.build import build_models, summary
    from rewardline.trainer.local_models.config import ModelsBuildConfig

    config = load_config(ModelsBuildConfig, args)
    setup_logging("info")
    print(summary(build_models(args.out, config, force=args.force)))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rewardline.trainer.demo import DemoConfig, run_demo

    config = load_config(DemoConfig, args)
    setup_logging(config.log_level)
    return run_demo(config)


def _train(args: argparse.Namespace) -> int:
    from rewardline.trainer.config import TrainConfig
    from rewardline.trainer.train import train

    config = load_config(TrainConfig, args)
    setup_logging(config.log_level)
    return train(config, resume=args.resume)


def _control(args: argparse.Namespace) -> int:
    """One call of a running trainer's control API; its answer as JSON, a refusal as one line on stderr (exit 1)."""
    import grpc

    from rewardline.trainer.control import ControlClientConfig, control_call

    config = load_config(ControlClientConfig, args)
    try:
        print(json.dumps(control_call(config, args.action), indent=2))
    except grpc.RpcError as e:
        code = e.code().name if isinstance(e, grpc.Call) else "ERROR"
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        print(f"rewardline control {args.action}: {code}: {details}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # an unreadable certificate or token file
        print(f"rewardline control {args.action}: {e}", file=sys.stderr)
        return 1
    return 0


CONTROL_DESCRIPTION = """Call a running trainer's control API (rewardline.v1.TrainerService): status, or pause, resume,
checkpoint (these need a token with the admin scope when the trainer has control.auth_tokens). Prints the answer as
JSON. TLS: --tls-ca (and --tls-cert/--tls-key for mutual TLS); the token: --token-file."""


TRAIN_DESCRIPTION = """Train a policy online against reward services and reward functions (GRPO, RLOO, PPO).
Every field of the config can be set with a flag (--rollout.n 8) or in the YAML file given with --config,
except the list of reward sources (rewards.sources), which is YAML-only: e.g.
  rewards:
    sources:
      - {name: rm, type: grpc, target: "127.0.0.1:50051", weight: 1.0}
      - {name: exact, type: python, function: "rewardline.trainer.rewards.verifiable:exact_answer"}
Under torchrun (several processes) it trains data-parallel (DDP)."""


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registers the trainer's subcommands on the ``rewardline`` parser."""
    from rewardline.trainer.demo import DemoConfig
    from rewardline.trainer.local_models.config import ModelsBuildConfig

    models = sub.add_parser("models", help="small local models and data (no download)")
    models_sub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    build = models_sub.add_parser(
        "build",
        help="build (or reuse) the local models and data under --out",
        description="Build the small local models and data sets; unchanged steps are reused.",
    )
    build.add_argument(
        "--out", type=Path, default=DEFAULT_MODELS, help=f"directory to build into (default: {DEFAULT_MODELS})"
    )
    build.add_argument("--force", action="store_true", help="rerun every step, even those whose key is unchanged")
    add_config_flags(build, ModelsBuildConfig)
    build.set_defaults(handler=_models_build)

    from rewardline.trainer.config import TrainConfig

    train = sub.add_parser(
        "train",
        help="the online RL training daemon (GRPO, RLOO, PPO)",
        description=TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run_dir")
    add_config_flags(train, TrainConfig, skip={"rewards.sources"})
    train.set_defaults(handler=_train)

    from rewardline.trainer.control import CONTROL_ACTIONS, ControlClientConfig

    control = sub.add_parser(
        "control",
        help="call a running trainer's control API (status, pause, resume, checkpoint)",
        description=CONTROL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    control.add_argument("action", choices=list(CONTROL_ACTIONS), help="the TrainerService call")
    add_config_flags(control, ControlClientConfig)
    control.set_defaults(handler=_control)

    demo = sub.add_parser("demo", help="the end-to-end demo on local models (the README's main command)")
    add_config_flags(demo, DemoConfig)
    demo.set_defaults(handler=_demo)

    from rewardline.trainer.reward_modeling.cli import add_rm_commands  # rm train / eval / ensemble / calibrate

    add_rm_commands(sub)
