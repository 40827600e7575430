"""The trainer side's subcommands of ``rewardline``: local models, and (as they land) training and the demo."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Registers the trainer's subcommands on the ``rewardline`` parser."""
