"""The command lines that deployment files give to `rewardline`, checked against the real CLI.

Kubernetes manifests, the compose file and the Dockerfiles all start `rewardline ...` (directly, or under
torchrun). A flag or subcommand that the CLI does not have fails only when a pod starts on a cluster, so
every such line is parsed here by ``services.cli.build_parser()`` itself (subcommands and flags read from the
parser, never copied), and the program's typed config is built from it, YAML files included, the way
``rewardline`` builds it. test_k8s_manifests.py and test_deploy_files.py use these helpers; the tests in this
module show that they refuse what the CLI would refuse.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
from pydantic import BaseModel

from rewardline.services.config import ServeConfig
from rewardline.services.config_loading import ConfigError, load_config

# `python -m MODULE` forms that run the rewardline CLI (services/__main__.py, trainer/__main__.py).
CLI_MODULES = {"rewardline.services", "rewardline.trainer"}


class BadCommandLine(AssertionError):
    """A deployment file's command line that `rewardline` (or torchrun) would refuse."""


@functools.lru_cache(maxsize=1)
def rewardline_parser() -> argparse.ArgumentParser:
    from rewardline.services.cli import build_parser

    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    if parser._subparsers is None:
        return None
    for action in parser._subparsers._group_actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return None


def leaf_parser(argv: Sequence[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """Walks the subcommands of ``argv`` down the real parser: (the subcommand path, its parser)."""
    parser, path = rewardline_parser(), []
    rest = list(argv)
    while (choices := _subcommands(parser)) is not None:
        if not rest or rest[0].startswith("-"):
            raise BadCommandLine(
                f"`rewardline {' '.join(argv)}`: missing a subcommand after {path or 'rewardline'} (one of "
                f"{sorted(choices)})"
            )
        word = rest.pop(0)
        if word not in choices:
            raise BadCommandLine(
                f"`rewardline {' '.join(argv)}`: no subcommand {word!r} under {' '.join(path) or 'rewardline'} (has "
                f"{sorted(choices)})"
            )
        path.append(word)
        parser = choices[word]
    return path, parser


def parse_rewardline(argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` (without the program name) parsed by the real `rewardline` parser, or BadCommandLine."""
    path, leaf = leaf_parser(argv)
    known = leaf._option_string_actions
    for token in argv[len(path) :]:
        if token.startswith("--") and token.split("=", 1)[0] not in known:
            raise BadCommandLine(
                f"`rewardline {' '.join(argv)}`: `rewardline {' '.join(path)}` has no flag {token.split('=', 1)[0]}"
            )
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return rewardline_parser().parse_args(list(argv))
    except SystemExit:
        said = stderr.getvalue().strip().splitlines() or ["(no message)"]
        raise BadCommandLine(f"`rewardline {' '.join(argv)}` is refused by the CLI: {said[-1]}") from None


def torchrun_inner(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """A ``torchrun`` line parsed by torch's own parser; returns it and the rewardline argv it runs."""
    from torch.distributed.run import get_args_parser

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        said = stderr.getvalue().strip().splitlines() or ["(no message)"]
        raise BadCommandLine(f"`torchrun {' '.join(argv)}` is refused by torchrun: {said[-1]}") from None
    if not (args.module and args.training_script in CLI_MODULES):
        raise BadCommandLine(f"`torchrun {' '.join(argv)}` does not run the rewardline CLI (-m rewardline.trainer)")
    return args, list(args.training_script_args)


def expand_env(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command and args (an undefined variable stays as written)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value)


def command_line(
    entrypoint: Sequence[str], args: Sequence[str]
) -> tuple[str, list[str], argparse.Namespace | None] | None:
    """The rewardline argv that a process started as ``entrypoint + args`` runs, or None if it runs something
    else. Returns (launcher, rewardline argv, torchrun's namespace or None)."""
    line = [*entrypoint, *args]
    if not line:
        return None
    program = Path(line[0]).name
    if program == "rewardline":
        return "rewardline", line[1:], None
    if program == "torchrun":
        ns, inner = torchrun_inner(line[1:])
        return "torchrun", inner, ns
    if program.startswith("python") and len(line) > 2 and line[1] == "-m" and line[2] in CLI_MODULES:
        return "python", line[3:], None
    return None


def program_config(ns: argparse.Namespace, read_file: Callable[[Path], str]) -> BaseModel | None:
    """The typed config that `rewardline` would build from ``ns`` (its --config file read with ``read_file``,
    e.g. from a ConfigMap), or None for subcommands without one. ConfigError when it would refuse it."""
    from rewardline.trainer.config import TrainConfig
    from rewardline.trainer.local_models.config import ModelsBuildConfig

    model = {"serve": ServeConfig, "train": TrainConfig, "models": ModelsBuildConfig}.get(ns.command)
    if model is None:
        return None
    values = dict(vars(ns))
    config_path = values.pop("config", None)
    if config_path is None:
        return load_config(model, values)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / Path(config_path).name
        local.write_text(read_file(Path(config_path)))
        return load_config(model, values, yaml_path=local)


def no_files(path: Path) -> str:
    raise AssertionError(f"the command line reads {path}, which this file does not provide")


# --- the checker refuses what the CLI refuses ---------------------------------------------------------------
def test_a_valid_serve_line_gives_its_config() -> None:
    ns = parse_rewardline(["serve", "judge", "--model", "/models/judge", "--backend", "vllm", "--port", "50071"])
    config = program_config(ns, no_files)
    assert isinstance(config, ServeConfig)
    assert (config.kind, config.backend, config.port, config.metrics_port) == ("judge", "vllm", 50071, 9090)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["serve", "rewards", "--model", "/m"], "no subcommand 'rewards'"),
        (["serve", "reward", "--modle", "/m"], "has no flag --modle"),
        (["serve", "reward", "--model", "/m", "--backend", "tpu"], "invalid choice"),
        (["serve", "reward", "--model", "/m", "--grace-period-s"], "expected one argument"),
        (["serve"], "missing a subcommand"),
        (["train", "--rewards.sources", "x"], "has no flag --rewards.sources"),  # YAML-only in the CLI
        (["models", "build", "--output", "/m"], "has no flag --output"),
    ],
)
def test_lines_the_cli_refuses_are_refused(argv: list[str], says: str) -> None:
    with pytest.raises(BadCommandLine, match=re.escape(says)):
        parse_rewardline(argv)


def test_a_line_the_config_refuses_is_refused() -> None:
    ns = parse_rewardline(["serve", "reward", "--port", "50051"])  # argparse accepts it; ServeConfig needs a model
    with pytest.raises(ConfigError, match="model"):
        program_config(ns, no_files)


def test_torchrun_lines_are_read_by_torchrun_and_the_cli() -> None:
    launcher, inner, ns = command_line(
        ["torchrun"],
        ["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", "1", "-m", "rewardline.trainer", "train", "--resume"],
    )
    assert (launcher, inner, ns.nnodes, ns.node_rank) == ("torchrun", ["train", "--resume"], "2", 1)
    with pytest.raises(BadCommandLine, match="refused by torchrun"):
        command_line(["torchrun"], ["--nodes", "2", "-m", "rewardline.trainer", "train"])
    with pytest.raises(BadCommandLine, match="does not run the rewardline CLI"):
        command_line(["torchrun"], ["--nnodes", "2", "train.py"])
    assert command_line(["prometheus"], ["--config.file=/p.yml"]) is None
