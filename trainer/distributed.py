"""Data-parallel training under torchrun: the process group, the reductions the trainer needs, and DDP.

Design: every rank reads the same prompt stream and takes every world_size-th prompt group of each step
(a group never straddles ranks, so GRPO/RLOO's group statistics stay local); it generates its groups and
streams them to the reward sources itself. What must be global is reduced explicitly: batch-level
reward normalisation, PPO's advantage whitening, the loss normalisers (tokens or sequences in the whole
global batch) and the reported metrics. Every rank's loss is the sum of its pieces divided by the global
count, times world_size, so that DDP's gradient average equals the gradient of the single-process loss on
the same global batch. Rank 0 alone writes checkpoints, metrics.jsonl and plots and serves the control API;
its control decisions reach the others at each step boundary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(backend: str) -> World:
    """Joins the process group torchrun describes in the environment; a single process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return World(dist.get_rank(), dist.get_world_size())


def shutdown() -> None:
    if dist.is_initialized():
        try:
            dist.barrier()  # no rank tears its connections down while another still uses them
        finally:
            dist.destroy_process_group()


def all_reduce_sum(values: list[float], world: World) -> list[float]:
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def all_reduce_max(values: list[float], world: World) -> list[float]:
    if not world.distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.tolist()


def global_moments(world: World):
    """(values, valid) -> (mean, std) over the valid values of every rank: for batch normalisation."""

    def moments(values: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
        kept = values[valid]
        count, total, squares = all_reduce_sum([float(kept.size), float(kept.sum()), float((kept**2).sum())], world)
        if count == 0:
            return 0.0, 1.0
        mean = total / count
        return mean, max(squares / count - mean**2, 0.0) ** 0.5

    return moments
