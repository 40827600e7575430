"""`rewardline rm ...`: train, evaluate, assemble and calibrate reward models (registered by trainer/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys

from rewardline.services.config_loading import add_config_flags, load_config
from rewardline.services.logs import setup_logging


def _train(args: argparse.Namespace) -> int:
    from rewardline.trainer.reward_modeling.rm_train import RMTrainConfig, train_rm

    config = load_config(RMTrainConfig, args)
    setup_logging(config.log_level)
    try:
        report = train_rm(config)
    except (OSError, ValueError) as e:  # unreadable data, a base that cannot load, too few pairs
        print(f"rewardline rm train: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rewardline.trainer.reward_modeling.rm_eval import RMEvalConfig, evaluate_model, format_table, report_json

    config = load_config(RMEvalConfig, args)
    setup_logging(config.log_level)
    try:
        report = evaluate_model(config)
    except (OSError, ValueError) as e:
        print(f"rewardline rm eval: {e}", file=sys.stderr)
        return 1
    print(report_json(report) if getattr(args, "as_json", False) else format_table(report))
    return 0


def _ensemble(args: argparse.Namespace) -> int:
    from rewardline.trainer.reward_modeling.assemble import RMEnsembleConfig, assemble_checkpoint_ensemble

    config = load_config(RMEnsembleConfig, args)
    setup_logging("warning")
    try:
        spec = assemble_checkpoint_ensemble(config)
    except (OSError, ValueError) as e:
        print(f"rewardline rm ensemble: {e}", file=sys.stderr)
        return 1
    print(json.dumps(spec.calibration.model_dump(), indent=2))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from rewardline.trainer.reward_modeling.assemble import RMCalibrateConfig, recalibrate

    config = load_config(RMCalibrateConfig, args)
    setup_logging("warning")
    try:
        spec = recalibrate(config)
    except (OSError, ValueError) as e:
        print(f"rewardline rm calibrate: {e}", file=sys.stderr)
        return 1
    print(json.dumps(spec.calibration.model_dump(), indent=2))
    return 0


def add_rm_commands(sub: argparse._SubParsersAction) -> None:
    from rewardline.trainer.reward_modeling.assemble import RMCalibrateConfig, RMEnsembleConfig
    from rewardline.trainer.reward_modeling.rm_eval import RMEvalConfig
    from rewardline.trainer.reward_modeling.rm_train import RMTrainConfig

    rm = sub.add_parser("rm", help="train and evaluate reward models, scalar or uncertainty-aware")
    actions = rm.add_subparsers(dest="rm_command", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train a reward model on preference pairs",
        description="Bradley-Terry training of a scalar, ensemble, Gaussian or quantile reward model; "
        "uncertainty kinds are calibrated on held-out pairs.",
    )
    add_config_flags(train, RMTrainConfig)
    train.set_defaults(handler=_train)
    evaluate = actions.add_parser(
        "eval",
        help="pairwise accuracy, calibration error and OOD AUROC of a model",
        description="Evaluate a reward or uncertainty model on preference pairs (and OOD samples).",
    )
    add_config_flags(evaluate, RMEvalConfig)
    evaluate.add_argument(
        "--json", dest="as_json", action="store_true", help="print the report as JSON instead of a table"
    )
    evaluate.set_defaults(handler=_eval)
    ensemble = actions.add_parser(
        "ensemble",
        help="an uncertainty model from reward models trained apart",
        description="Copy K reward models into one checkpoint_ensemble directory and calibrate it.",
    )
    add_config_flags(ensemble, RMEnsembleConfig)
    ensemble.set_defaults(handler=_ensemble)
    calibrate = actions.add_parser(
        "calibrate", help="re-measure an uncertainty model's OOD threshold on held-out pairs"
    )
    add_config_flags(calibrate, RMCalibrateConfig)
    calibrate.set_defaults(handler=_calibrate)
