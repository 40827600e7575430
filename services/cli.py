"""The ``rewardline`` command: one entry point for serving, building local models, training and the demo.

The command is assembled from the ``rewardline.commands`` entry points (pyproject.toml): each part of the
package registers its own subcommands (``add_commands`` here for serving, the trainer's for training), so this
module never imports the trainer. Each program's options come from its typed configuration object
(``config_loading``), so a flag, a YAML key and a field are always the same thing. Heavy imports (torch, vLLM)
happen inside the handlers, so ``rewardline --help`` and a reward service never pay for parts they do not use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path

from rewardline.services.config import InfoCommandConfig, ScoreCommandConfig, ServeConfig
from rewardline.services.config_loading import ConfigError, add_config_flags, load_config
from rewardline.services.kinds import KINDS
from rewardline.services.logs import setup_logging

COMMANDS_GROUP = "rewardline.commands"


def _serve(args: argparse.Namespace) -> int:
    config = load_config(ServeConfig, args)
    setup_logging(config.log_level)
    if config.num_threads:
        import torch

        torch.set_num_threads(config.num_threads)
    from rewardline.services.server import serve

    try:
        serve(config)
    except (OSError, ValueError) as e:  # a model that cannot load, a port that cannot bind
        print(f"rewardline serve {config.kind}: cannot start: {e}", file=sys.stderr)
        return 1
    return 0


def _client_call(command: str, call: Callable[[], int]) -> int:
    """A client command's call; a refusal (UNAUTHENTICATED, an unreachable server, a bad certificate) is one line
    on stderr and exit code 1, not a traceback."""
    import grpc

    try:
        return call()
    except grpc.RpcError as e:
        code = e.code().name if isinstance(e, grpc.Call) else "ERROR"
        details = e.details() if isinstance(e, grpc.Call) else str(e)
        print(f"rewardline {command}: {code}: {details}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # an unreadable input, certificate or token file
        print(f"rewardline {command}: {e}", file=sys.stderr)
        return 1


def _score(args: argparse.Namespace) -> int:
    """Scores samples from a JSONL file (or one prompt/response pair) against a running service."""
    config = load_config(ScoreCommandConfig, args)

    def call() -> int:
        from google.protobuf.json_format import MessageToDict

        from rewardline.services.client import RewardClient

        if config.input:
            lines = Path(config.input).read_text().splitlines()
            samples = [json.loads(line) for line in lines if line.strip()]
        else:
            samples = [{"id": "0", "prompt": config.prompt or "", "response": config.response or ""}]
        with RewardClient(config.target, timeout=config.timeout, settings=config.channel_settings()) as client:
            for reward in client.score(samples):
                print(json.dumps(MessageToDict(reward, preserving_proto_field_name=True)))
        return 0

    return _client_call("score", call)


def _info(args: argparse.Namespace) -> int:
    config = load_config(InfoCommandConfig, args)

    def call() -> int:
        from google.protobuf.json_format import MessageToDict

        from rewardline.services.client import RewardClient

        with RewardClient(config.target, timeout=config.timeout, settings=config.channel_settings()) as client:
            print(json.dumps(MessageToDict(client.info(), preserving_proto_field_name=True), indent=2))
        return 0

    return _client_call("info", call)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="serve a reward model over gRPC", description="Serve a reward model over gRPC."
    )
    kinds = serve.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, (_, help_text) in KINDS.items():
        p = kinds.add_parser(kind, help=help_text, description=f"Serve {help_text}.")
        add_config_flags(p, ServeConfig, skip={"kind"})
        p.set_defaults(handler=_serve)


def _add_client(sub: argparse._SubParsersAction) -> None:
    score = sub.add_parser(
        "score",
        help="score samples against a running service",
        description="Score samples against a running service (TLS and a bearer token with --tls-ca, --token-file).",
    )
    add_config_flags(score, ScoreCommandConfig)
    score.set_defaults(handler=_score)
    info = sub.add_parser(
        "info", help="describe the model behind a running service", description="GetInfo of a running service."
    )
    add_config_flags(info, InfoCommandConfig)
    info.set_defaults(handler=_info)


def _triton_build_repo(args: argparse.Namespace) -> int:
    from rewardline.services.triton.config import TritonRepoConfig
    from rewardline.services.triton.repository import build_repository

    config = load_config(TritonRepoConfig, args)
    setup_logging("warning")
    try:
        print(build_repository(config))
    except (OSError, ValueError) as e:  # no model directory, no safetensors, an existing model
        print(f"rewardline triton build-repo: {e}", file=sys.stderr)
        return 1
    return 0


def _triton_start(args: argparse.Namespace) -> int:
    from rewardline.services.triton.config import TritonStartConfig
    from rewardline.services.triton.launcher import run

    config = load_config(TritonStartConfig, args)
    setup_logging(config.log_level)
    try:
        return run(config)
    except (OSError, RuntimeError) as e:  # no tritonserver, no stub environment
        print(f"rewardline triton start: cannot start: {e}", file=sys.stderr)
        return 1


def _add_triton(sub: argparse._SubParsersAction) -> None:
    from rewardline.services.triton.config import TritonRepoConfig, TritonStartConfig

    triton = sub.add_parser("triton", help="run the reward model's forward pass in NVIDIA Triton Inference Server")
    commands = triton.add_subparsers(dest="triton_command", required=True, metavar="COMMAND")
    build = commands.add_parser(
        "build-repo", help="write a Triton model repository (Python backend) for a model directory"
    )
    add_config_flags(build, TritonRepoConfig)
    build.set_defaults(handler=_triton_build_repo)
    start = commands.add_parser("start", help="run the tritonserver bundled with nvidia-pytriton on a model repository")
    add_config_flags(start, TritonStartConfig)
    start.set_defaults(handler=_triton_start)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registers the serving side's subcommands on the ``rewardline`` parser."""
    _add_serve(sub)
    _add_triton(sub)
    _add_client(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardline",
        description="Reward models served over gRPC to online RL trainers, and the trainer that uses them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Nothing is fetched from a model hub at run time: models come from local directories.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConfigError as e:
        print(f"rewardline {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
